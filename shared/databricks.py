"""Databricks registry webhooks: their signature, and their payloads turned into gate events.

Databricks signs a webhook that has a secret with

    X-Databricks-Signature: <lowercase hex HMAC-SHA256(secret, raw body)>

and can also send the `Authorization` header configured on the webhook. Neither carries a
delivery id or a timestamp of its own, so the event id is a hash of the body.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from shared.errors import ConfigError, EventError, SignatureError
from shared.events import (
    GateEvent,
    Kind,
    Origin,
    RegistryKind,
    optional_str,
    required_str,
    version_number,
)
from shared.policy import STAGES, Target

SIGNATURE_HEADER = "X-Databricks-Signature"
AUTHORIZATION_HEADER = "Authorization"
EVENT_ID_PREFIX = "dbx-"

# Transition requests the gate decides.
REQUEST_EVENTS = (
    "TRANSITION_REQUEST_CREATED",
    "TRANSITION_REQUEST_TO_STAGING_CREATED",
    "TRANSITION_REQUEST_TO_PRODUCTION_CREATED",
    "TRANSITION_REQUEST_TO_ARCHIVED_CREATED",
)
# Stage transitions the gate guards (a version moved to a governed stage without its approval).
TRANSITION_EVENTS = (
    "MODEL_VERSION_TRANSITIONED_STAGE",
    "MODEL_VERSION_TRANSITIONED_TO_STAGING",
    "MODEL_VERSION_TRANSITIONED_TO_PRODUCTION",
    "MODEL_VERSION_TRANSITIONED_TO_ARCHIVED",
)
# What `mlflow-gate webhook register --databricks` subscribes to: the generic events cover
# every stage, so subscribing to the per-stage ones as well would only send each event twice.
SUBSCRIBED = ("TRANSITION_REQUEST_CREATED", "MODEL_VERSION_TRANSITIONED_STAGE")


class DatabricksVerifier:
    """Checks that a request carries what is configured: the signature of the body (with
    `secret`), the exact Authorization header (with `authorization`), or both."""

    def __init__(self, secret: str | None = None, authorization: str | None = None) -> None:
        if not secret and not authorization:
            raise ConfigError(
                "Databricks webhooks are not configured: set GATE_DATABRICKS_WEBHOOK_SECRET "
                "(and/or GATE_DATABRICKS_WEBHOOK_AUTHORIZATION)"
            )
        self._key = secret.encode() if secret else None
        self._authorization = authorization.encode() if authorization else None

    def sign(self, body: bytes) -> str:
        if self._key is None:
            raise ConfigError(
                "no GATE_DATABRICKS_WEBHOOK_SECRET: webhooks verified by their Authorization "
                "header alone carry no signature"
            )
        return hmac.new(self._key, body, hashlib.sha256).hexdigest()

    def verify(self, body: bytes, headers: Mapping[str, str]) -> None:
        """Raise SignatureError unless every configured check passes."""
        given = {name.lower(): value for name, value in headers.items()}
        if self._key is not None:
            signature = given.get(SIGNATURE_HEADER.lower())
            if not signature:
                raise SignatureError(
                    f"missing {SIGNATURE_HEADER} header: was the webhook created with "
                    "http_url_spec.secret?"
                )
            expected = self.sign(body).encode()
            if not hmac.compare_digest(expected, signature.strip().lower().encode()):
                raise SignatureError(
                    f"{SIGNATURE_HEADER} does not match: the webhook's secret differs from "
                    "GATE_DATABRICKS_WEBHOOK_SECRET, or the body was altered"
                )
        if self._authorization is not None:
            sent = given.get(AUTHORIZATION_HEADER.lower(), "").encode()
            if not hmac.compare_digest(sent, self._authorization):
                raise SignatureError(
                    f"{AUTHORIZATION_HEADER} header missing or not the one configured on the "
                    "webhook (GATE_DATABRICKS_WEBHOOK_AUTHORIZATION)"
                )


def event_id_of(body: bytes, headers: Mapping[str, str] | None = None) -> str:
    """Databricks sends no delivery id (the headers carry none): a redelivery is the same body,
    hence the same id."""
    return EVENT_ID_PREFIX + hashlib.sha256(body).hexdigest()


@dataclass(frozen=True)
class Payload:
    """A Databricks registry webhook, as sent."""

    event: str
    webhook_id: str | None
    event_time: datetime | None  # from event_timestamp, in milliseconds
    model: str
    version: str
    to_stage: str  # canonical spelling (Production), from `to_stage` or its synonym `stage`
    from_stage: str | None
    text: str


def parse_payload(body: bytes) -> Payload | None:
    """The payload of an event the gate acts on; None for any other event.

    Raises EventError, naming the field, for a body that is not a registry webhook.
    """
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise EventError(f"body is not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(data, dict):
        raise EventError("body must be a JSON object with 'event', 'model_name' and 'version'")
    event = required_str(data, "event")
    if event not in REQUEST_EVENTS and event not in TRANSITION_EVENTS:
        return None
    to_stage = data.get("to_stage")
    if to_stage is None:
        to_stage = data.get("stage")  # older examples call it `stage`
        field = "stage"
    else:
        field = "to_stage"
    if to_stage is None:
        raise EventError("field 'to_stage' is missing")
    return Payload(
        event=event,
        webhook_id=optional_str(data, "webhook_id"),
        event_time=_timestamp(data.get("event_timestamp")),
        model=required_str(data, "model_name"),
        version=version_number(data.get("version"), "version"),
        to_stage=_stage(to_stage, field),
        from_stage=_stage(data["from_stage"], "from_stage")
        if data.get("from_stage") is not None
        else None,
        text=optional_str(data, "text") or "",
    )


def to_event(payload: Payload, *, event_id: str, received_at: float) -> GateEvent:
    """A transition request asks the gate to decide; a transition moves a stage it guards."""
    kind = Kind.REQUEST if payload.event in REQUEST_EVENTS else Kind.STAGE_TRANSITIONED
    return GateEvent(
        event_id=event_id,
        registry=RegistryKind.DATABRICKS,
        origin=Origin.WEBHOOK,
        kind=kind,
        model=payload.model,
        version=payload.version,
        target=payload.to_stage,
        received_at=received_at,
        webhook_event=payload.event,
        from_stage=payload.from_stage,
    )


def parse_webhook(
    body: bytes, *, received_at: float, event_id: str | None = None
) -> GateEvent | None:
    """The event of a webhook (its id `event_id`, by default `event_id_of(body)`), or None."""
    payload = parse_payload(body)
    if payload is None:
        return None
    return to_event(payload, event_id=event_id or event_id_of(body), received_at=received_at)


def _stage(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise EventError(f"field '{field}' must be a string, not {type(value).__name__}")
    target = Target.parse(value)
    if not target.is_stage:
        raise EventError(f"field '{field}' must be one of {', '.join(STAGES)}, not {value!r}")
    return target.name


def _timestamp(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 10**14:
        raise EventError(
            f"field 'event_timestamp' must be a Unix time in milliseconds, not {value!r}"
        )
    return datetime.fromtimestamp(value / 1000, tz=timezone.utc)
