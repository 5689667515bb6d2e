"""Serve the receiver with gunicorn, a production WSGI server."""

from __future__ import annotations

from receiver.app import create_app
from shared.metrics import mark_process_dead
from shared.settings import Settings
from shared.webserver import run


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
    run(lambda: create_app(settings), options)
