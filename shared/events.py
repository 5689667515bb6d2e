"""Events the gate acts on, and the parsing of MLflow's webhook payloads into them.

The event names only what to reconcile (a model, and a version or an alias): the worker always
reads the current state from MLflow, so a duplicate or a late event does no harm.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, fields, replace
from enum import Enum
from typing import Any

from shared import tags
from shared.errors import EventError


class Kind(str, Enum):
    """What happened. A request asks the gate to decide; the others move a target, which the
    gate guards."""

    REQUEST = "request"  # governance.request set on a version, or a transition request made
    ALIAS_CREATED = "alias_created"  # an alias was set (by anyone, the gate included)
    ALIAS_DELETED = "alias_deleted"
    STAGE_TRANSITIONED = "stage_transitioned"  # a version was moved to a stage (by anyone)


class RegistryKind(str, Enum):
    """Which model registry an event is about; each has its implementation in worker/registries."""

    MLFLOW = "mlflow"  # open-source MLflow, over its REST API
    DATABRICKS = "databricks"  # the Databricks workspace model registry


class Origin(str, Enum):
    """Where an event came from."""

    WEBHOOK = "webhook"  # the registry told the receiver
    SWEEP = "sweep"  # the periodic sweep found it owed (decide it only if still undecided)
    REPLAY = "replay"  # an operator or the redrive replayed a dead letter
    OPERATOR = "operator"  # an operator's command (rollback)
    REVIEW = "review"  # a reviewer's vote, or the sweep finding a review that can be decided


# Events written before the registry/origin split named both in one `source` field.
_LEGACY_SOURCES = {
    "mlflow": (RegistryKind.MLFLOW, Origin.WEBHOOK),
    "sweep": (RegistryKind.MLFLOW, Origin.SWEEP),
    "databricks": (RegistryKind.DATABRICKS, Origin.WEBHOOK),
    "databricks-sweep": (RegistryKind.DATABRICKS, Origin.SWEEP),
}
_LEGACY_KINDS = {"transition_requested": Kind.REQUEST}


@dataclass(frozen=True)
class GateEvent:
    event_id: str
    registry: RegistryKind
    origin: Origin
    kind: Kind
    model: str
    version: str | None  # the version the event named, if any
    target: str | None  # the requested target, or the alias
    received_at: float  # Unix time at the receiver
    webhook_event: str  # e.g. "model_version_tag.set"
    from_stage: str | None = None  # the stage a transitioned version came from, if known

    def to_dict(self) -> dict[str, Any]:
        # Every field is flat (strings, numbers, enums): no need for asdict's deep copy, which
        # was a tenth of the receiver's own time per webhook.
        data = {name: getattr(self, name) for name in _FIELD_NAMES}
        data["kind"] = self.kind.value
        data["registry"] = self.registry.value
        data["origin"] = self.origin.value
        return data

    def replayed(self) -> GateEvent:
        return replace(self, origin=Origin.REPLAY)

    @classmethod
    def from_dict(cls, data: Any) -> GateEvent:
        if not isinstance(data, dict):
            raise EventError(f"an event must be a JSON object, not {type(data).__name__}")
        try:
            registry, origin = _registry_and_origin(data)
            kind = data.get("kind")
            return cls(
                event_id=required_str(data, "event_id"),
                registry=registry,
                origin=origin,
                kind=_LEGACY_KINDS.get(str(kind)) or Kind(kind),
                model=required_str(data, "model"),
                version=_opt_str(data, "version"),
                target=_opt_str(data, "target"),
                received_at=float(data.get("received_at", 0.0)),
                webhook_event=required_str(data, "webhook_event"),
                from_stage=_opt_str(data, "from_stage"),
            )
        except (ValueError, TypeError) as exc:
            raise EventError(f"malformed event {data.get('event_id')!r}: {exc}") from None


_FIELD_NAMES = tuple(f.name for f in fields(GateEvent))


def _registry_and_origin(data: dict[str, Any]) -> tuple[RegistryKind, Origin]:
    if "registry" in data or "source" not in data:
        return RegistryKind(data.get("registry")), Origin(data.get("origin"))
    legacy = _LEGACY_SOURCES.get(required_str(data, "source"))
    if legacy is None:
        raise ValueError(f"unknown source {data.get('source')!r}")
    return legacy


# The MLflow webhook events the gate subscribes to. A version created with governance.request
# among its tags sends no tag.set, only model_version.created.
SUBSCRIBED = (
    "model_version_tag.set",
    "model_version_alias.created",
    "model_version_alias.deleted",
    "model_version.created",
)


def parse_mlflow_webhook(body: bytes, *, event_id: str, received_at: float) -> GateEvent | None:
    """Turn a webhook body into an event, or None for what the gate does not act on.

    Raises EventError, with the field at fault, for a body that is not a webhook at all.
    """
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError too
        raise EventError(f"body is not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(payload, dict):
        raise EventError("body must be a JSON object with 'entity', 'action' and 'data'")
    entity, action = required_str(payload, "entity"), required_str(payload, "action")
    name = f"{entity}.{action}"
    if name not in SUBSCRIBED:
        return None
    data = payload.get("data")
    if not isinstance(data, dict):
        raise EventError("field 'data' is missing or not an object")
    model = required_str(data, "name", where="data.")

    def event(kind: Kind, version: str | None, target: str) -> GateEvent:
        return GateEvent(
            event_id=event_id,
            registry=RegistryKind.MLFLOW,
            origin=Origin.WEBHOOK,
            kind=kind,
            model=model,
            version=version,
            target=target,
            received_at=received_at,
            webhook_event=name,
        )

    if name == "model_version_tag.set":
        if required_str(data, "key", where="data.") != tags.REQUEST:
            return None  # any other tag, the gate's own decision tags included: no loop
        version = _version(data)
        return event(
            Kind.REQUEST, version, required_str(data, "value", where="data.", allow_empty=True)
        )
    if name == "model_version.created":
        version_tags = data.get("tags")
        if version_tags is None:
            return None
        if not isinstance(version_tags, dict):
            raise EventError("field 'data.tags' must be an object")
        requested = version_tags.get(tags.REQUEST)
        if requested is None:
            return None  # a version without a request: nothing to decide yet
        if not isinstance(requested, str):
            raise EventError(f"field 'data.tags.{tags.REQUEST}' must be a string")
        return event(Kind.REQUEST, _version(data), requested)
    alias = required_str(data, "alias", where="data.")
    if name == "model_version_alias.created":
        return event(Kind.ALIAS_CREATED, _version(data), alias)
    return event(Kind.ALIAS_DELETED, None, alias)


def required_str(
    data: dict[str, Any], key: str, *, where: str = "", allow_empty: bool = False
) -> str:
    """A payload's string field, or EventError naming the field (blank counts as empty)."""
    value = optional_str(data, key, where=where)
    if value is None:
        raise EventError(f"field '{where}{key}' is missing")
    if not value.strip() and not allow_empty:
        raise EventError(f"field '{where}{key}' is empty")
    return value


def optional_str(data: dict[str, Any], key: str, *, where: str = "") -> str | None:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise EventError(f"field '{where}{key}' must be a string, not {type(value).__name__}")
    return value


def _opt_str(data: dict[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"field '{key}' must be a string or null")
    return value


def _version(data: dict[str, Any]) -> str:
    return version_number(data.get("version"), "data.version")


def version_number(value: Any, field: str) -> str:
    """A version number as MLflow sends it (a string or an int), normalised ("007" is "7")."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.isascii() or not value.isdigit() or len(value) > 18:
        raise EventError(f"field '{field}' must be a version number, not {value!r}")
    return str(int(value))


def found_by_sweep(
    registry: RegistryKind,
    kind: Kind,
    model: str,
    version: str | None,
    target: str | None,
    from_stage: str | None = None,
) -> GateEvent:
    """An event the sweep found owed, handled like its lost webhook (if still undecided)."""
    return GateEvent(
        event_id=f"sweep-{uuid.uuid4()}",
        registry=registry,
        origin=Origin.SWEEP,
        kind=kind,
        model=model,
        version=version,
        target=target,
        received_at=time.time(),
        webhook_event="sweep",
        from_stage=from_stage,
    )
