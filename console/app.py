"""The console's Flask app: sign-in in front of every page, the pages' blueprints, and error
pages that say what went wrong and what to do."""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any

import redis
from flask import Flask, Response, g, render_template
from werkzeug.exceptions import HTTPException

from console import deadletters, decisions, models, policy, reviews, signin
from console.services import Services
from shared.identity import Identities, IdentityUnavailable
from shared.ledger import LedgerError, LedgerUnavailable
from shared.outcomes import Outcome
from shared.settings import Settings
from shared.urls import scrubbed

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024  # a pasted or uploaded policy


def create_app(settings: Settings, services: Services | None = None) -> Flask:
    secret = settings.require_console_secret()
    app = Flask(__name__, template_folder="templates")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.extensions["mlflow_gate"] = services or Services(settings, Identities(settings))
    secure = (settings.console_url or "").startswith("https://")
    signin.install(app, secret, secure_cookie=secure)
    for page in (decisions, models, reviews, deadletters, policy):
        app.register_blueprint(page.blueprint)
    app.after_request(signin.headers)
    app.context_processor(_page_context)
    app.add_url_rule("/healthz", "health", lambda: {"status": "ok"})
    app.register_error_handler(signin.Forged, signin.forged)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(LedgerUnavailable, _unavailable("the gate's ledger"))
    app.register_error_handler(LedgerError, _ledger_wrong)
    app.register_error_handler(IdentityUnavailable, _identity_down)
    app.register_error_handler(redis.RedisError, _unavailable("Redis (the queue and dead letters)"))
    app.jinja_env.filters["when"] = _when
    app.jinja_env.filters["ago"] = _ago
    return app


def _page_context() -> dict[str, Any]:
    return {"me": getattr(g, "person", None), "Outcome": Outcome}


def _when(moment: datetime | float | None) -> str:
    if moment is None:
        return "-"
    if isinstance(moment, int | float):
        moment = datetime.fromtimestamp(moment, timezone.utc)
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _ago(seconds: float) -> str:
    for unit, size in (("d", 86_400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{max(seconds, 0):.0f}s"


def _error(title: str, message: str, status: int) -> tuple[str, int]:
    return render_template("error.html", title=title, message=message), status


def _http_error(exc: HTTPException) -> tuple[str, int] | Response:
    status = exc.code or 500
    titles = {403: "Not allowed", 404: "Not found", 400: "Bad request", 413: "Too large"}
    message = exc.description or exc.name
    if status == 413:
        message = f"The form is over the {MAX_BODY_BYTES // 1024} KiB limit."
    return _error(titles.get(status, exc.name), message, status)


def _unavailable(what: str) -> Any:
    def handler(exc: Exception) -> tuple[str, int]:
        log.warning("console: %s did not answer: %s", what, scrubbed(str(exc)))
        return _error(
            "Try again in a moment",
            f"{what[:1].upper()}{what[1:]} did not answer; nothing was changed. Reload the page "
            "in a moment; if it lasts, `mlflow-gate status` says what is down.",
            503,
        )

    return handler


def _ledger_wrong(exc: LedgerError) -> tuple[str, int]:
    log.error("console: ledger: %s", exc)
    return _error("The ledger is not ready", f"{exc}", 503)


def _identity_down(exc: IdentityUnavailable) -> tuple[str, int]:
    return _error("Cannot check who you are", f"{exc}", 503)
