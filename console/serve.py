"""Serve the console with gunicorn (its own process, apart from the receiver)."""

from __future__ import annotations

from console.app import create_app
from shared.settings import Settings
from shared.webserver import run


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
    run(lambda: create_app(settings), options)
