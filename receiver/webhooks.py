"""One route for every inbound webhook source: verify, name the event, parse, queue once, answer.

A source is a declaration (receiver/sources.py holds the table); `add_webhook_route` turns it into
POST /webhooks/<name>. No registry call in a request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from flask import Flask, Response, request

from receiver.intake import Intake
from receiver.responses import admit, answer
from shared.errors import SignatureError
from shared.events import GateEvent

log = logging.getLogger(__name__)

WEBHOOKS_PATH = "/webhooks/"


class Verifier(Protocol):
    """Built once with the source's secret(s); raises SignatureError for a request not from it."""

    def verify(self, body: bytes, headers: Mapping[str, str]) -> None: ...


class Parse(Protocol):
    """A verified body into an event, None for what the gate does not act on, or EventError."""

    def __call__(self, body: bytes, *, event_id: str, received_at: float) -> GateEvent | None: ...


@dataclass(frozen=True)
class Source:
    name: str  # the path under /webhooks/, and the `source` label of the metrics
    verifier: Verifier | None  # None: unverified (GATE_ALLOW_UNSIGNED, development only)
    event_id_of: Callable[[bytes, Mapping[str, str]], str]  # the same for a resend
    parse: Parse

    @property
    def path(self) -> str:
        return WEBHOOKS_PATH + self.name


class Refuse:
    """The verifier of a source this receiver cannot verify: every request is refused (401)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def verify(self, body: bytes, headers: Mapping[str, str]) -> None:
        raise SignatureError(self.reason)


def headers_of(environ: Mapping[str, object]) -> dict[str, str]:
    """A request's headers by lowercase name, read straight from the WSGI environ: copying them
    through werkzeug's header view cost several times more. Every verifier and `event_id_of`
    looks names up without regard to case."""
    return {
        key[5:].replace("_", "-").lower(): str(value)
        for key, value in environ.items()
        if key.startswith("HTTP_")
    }


def add_webhook_route(app: Flask, source: Source, intake: Intake) -> None:
    verifier = source.verifier
    if verifier is None:
        log.warning(
            "GATE_ALLOW_UNSIGNED=true: %s webhooks are NOT verified. Development only!", source.name
        )

    def receive() -> tuple[Response, int]:
        body = request.get_data(cache=False)
        headers = headers_of(request.environ)
        if verifier is not None:
            try:
                verifier.verify(body, headers)
            except SignatureError as exc:
                return answer(401, "unauthorized", str(exc))
        event_id = source.event_id_of(body, headers)
        return admit(
            intake,
            event_id,
            lambda: source.parse(body, event_id=event_id, received_at=time.time()),
        )

    app.add_url_rule(
        source.path, endpoint=f"webhook_{source.name}", view_func=receive, methods=["POST"]
    )
