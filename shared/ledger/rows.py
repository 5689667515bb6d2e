"""Between the dataclasses and the tables: a decision into column values, rows back out."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from sqlalchemy.engine import RowMapping

from shared.evaluation import Check
from shared.events import Origin, RegistryKind
from shared.ledger.records import (
    ActionState,
    Asked,
    DecisionRow,
    RecordedDecision,
    TargetKind,
    Tenure,
    Verdict,
    Vote,
)
from shared.outcomes import Outcome


def decision_values(decision: DecisionRow) -> dict[str, Any]:
    """The `decisions` columns for `decision` (no id: the database assigns it)."""
    return {
        "decided_at": decision.decided_at,
        "registry": decision.registry.value,
        "model": decision.model,
        "version": decision.version,
        "target": decision.target,
        "target_kind": decision.target_kind.value,
        "outcome": decision.outcome.value,
        "reason": decision.reason,
        "policies": [str(p) for p in decision.policies],
        "checks": jsonable([c.to_dict() for c in decision.checks], "checks"),
        "facts": jsonable(dict(decision.facts), "facts"),
        "event_id": decision.event_id,
        "origin": decision.origin.value,
        "requested_by": decision.requested_by,
        "acted_by": decision.acted_by,
        "action_state": decision.action_state.value if decision.action_state else None,
        "superseded_by": decision.superseded_by,
    }


def jsonable(value: Any, what: str) -> Any:
    """`value` as strict JSON can hold it: non-finite numbers (a NaN metric) become the strings
    "nan", "inf", "-inf" (PostgreSQL's JSON refuses them); anything else JSON cannot represent is
    a TypeError naming `what`."""
    cleaned = _finite(value)
    try:
        json.dumps(cleaned, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"the decision's {what} cannot be stored as JSON: {exc}") from None
    return cleaned


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, Mapping):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def decision_from_row(row: RowMapping) -> RecordedDecision:
    state = row["action_state"]
    return RecordedDecision(
        id=int(row["id"]),
        decided_at=row["decided_at"],
        registry=RegistryKind(row["registry"]),
        model=row["model"],
        version=row["version"],
        target=row["target"],
        target_kind=TargetKind(row["target_kind"]),
        outcome=Outcome(row["outcome"]),
        reason=row["reason"],
        event_id=row["event_id"],
        origin=Origin(row["origin"]),
        policies=tuple(str(p) for p in row["policies"] or ()),
        checks=tuple(_check(c) for c in row["checks"] or ()),
        facts=dict(row["facts"] or {}),
        requested_by=row["requested_by"],
        acted_by=row["acted_by"],
        action_state=ActionState(state) if state is not None else None,
        superseded_by=row["superseded_by"],
    )


def _check(data: Mapping[str, Any]) -> Check:
    return Check(
        policy=str(data.get("policy", "")),
        check=str(data.get("check", "")),
        passed=bool(data.get("passed", False)),
        actual=data.get("actual"),
        required=str(data.get("required", "")),
        message=str(data.get("message", "")),
        enforced=bool(data.get("enforced", True)),
    )


def tenure_from_row(row: RowMapping) -> Tenure:
    """A row of approvals joined with its decision (columns reason, requested_by, acted_by)."""
    return Tenure(
        registry=RegistryKind(row["registry"]),
        model=row["model"],
        target=row["target"],
        version=row["version"],
        approved_at=row["approved_at"],
        ended_at=row["ended_at"],
        ended_reason=row["ended_reason"],
        decision_id=int(row["decision_id"]),
        reason=row["reason"],
        requested_by=row["requested_by"],
        acted_by=row["acted_by"],
        revoked=bool(row["revoked"]),
    )


def vote_from_row(row: RowMapping) -> Vote:
    return Vote(
        id=int(row["id"]),
        decision_id=int(row["decision_id"]),
        reviewer=row["reviewer"],
        verdict=Verdict(row["verdict"]),
        comment=row["comment"],
        identified_by=row["identified_by"],
        cast_at=row["cast_at"],
    )


def asked_from_row(row: RowMapping) -> Asked:
    return Asked(
        id=int(row["id"]),
        registry=RegistryKind(row["registry"]),
        model=row["model"],
        version=row["version"],
        target=row["target"],
        requested_by=row["requested_by"],
        identified_by=row["identified_by"],
        requested_at=row["requested_at"],
        comment=row["comment"],
    )
