"""One queued delivery: a notice's body for one sink, with an id stable across retries, replays
and the same notice made again, so that receivers can deduplicate.

The payload holds everything needed to deliver except secrets: the sink's key (its URL, or the
name of the variable holding Slack's), never a value read from the environment. `event_id` (the
delivery id), `model` and `version` sit at the top, as on an event, so that the dead-letter store
files and shows it like one.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from shared.errors import EventError

MARKER = "delivery_id"  # a payload holding this key is a delivery (shared.queue routes on it)


def is_delivery(payload: Any) -> bool:
    return isinstance(payload, dict) and MARKER in payload


def delivery_id(notice_key: str, notice_type: str, sink_key: str) -> str:
    """`msg_` and 32 hex digits of a hash of what identifies the delivery."""
    digest = hashlib.sha256(f"{notice_key}\n{notice_type}\n{sink_key}".encode()).hexdigest()
    return f"msg_{digest[:32]}"


@dataclass(frozen=True)
class Delivery:
    delivery_id: str
    sink: str  # shared.policy.Sink.key
    notice_type: str
    notice_key: str
    body: dict[str, Any]  # {"type", "timestamp", "data"}: shared.notify.messages.body
    model: str | None = None
    version: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            MARKER: self.delivery_id,
            "event_id": self.delivery_id,
            "sink": self.sink,
            "notice_type": self.notice_type,
            "notice_key": self.notice_key,
            "model": self.model,
            "version": self.version,
            "body": self.body,
        }

    @classmethod
    def from_dict(cls, data: Any) -> Delivery:
        if not is_delivery(data):
            raise EventError("a delivery must be a JSON object with a delivery_id")
        fields = ("delivery_id", "sink", "notice_type", "notice_key")
        for name in fields:
            if not isinstance(data.get(name), str) or not data[name]:
                raise EventError(f"malformed delivery {data.get(MARKER)!r}: no {name}")
        if not isinstance(data.get("body"), dict):
            raise EventError(f"malformed delivery {data[MARKER]!r}: its body is not an object")
        return cls(
            delivery_id=data["delivery_id"],
            sink=data["sink"],
            notice_type=data["notice_type"],
            notice_key=data["notice_key"],
            body=data["body"],
            model=_opt(data.get("model")),
            version=_opt(data.get("version")),
        )


def _opt(value: Any) -> str | None:
    return None if value is None else str(value)
