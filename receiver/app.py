"""The webhook receiver: verify, parse, dedupe, enqueue, answer. No registry work in a request."""

from __future__ import annotations

import logging
from typing import Any

import redis
from flask import Blueprint, Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

from receiver.admin import admin_blueprint
from receiver.api import api_blueprint
from receiver.enqueue import AtomicEnqueue, TaskMessages
from receiver.intake import Intake
from receiver.metrics import metrics_blueprint
from receiver.responses import answer
from receiver.sources import inbound_sources
from receiver.webhooks import add_webhook_route
from shared.deadletter import DeadLetterStore
from shared.events import RegistryKind
from shared.identity import Identities
from shared.ledger import Ledger
from shared.queue import Publish, create_celery, publisher
from shared.settings import Settings
from shared.urls import scrubbed

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024


def create_app(
    settings: Settings,
    *,
    redis_client: redis.Redis | None = None,
    publish: Publish | None = None,
) -> Flask:
    settings.require_webhook_secret()
    client = redis_client or redis.Redis.from_url(
        settings.redis_url, socket_timeout=2, socket_connect_timeout=1
    )
    enqueue: AtomicEnqueue | None = None
    if publish is None:  # the receiver's own queue: one atomic round trip per event
        celery = create_celery(settings)
        publish = publisher(celery)  # for the admin's replays
        enqueue = AtomicEnqueue(client, TaskMessages(celery), settings.dedupe_ttl_seconds)
    intake = Intake(client, publish, settings.dedupe_ttl_seconds, enqueue)
    sources = inbound_sources(settings)

    app = Flask("mlflow_gate.receiver")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    for source in sources:
        add_webhook_route(app, source, intake)
    app.register_blueprint(metrics_blueprint(client, [s.name for s in sources]))
    app.register_blueprint(_health_blueprint(client))
    if settings.admin_token:
        app.register_blueprint(
            admin_blueprint(settings.admin_token, DeadLetterStore(client), publish)
        )
    app.register_blueprint(_people_api(settings, publish))
    app.register_error_handler(HTTPException, _http_error)
    return app


def _people_api(settings: Settings, publish: Publish) -> Blueprint:
    """/api/v1: requests and reviews by authenticated people. Its ledger and registry clients
    are made on first use, in the serving process (after gunicorn forks)."""
    made: dict[str, Any] = {}

    def ledger() -> Ledger:
        if "ledger" not in made:
            book = Ledger(settings.database_url)
            book.check_current()
            made["ledger"] = book
        found: Ledger = made["ledger"]
        return found

    def registry(kind: RegistryKind) -> Any:
        from worker.registries import one  # the registry seam, for `ask`

        key = f"registry:{kind.value}"
        if key not in made:
            made[key] = one(settings, kind)
        return made[key]

    return api_blueprint(Identities(settings), ledger, registry, publish)


def _health_blueprint(client: redis.Redis) -> Blueprint:
    health = Blueprint("health", __name__)

    @health.get("/healthz")
    def healthz() -> Response:
        return jsonify(status="ok")

    @health.get("/readyz")
    def readyz() -> tuple[Response, int]:
        try:
            client.ping()
        except redis.RedisError as exc:
            # The error text can name hosts or carry credentials: it goes to the log only,
            # without any password.
            log.warning("not ready: Redis did not answer: %s", scrubbed(str(exc)))
            return jsonify(status="unavailable", redis="unreachable"), 503
        return jsonify(status="ok", redis="ok"), 200

    return health


def _http_error(exc: HTTPException) -> tuple[Response, int]:
    status = exc.code or 500
    if status == 413:
        return answer(413, "too_large", f"body over the {MAX_BODY_BYTES} byte limit")
    return answer(status, exc.name.lower().replace(" ", "_"), exc.description or exc.name)
