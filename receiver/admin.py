"""Admin endpoints for tooling: the dead-letter store over HTTP, behind a bearer token.

Without GATE_ADMIN_TOKEN they do not exist (404), so a receiver exposed to MLflow exposes nothing
more by default.
"""

from __future__ import annotations

import hmac
import logging
import time
from dataclasses import asdict

import redis
from flask import Blueprint, Response, jsonify, request

from shared.deadletter import DeadLetterStore, replay, select
from shared.durations import since_timestamp
from shared.errors import ConfigError
from shared.queue import Publish
from shared.urls import scrubbed

log = logging.getLogger(__name__)


def admin_blueprint(token: str, store: DeadLetterStore, publish: Publish) -> Blueprint:
    admin = Blueprint("admin", __name__, url_prefix="/admin")

    @admin.before_request
    def authorize() -> tuple[Response, int] | None:
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            body = {"status": "unauthorized", "message": "send Authorization: Bearer <token>"}
            return jsonify(body), 401
        return None

    @admin.get("/dlq")
    def list_dead_letters() -> Response:
        return jsonify(dead_letters=[asdict(e) for e in store.all()])

    @admin.post("/dlq/replay")
    def replay_dead_letters() -> tuple[Response, int]:
        """Body: {"ids": [...]} or {"all": true, "model": glob, "error": text, "since": "2h",
        "dry_run": false}."""
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            return _bad("the body must be a JSON object with 'ids' or 'all': true")
        ids, replay_all = body.get("ids"), body.get("all") is True
        if (ids is None) == (not replay_all):
            return _bad("give either 'ids' (a list) or 'all': true")
        if ids is not None and not (isinstance(ids, list) and all(isinstance(i, str) for i in ids)):
            return _bad("'ids' must be a list of dead-letter ids")
        filters = {k: body.get(k) for k in ("model", "error", "since")}
        if any(v is not None and not isinstance(v, str) for v in filters.values()):
            return _bad("'model', 'error' and 'since' must be strings")
        if ids is not None and any(v is not None for v in filters.values()):
            return _bad("'model', 'error' and 'since' filter 'all': true; not a list of ids")
        dry_run = body.get("dry_run", False)
        if not isinstance(dry_run, bool):
            return _bad("'dry_run' must be true or false")
        try:
            since = since_timestamp(filters["since"], time.time()) if filters["since"] else None
        except ConfigError as exc:
            return _bad(str(exc))
        if ids is None:
            chosen = select(
                store.all(), model=filters["model"], error=filters["error"], since=since
            )
            ids = [e.id for e in chosen]
        report = replay(store, publish, ids, dry_run=dry_run)
        status = 200 if not report.failed else 503
        for entry_id, why in report.failed:
            log.warning("admin: dead letter %s not replayed: %s", entry_id, scrubbed(why))
        return jsonify(
            replayed=report.replayed,
            failed=[{"id": i, "error": _not_enqueued(why)} for i, why in report.failed],
            not_found=report.missing,
            dry_run=dry_run,
            summary=report.summary(dry_run),
        ), status

    @admin.errorhandler(redis.RedisError)
    def redis_down(exc: redis.RedisError) -> tuple[Response, int]:
        # Redis' error text can name hosts or carry credentials: it goes to the log only.
        log.warning("admin: Redis did not answer: %s: %s", type(exc).__name__, scrubbed(str(exc)))
        message = (
            f"Redis did not answer ({type(exc).__name__}); check that the Redis at "
            "GATE_REDIS_URL is up (the receiver's log has the detail), then retry"
        )
        return jsonify({"status": "unavailable", "message": message}), 503

    return admin


def _not_enqueued(why: str) -> str:
    """A failed replay's reason for the caller: the error's class, not its text (which can name
    hosts); the log has the rest."""
    kind = why.partition(":")[0].strip() or "error"
    return f"{kind}: the event could not be enqueued; check Redis, then retry"


def _bad(message: str) -> tuple[Response, int]:
    return jsonify(status="bad_request", message=message), 400
