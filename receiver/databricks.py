"""POST /webhooks/databricks: Databricks registry webhooks, verified, deduplicated and queued like
MLflow's. No Databricks call in a request.

Registered only when a Databricks webhook secret or Authorization value is configured (or in
unsigned development mode); otherwise the route does not exist (404).
"""

from __future__ import annotations

import logging
import time

from flask import Blueprint, Response, jsonify, request

from receiver.intake import Accepted, Intake, QueueUnavailable
from shared import databricks
from shared.errors import EventError, SignatureError
from shared.settings import Settings

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = "5"


def databricks_enabled(settings: Settings) -> bool:
    return bool(
        settings.databricks_webhook_secret
        or settings.databricks_webhook_authorization
        or settings.allow_unsigned
    )


def databricks_blueprint(settings: Settings, intake: Intake) -> Blueprint:
    hooks = Blueprint("databricks", __name__)
    secret = settings.databricks_webhook_secret
    authorization = settings.databricks_webhook_authorization
    if not secret and not authorization:
        log.warning("Databricks webhooks are NOT verified (GATE_ALLOW_UNSIGNED=true)")

    @hooks.post("/webhooks/databricks")
    def databricks_webhook() -> tuple[Response, int]:
        body = request.get_data(cache=False)
        if secret or authorization:
            try:
                databricks.verify(
                    secret=secret,
                    authorization=authorization,
                    signature_header=request.headers.get(databricks.SIGNATURE_HEADER),
                    authorization_header=request.headers.get(databricks.AUTHORIZATION_HEADER),
                    body=body,
                )
            except SignatureError as exc:
                return _answer(401, "unauthorized", str(exc))
        event_id = databricks.event_id(body)
        try:
            event = databricks.parse_webhook(body, received_at=time.time())
        except EventError as exc:
            return _answer(400, "bad_request", str(exc))
        if event is None:
            return _answer(200, "ignored", "the gate does not act on this event", event_id)
        try:
            accepted = intake.accept(event)
        except QueueUnavailable as exc:
            log.error("Databricks event %s not accepted: %s", event_id, exc)
            response, status = _answer(
                503, "unavailable", f"{exc}; the event was not accepted, retry later", event_id
            )
            response.headers["Retry-After"] = RETRY_AFTER_SECONDS
            return response, status
        if accepted is Accepted.DUPLICATE:
            return _answer(200, "duplicate", "this delivery was already accepted", event_id)
        log.info(
            "accepted Databricks %s for %s v%s", event.webhook_event, event.model, event.version
        )
        return _answer(202, "accepted", f"{event.webhook_event} queued", event_id)

    return hooks


def _answer(
    status: int, outcome: str, message: str, event_id: str | None = None
) -> tuple[Response, int]:
    body: dict[str, str] = {"status": outcome, "message": message}
    if event_id is not None:
        body["event_id"] = event_id
    return jsonify(body), status
