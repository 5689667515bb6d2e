"""What every webhook route does once the sender is verified: parse, queue once, answer.

One place for the answers, so that every source's route says the same thing for the same
situation (202 queued, 200 ignored or duplicate, 400 naming the field, 503 Retry-After).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from flask import Response, g, request

from receiver.intake import Accepted, Intake, QueueUnavailable
from shared.errors import EventError
from shared.events import GateEvent
from shared.logs import ACCESS_EVENT, ACCESS_NOTE, event_context, event_fields

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = "5"


def answer(
    status: int, outcome: str, message: str, event_id: str | None = None
) -> tuple[Response, int]:
    g.outcome = outcome  # for the metrics, without parsing the response again
    request.environ[ACCESS_NOTE] = f"{outcome}: {message}"  # for the request's access line
    body: dict[str, Any] = {"status": outcome, "message": message}
    if event_id is not None:
        body["event_id"] = event_id
    return Response(json.dumps(body), mimetype="application/json"), status


def admit(
    intake: Intake, event_id: str, parse: Callable[[], GateEvent | None]
) -> tuple[Response, int]:
    """Parse the verified body and queue the event once; never acknowledge what was not queued."""
    try:
        event = parse()
    except EventError as exc:
        return answer(400, "bad_request", str(exc))
    if event is None:
        return answer(200, "ignored", "the gate does not act on this event", event_id)
    payload = event.to_dict()
    # The request's access line carries the event's fields (shared/webserver.py): one line per
    # webhook, found by `grep <event_id>` like the worker's lines about the same event.
    request.environ[ACCESS_EVENT] = event_fields(payload)
    try:
        accepted = intake.accept(event, payload)
    except QueueUnavailable as exc:
        with event_context(payload):
            log.error("not accepted: %s%s", exc, f" ({exc.detail})" if exc.detail else "")
        response, status = answer(
            503, "unavailable", f"{exc}; the event was not accepted, retry later", event_id
        )
        response.headers["Retry-After"] = RETRY_AFTER_SECONDS
        return response, status
    if accepted is Accepted.DUPLICATE:
        return answer(200, "duplicate", "this delivery was already accepted", event_id)
    return answer(202, "accepted", f"{event.webhook_event} queued", event_id)
