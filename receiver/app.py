"""The webhook receiver: verify, parse, dedupe, enqueue, answer. No MLflow work in a request."""

from __future__ import annotations

import hashlib
import logging
import time

import redis
from flask import Flask, Response, g, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from werkzeug.exceptions import HTTPException

from receiver.admin import admin_blueprint
from receiver.databricks import databricks_blueprint, databricks_enabled
from receiver.intake import Intake
from receiver.metrics import ACK_SECONDS, WEBHOOKS, QueueDepthCollector
from receiver.responses import admit, answer
from shared import signing
from shared.deadletter import DeadLetterStore
from shared.errors import SignatureError
from shared.events import parse_mlflow_webhook
from shared.metrics import multiprocess_registry
from shared.queue import Publish, create_celery, publisher
from shared.settings import Settings

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024


def create_app(
    settings: Settings,
    *,
    redis_client: redis.Redis | None = None,
    publish: Publish | None = None,
) -> Flask:
    settings.require_webhook_secret()
    if settings.allow_unsigned and not settings.webhook_secret:
        log.warning("GATE_ALLOW_UNSIGNED=true: webhooks are NOT verified. Development only!")
    client = redis_client or redis.Redis.from_url(
        settings.redis_url, socket_timeout=2, socket_connect_timeout=1
    )
    publish = publish or publisher(create_celery(settings))
    intake = Intake(client, publish, settings.dedupe_ttl_seconds)

    app = Flask("mlflow_gate.receiver")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    depth = CollectorRegistry()
    depth.register(QueueDepthCollector(client))

    @app.before_request
    def start_clock() -> None:
        g.started = time.perf_counter()

    @app.after_request
    def count_webhook(response: Response) -> Response:
        if request.path.startswith("/webhooks/"):
            source = request.path.rsplit("/", 1)[-1]
            WEBHOOKS.labels(source, g.get("outcome", "unknown")).inc()
            ACK_SECONDS.labels(source).observe(time.perf_counter() - g.get("started", 0.0))
        return response

    @app.get("/metrics")
    def metrics() -> Response:
        text = generate_latest(multiprocess_registry()) + generate_latest(depth)
        return Response(text, mimetype=CONTENT_TYPE_LATEST)

    @app.post("/webhooks/mlflow")
    def mlflow_webhook() -> tuple[Response, int]:
        body = request.get_data(cache=False)
        headers = request.headers
        delivery_id = headers.get(signing.DELIVERY_ID_HEADER)
        if not settings.webhook_secret and not settings.allow_unsigned:
            message = "this receiver has no GATE_WEBHOOK_SECRET, so it takes no MLflow webhooks"
            return answer(401, "unauthorized", message)
        if settings.webhook_secret:
            try:
                signing.verify(
                    settings.webhook_secret,
                    delivery_id=delivery_id,
                    timestamp=headers.get(signing.TIMESTAMP_HEADER),
                    signature=headers.get(signing.SIGNATURE_HEADER),
                    body=body,
                    now=time.time(),
                )
            except SignatureError as exc:
                return answer(401, "unauthorized", str(exc))
        event_id = delivery_id or hashlib.sha256(body).hexdigest()
        return admit(
            intake,
            event_id,
            lambda: parse_mlflow_webhook(body, event_id=event_id, received_at=time.time()),
        )

    @app.get("/healthz")
    def healthz() -> Response:
        return jsonify(status="ok")

    @app.get("/readyz")
    def readyz() -> tuple[Response, int]:
        try:
            client.ping()
        except redis.RedisError as exc:
            return jsonify(status="unavailable", redis=f"unreachable: {exc}"), 503
        return jsonify(status="ok", redis="ok"), 200

    if databricks_enabled(settings):
        app.register_blueprint(databricks_blueprint(settings, intake))
    if settings.admin_token:
        app.register_blueprint(
            admin_blueprint(settings.admin_token, DeadLetterStore(client), publish)
        )

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> tuple[Response, int]:
        status = exc.code or 500
        if status == 413:
            return answer(413, "too_large", f"body over the {MAX_BODY_BYTES} byte limit")
        return answer(status, exc.name.lower().replace(" ", "_"), exc.description or exc.name)

    return app
