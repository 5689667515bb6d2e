"""What the ledger stores and gives back: plain frozen dataclasses, no SQLAlchemy in sight."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from typing import Any

from shared.evaluation import Check
from shared.events import Origin, RegistryKind
from shared.outcomes import Outcome


class TargetKind(str, Enum):
    ALIAS = "alias"
    STAGE = "stage"


class ActionState(str, Enum):
    """Where the gate's action on the registry (set the alias, approve the transition) stands.
    Decisions that call for no action have none."""

    PENDING = "pending"  # decided and recorded; the registry is not changed yet
    DONE = "done"  # the registry was changed as decided
    FAILED = "failed"  # it could not be (a permanent error): nothing stands on it any more


def utc(moment: datetime, what: str = "time") -> datetime:
    """`moment` in UTC; a naive datetime is refused (the ledger never guesses a time zone)."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{what} {moment.isoformat()} has no time zone; give an aware datetime")
    return moment.astimezone(timezone.utc)


@dataclass(frozen=True, kw_only=True)
class DecisionRow:
    """One decision, as recorded: what was decided, on which facts, and what the gate did."""

    decided_at: datetime  # aware; stored and given back in UTC
    registry: RegistryKind
    model: str
    version: str
    target: str  # canonical spelling: stages as `Production`, aliases as given
    target_kind: TargetKind
    outcome: Outcome
    reason: str
    event_id: str
    origin: Origin
    policies: tuple[str, ...] = ()
    checks: tuple[Check, ...] = ()
    facts: Mapping[str, Any] = field(default_factory=dict)  # what was evaluated; JSON-able
    requested_by: str | None = None
    acted_by: str | None = None
    action_state: ActionState | None = None  # None: this outcome calls for no action
    superseded_by: int | None = None  # the id of a later decision that replaced this one

    def __post_init__(self) -> None:
        # Callers outside mypy's sight may pass plain strings and lists: normalise (or refuse).
        set_ = object.__setattr__
        set_(self, "decided_at", utc(self.decided_at, "decided_at"))
        set_(self, "registry", RegistryKind(self.registry))
        set_(self, "target_kind", TargetKind(self.target_kind))
        set_(self, "outcome", Outcome(self.outcome))
        set_(self, "origin", Origin(self.origin))
        if self.action_state is not None:
            set_(self, "action_state", ActionState(self.action_state))
        set_(self, "policies", tuple(self.policies))
        set_(self, "checks", tuple(self.checks))


@dataclass(frozen=True, kw_only=True)
class RecordedDecision(DecisionRow):
    """A decision read back from the ledger, with its id."""

    id: int


@dataclass(frozen=True)
class Tenure:
    """One version's time on a target, from the gate's approval to its end (None: it still
    holds it), with the decision that approved it."""

    registry: RegistryKind
    model: str
    target: str
    version: str
    approved_at: datetime
    ended_at: datetime | None
    ended_reason: str | None  # e.g. "replaced by version 4", "rolled back: ..."
    decision_id: int
    reason: str  # the approving decision's reason
    requested_by: str | None
    acted_by: str | None
    revoked: bool = False  # it ended by a rollback or an undo, not by a newer approval

    @property
    def current(self) -> bool:
        return self.ended_at is None


class Verdict(str, Enum):
    APPROVE = "approve"
    REJECT = "reject"


@dataclass(frozen=True)
class Vote:
    """A reviewer's verdict on a pending review (decision `decision_id`)."""

    id: int
    decision_id: int
    reviewer: str
    verdict: Verdict
    comment: str | None
    identified_by: str  # how the gate knew who the reviewer is: mlflow | proxy
    cast_at: datetime


@dataclass(frozen=True)
class Asked:
    """A promotion requested through the gate by an authenticated user."""

    id: int
    registry: RegistryKind
    model: str
    version: str
    target: str
    requested_by: str
    identified_by: str
    requested_at: datetime
    comment: str | None = None
