"""POST /webhooks/databricks: Databricks registry webhooks, verified, deduplicated and queued like
MLflow's. No Databricks call in a request.

Registered only when a Databricks webhook secret or Authorization value is configured (or in
unsigned development mode); otherwise the route does not exist (404).
"""

from __future__ import annotations

import logging
import time

from flask import Blueprint, Response, request

from receiver.intake import Intake
from receiver.responses import admit, answer
from shared import databricks
from shared.errors import SignatureError
from shared.settings import Settings

log = logging.getLogger(__name__)


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
                return answer(401, "unauthorized", str(exc))
        event_id = databricks.event_id(body)
        return admit(
            intake, event_id, lambda: databricks.parse_webhook(body, received_at=time.time())
        )

    return hooks
