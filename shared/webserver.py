"""gunicorn, a production WSGI server, serving one of the gate's Flask apps (the receiver, the
console), each app built in its worker process after the fork."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication


class _Gunicorn(BaseApplication):  # type: ignore[misc]
    def __init__(self, build: Callable[[], Flask], options: dict[str, Any]) -> None:
        self.build = build
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Flask:
        return self.build()  # in each worker process: its own connections


def run(build: Callable[[], Flask], options: dict[str, Any]) -> None:
    """Serve the app `build` makes with gunicorn `options` (bind, workers, ...) until stopped."""
    _Gunicorn(build, options).run()
