"""Helpers for integration tests that run REAL server processes on loopback.

Starting, waiting for and stopping processes (each in a process group of its own, so that
``ManagedProcess.stop()`` signals a whole tree: ``mlflow server`` forks a uvicorn child that must
not outlive the test) is cli.devstack's; what is for tests alone is here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import requests

from cli.audit import decision_dict

# The processes themselves are cli.devstack's (`mlflow-gate up` starts them the same way); the
# names stay importable from here for the tests and bench/.
from cli.devstack import (
    LOOPBACK,
    ManagedProcess,
    free_port,
    redis_server_binary,
    start_mlflow_server,
    start_redis,
    wait_until,
)
from shared.ledger import Ledger


def recent(ledger: Ledger, model: str) -> list[dict[str, Any]]:
    """The ledger's decisions on `model`, newest first, as `mlflow-gate audit --json` prints
    them."""
    return [decision_dict(d) for d in ledger.decisions(model_glob=model, limit=1000)]


__all__ = [
    "LOOPBACK",
    "DelayProxy",
    "ManagedProcess",
    "free_port",
    "recent",
    "redis_server_binary",
    "start_mlflow_server",
    "start_redis",
    "wait_until",
]


class DelayProxy:
    """A real HTTP proxy on loopback that forwards to ``target`` after ``delay`` seconds.

    It stands between a client and a real server (MLflow) to make the server slow, so that a
    test can act while a request is in flight. ``delay`` can be changed while it runs.
    """

    def __init__(
        self, target: str, delay: float = 0.0, refuse: Callable[[str, bytes], bool] | None = None
    ) -> None:
        """`refuse(path, body)`: answer that request 503 instead of forwarding it (a server that
        fails some calls); it can be changed while the proxy runs."""
        import http.server
        import threading

        self.target = target.rstrip("/")
        self.delay = delay
        self.refuse = refuse
        self.port = free_port()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _forward(self) -> None:
                time.sleep(proxy.delay)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if proxy.refuse is not None and proxy.refuse(self.path, body or b""):
                    self.send_error(503)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                try:
                    upstream = requests.request(
                        self.command, proxy.target + self.path, data=body, headers=headers,
                        timeout=30,
                    )  # fmt: skip
                except requests.RequestException:
                    self.send_error(502)
                    return
                self.send_response(upstream.status_code)
                for key, value in upstream.headers.items():
                    if key.lower() not in ("transfer-encoding", "connection", "content-encoding",
                                           "content-length"):  # fmt: skip
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(upstream.content)))
                self.end_headers()
                self.wfile.write(upstream.content)

            do_GET = do_POST = do_PATCH = do_DELETE = _forward

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((LOOPBACK, self.port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
