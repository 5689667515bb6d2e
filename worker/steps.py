"""What the gate does on a registry for a decision, as data.

The plan is written to the ledger with the decision, before anything moves; then its steps are
carried out one by one. Each step looks at the registry's current state first, so carrying out
a plan again (a retry after a crash, a redelivery) finishes it instead of doing it twice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from shared.errors import MlflowNotFound
from shared.evaluation import Decision
from shared.policy import Target
from worker.registry import Registry, Request, RequestWithdrawn


class Do(str, Enum):
    APPROVE = "approve"  # grant the request: set the alias, move the stage, approve it
    REJECT = "reject"  # turn the request down (where the registry has requests to answer)
    PUT = "put"  # put the version on the target
    TAKE_OFF = "take_off"  # take the version off the target, if it still holds it


@dataclass(frozen=True)
class Step:
    do: Do
    version: str
    archive: bool = False  # PUT, APPROVE on a stage: archive the versions already there
    back_to: str | None = None  # TAKE_OFF from a stage: the stage to move the version back to
    note: str = ""  # why, where the registry shows it (a transition's comment)

    def to_dict(self) -> dict[str, Any]:
        return {
            "do": self.do.value,
            "version": self.version,
            "archive": self.archive,
            "back_to": self.back_to,
            "note": self.note,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Step:
        back_to = data.get("back_to")
        return cls(
            do=Do(data["do"]),
            version=str(data["version"]),
            archive=bool(data.get("archive", False)),
            back_to=str(back_to) if back_to is not None else None,
            note=str(data.get("note", "")),
        )


def plan_facts(evaluated: Mapping[str, Any], plan: Sequence[Step]) -> dict[str, Any]:
    """The `facts` a decision is recorded with: what was evaluated, and the plan."""
    return {**evaluated, "plan": [step.to_dict() for step in plan]}


def plan_of(facts: Mapping[str, Any]) -> list[Step]:
    return [Step.from_dict(step) for step in facts.get("plan", [])]


def carry_out(
    registry: Registry,
    model: str,
    target: Target,
    step: Step,
    decision: Decision,
    request: Request | None,
) -> str:
    """Do `step` unless the registry already shows it done; returns what was done, or ""."""
    if step.do in (Do.APPROVE, Do.REJECT):
        if request is None:  # carried out again: read the request as it is now
            if step.do is Do.APPROVE and _holds(registry, model, target, step.version):
                return ""
            request = registry.request(model, step.version, target)
        if step.do is Do.REJECT:
            return registry.reject(request, decision) if request is not None else ""
        if request is None:
            raise RequestWithdrawn(
                f"the request of version {step.version} to {target} is no longer open"
            )
        return registry.approve(request, decision, step.archive)
    if step.do is Do.PUT:
        if _holds(registry, model, target, step.version):
            return ""
        registry.put(model, target, step.version, archive=step.archive, note=step.note)
        return f"version {step.version} was put back on {target.kind} '{target}'"
    if not _holds(registry, model, target, step.version):
        return ""
    return registry.take_off(model, target, step.version, back_to=step.back_to, note=step.note)


def _holds(registry: Registry, model: str, target: Target, version: str) -> bool:
    if not target.is_stage:
        return registry.holder(model, target) == version
    try:
        return registry.version(model, version).stage == target.name
    except MlflowNotFound:
        return False
