"""A decision as the gate records it in its ledger (the system of record), and as it shows it to
engineers on the version's governance.* tags (their copy, never read back)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from shared import tags
from shared.evaluation import Decision, Facts, VersionFacts
from shared.events import Origin, RegistryKind
from shared.ledger import ActionState, DecisionRow, RecordedDecision, TargetKind
from shared.outcomes import Outcome
from shared.policy import Target


@dataclass(frozen=True)
class Record:
    registry: RegistryKind
    model: str
    version: str
    decision: Decision
    outcome: Outcome
    reason: str  # the decision's reason, with what the gate does about it
    event_id: str
    origin: Origin
    decided_at: datetime
    requested_by: str | None = None
    acted_by: str | None = None
    facts: Mapping[str, Any] = field(default_factory=dict)  # what was evaluated, and the plan

    def row(self, action: ActionState | None) -> DecisionRow:
        target = self.decision.target
        return DecisionRow(
            decided_at=self.decided_at,
            registry=self.registry,
            model=self.model,
            version=self.version,
            target=target.name,
            target_kind=TargetKind.STAGE if target.is_stage else TargetKind.ALIAS,
            outcome=self.outcome,
            reason=self.reason,
            event_id=self.event_id,
            origin=self.origin,
            policies=self.decision.policies,
            checks=self.decision.checks,
            facts=self.facts,
            requested_by=self.requested_by,
            acted_by=self.acted_by,
            action_state=action,
        )


def target_of(recorded: RecordedDecision) -> Target:
    return Target(recorded.target, is_stage=recorded.target_kind is TargetKind.STAGE)


def decision_of(recorded: RecordedDecision) -> Decision:
    """The evaluation a recorded decision came from, as the registry's acts take it."""
    return Decision(
        approved=recorded.outcome is Outcome.APPROVED,
        target=target_of(recorded),
        policies=tuple(recorded.policies),
        checks=tuple(recorded.checks),
        reason=recorded.reason,
    )


def version_tags(recorded: RecordedDecision) -> dict[str, str]:
    """The engineers' copy of a decision, on the version. Status last: whoever waits for it
    finds the rest already written."""
    return {
        tags.TARGET: recorded.target,
        tags.REASON: recorded.reason,
        tags.POLICY: ", ".join(recorded.policies) or "none",
        tags.CHECKS: json.dumps([c.to_dict() for c in recorded.checks], default=str),
        tags.DECIDED_AT: recorded.decided_at.isoformat(timespec="seconds").replace("+00:00", "Z"),
        tags.STATUS: recorded.outcome.value,
    }


def evaluated(facts: Facts) -> dict[str, Any]:
    """What a decision evaluated, as the ledger keeps it (JSON)."""
    return {
        "candidate": _version(facts.candidate),
        "compared_with": {
            str(target): _version(holder) if holder is not None else None
            for target, holder in facts.holders.items()
        },
        "requested_by": facts.requested_by,
        "now_ms": facts.now_ms,
    }


def _version(version: VersionFacts) -> dict[str, Any]:
    run = version.run
    return {
        "version": version.version,
        "stage": version.stage,
        "created_by": version.created_by,
        "created_by_source": version.created_by_source,
        "description": version.description,
        "tags": dict(version.tags),
        "run_id": version.run_id,
        "run_problem": version.run_problem,
        "metrics": dict(run.metrics) if run is not None else None,
        "run_tags": dict(run.tags) if run is not None else None,
        "run_start_ms": run.start_time_ms if run is not None else None,
    }
