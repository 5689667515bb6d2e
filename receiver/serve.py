"""Serve the receiver with gunicorn, a production WSGI server."""

from __future__ import annotations

from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication

from receiver.app import create_app
from shared.metrics import mark_process_dead
from shared.settings import Settings


class _Gunicorn(BaseApplication):  # type: ignore[misc]
    def __init__(self, settings: Settings, options: dict[str, Any]) -> None:
        self.settings = settings
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Flask:
        # Built in each worker process after the fork: each opens its own Redis connections.
        return create_app(self.settings)


def serve(settings: Settings, *, host: str, port: int, workers: int, threads: int) -> None:
    settings.require_webhook_secret()  # refuse to start before binding anything
    options = {
        "bind": f"{host}:{port}",
        "workers": workers,
        "threads": threads,
        "worker_class": "gthread" if threads > 1 else "sync",
        "timeout": 30,
        "graceful_timeout": 5,  # requests take milliseconds; idle keep-alives hold it open
        "keepalive": 2,
        "accesslog": "-",
        "loglevel": settings.log_level.lower(),
        "child_exit": lambda _arbiter, worker: mark_process_dead(worker.pid),
    }
    _Gunicorn(settings, options).run()
