"""Structured logs: JSON lines for machines, or readable text for a terminal.

Every line logged while an event is handled carries the same fields (event_id, registry,
origin, model, version, target), from receipt in the receiver to the decision in the worker, so one
`grep <event_id>` (or a log query) follows an event end to end.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

_event: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "gate_event", default=None
)
EVENT_FIELDS = ("event_id", "registry", "origin", "model", "version", "target")


# WSGI environ keys under which a request's handler leaves what its access line should say
# (shared/webserver.py writes that line): a note such as "accepted: model_version_tag.set queued",
# and the event's fields, so that one line per webhook says who sent what, the answer and why.
ACCESS_NOTE = "mlflow_gate.access_note"
ACCESS_EVENT = "mlflow_gate.access_event"


def event_fields(event: dict[str, Any]) -> dict[str, Any]:
    """The fields every line about this event carries (EVENT_FIELDS that are set)."""
    return {k: event[k] for k in EVENT_FIELDS if event.get(k) is not None}


@contextlib.contextmanager
def event_context(event: dict[str, Any]) -> Iterator[None]:
    """Attach the event's fields to every log line written inside the block."""
    token = _event.set(event_fields(event))
    try:
        yield
    finally:
        _event.reset(token)


class _EventFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "gate_event", None):  # else given with the record (`extra`)
            record.gate_event = _event.get() or {}
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **getattr(record, "gate_event", {}),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = getattr(record, "gate_event", {})
        if fields:
            text += "  [" + " ".join(f"{k}={v}" for k, v in fields.items()) + "]"
        return text


def configure(level: str, fmt: str) -> None:
    """`fmt`: json, text, or auto (text on a terminal, JSON otherwise)."""
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if use_json else TextFormatter())
    handler.addFilter(_EventFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
