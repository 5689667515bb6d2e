"""gunicorn, a production WSGI server, serving one of the gate's Flask apps (the receiver, the
console), each app built in its worker process after the fork."""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication
from gunicorn.glogging import Logger

from shared.logs import ACCESS_EVENT, ACCESS_NOTE

ACCESS_LOGGER = "mlflow_gate.access"
_NOTE_LIMIT = 300  # characters of the handler's note (shared.logs.ACCESS_NOTE) on the line
_access = logging.getLogger(ACCESS_LOGGER)


class AccessLog(Logger):  # type: ignore[misc]
    """gunicorn's logger, but each request's access line goes through the gate's own logging:
    JSON or text as GATE_LOG_FORMAT says, like every other line, at INFO.

    gunicorn's own access line builds a dict of every request header, response header and
    environ variable for each request (its "atoms"); on a webhook that cost as much as the
    receiver's own work. This line names what an operator looks for: who, what, the answer,
    how big and how long, and what the handler noted (shared.logs.ACCESS_NOTE: the receiver's
    outcome and why, e.g. 'unauthorized: X-MLflow-Signature does not match ...') with the
    event's fields (ACCESS_EVENT), so that a webhook is one line.
    """

    def access(
        self, resp: Any, req: Any, environ: Mapping[str, Any], request_time: timedelta
    ) -> None:
        if not self.access_log_enabled or not _access.isEnabledFor(logging.INFO):
            return
        status = resp.status
        if isinstance(status, str):
            status = status.split(None, 1)[0]
        note = environ.get(ACCESS_NOTE)
        _access.info(
            '%s "%s %s" %s %s B %.1f ms%s',
            environ.get("REMOTE_ADDR", "-"),
            environ.get("REQUEST_METHOD", "-"),
            environ.get("RAW_URI") or environ.get("PATH_INFO", "-"),
            status,
            getattr(resp, "sent", None) or 0,
            request_time.total_seconds() * 1000,
            f" {note[:_NOTE_LIMIT]!r}" if note else "",
            extra={"gate_event": environ.get(ACCESS_EVENT) or {}},
        )


class _Gunicorn(BaseApplication):  # type: ignore[misc]
    def __init__(self, build: Callable[[], Flask], options: dict[str, Any]) -> None:
        self.build = build
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in {"logger_class": AccessLog, **self.options}.items():
            self.cfg.set(key, value)

    def load(self) -> Flask:
        app = self.build()  # in each worker process: its own connections
        # Everything loaded so far (Flask, Celery, SQLAlchemy, redis: ~95,000 objects) lives as
        # long as the process: keep it out of the garbage collector's scans. A full collection
        # over it took 50 to 100 ms, a stall every request in flight waited for.
        gc.freeze()
        return app


def run(build: Callable[[], Flask], options: dict[str, Any]) -> None:
    """Serve the app `build` makes with gunicorn `options` (bind, workers, ...) until stopped."""
    _Gunicorn(build, options).run()
