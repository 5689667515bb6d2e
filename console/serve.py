"""Serve the console with gunicorn (its own process, apart from the receiver)."""

from __future__ import annotations

from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication

from console.app import create_app
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
        return create_app(self.settings)  # in each worker, after the fork


def serve(settings: Settings, *, host: str, port: int, workers: int, threads: int) -> None:
    settings.require_console_secret()  # refuse to start before binding anything
    options = {
        "bind": f"{host}:{port}",
        "workers": workers,
        "threads": threads,
        "worker_class": "gthread" if threads > 1 else "sync",
        "timeout": 60,  # a "what if" over many decisions, the status's worker ping
        "graceful_timeout": 5,
        "accesslog": "-",
        "loglevel": settings.log_level.lower(),
    }
    _Gunicorn(settings, options).run()
