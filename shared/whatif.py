"""What if: the ledger's past decisions, decided again under another policy set.

Pure: no I/O, no clock. The facts a decision evaluated are rebuilt from the ledger (as
worker/decisions.py `evaluated()` stored them) and evaluated again with `shared.evaluation`;
the new evaluation becomes an outcome the way worker/pipeline.py makes one:

- a request: checks failing -> rejected; passing, with a covering `enforce` policy asking for
  review -> pending_review; passing -> approved. No covering policy: rejected (fail closed).
- a guard (a version set on a target outside the gate; its plan has no approve or reject step):
  passing with no review asked -> approved (kept); otherwise rejected (undone): going around the
  gate never gets a better result than going through it. No covering policy: the gate would not
  guard the target, the move would stand: approved (kept), and the reason says so.
- the end of a human review (the decision records the review with its votes): checks failing
  -> rejected; passing with no review asked -> approved; passing with review asked -> the
  reviewers' verdict stands, except an approval with fewer approvals than the policies now ask
  for: pending_review. Who may review (named reviewers, a role) is not checked again: the
  ledger does not record role membership.

Re-evaluated: approved, rejected and pending_review decisions that recorded their facts. Not
re-evaluated (`Trial.would` is None, and `reason` says why):

- skipped (nothing was decided), violation (a version moved into a stage outside the gate is
  reported whatever the rules say), superseded (a pending review replaced by a newer request),
  rolled_back: no rule was evaluated for them;
- an operator's rollback (recorded as approved, no rule evaluated) and rows without stored
  facts (older rows);
- facts the ledger holds in a shape this code cannot read (said with the field at fault);
- a compare_to rule naming a target whose holder the decision did not record (its policies
  compared with no such target): the comparison cannot be made again, and failing it closed would
  show a flip that is an artefact of the missing fact. In a registry without aliases (Databricks'
  workspace registry) the holder of an alias is unknown by design, as it was for the gate: that
  comparison fails closed, as it did then.

A decision the gate never carried out (its action failed, or a newer decision fenced it off) is
decided again all the same: the question is what the policy says of the facts it recorded.

Non-finite metrics are stored as the strings "nan", "inf", "-inf" (strict JSON cannot hold
them): they are read back as those numbers, so they fail their checks as they did. Keys the
facts hold that the evaluation does not use (plan, notices, review, anything newer) are ignored.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from shared.evaluation import Check, Decision, Facts, RunFacts, VersionFacts, evaluate
from shared.events import RegistryKind
from shared.ledger.records import RecordedDecision, TargetKind
from shared.outcomes import Outcome
from shared.policy import CompareRule, Policy, PolicySet, Target, review_need

# The outcomes that came from evaluating facts against the policies.
EVALUATED = (Outcome.APPROVED, Outcome.REJECTED, Outcome.PENDING_REVIEW)

# Why the other outcomes cannot be decided again.
_NOT_EVALUATED = {
    Outcome.SKIPPED: "skipped: nothing was decided (the request was no longer open)",
    Outcome.VIOLATION: (
        "a violation: a version moved into the stage outside the gate is reported whatever the "
        "rules say; no rule was evaluated"
    ),
    Outcome.SUPERSEDED: (
        "superseded: a pending review replaced by a newer request; no rule was evaluated"
    ),
    Outcome.ROLLED_BACK: "rolled back by an operator; no rule was evaluated",
}

# The policy an operator's rollback is recorded under (worker/pipeline.py ROLLBACK_POLICY).
_ROLLBACK_POLICY = "operator-rollback"

# Registries with stages only: the holder of an alias is never recorded there (worker/facts.py).
_STAGES_ONLY = (RegistryKind.DATABRICKS,)

_REQUEST, _GUARD, _REVIEWED = "request", "guard", "reviewed"


class _Unreadable(ValueError):
    """The stored facts are not in a shape the evaluation can use."""


@dataclass(frozen=True)
class Rebuilt:
    """The facts a recorded decision evaluated, or why there are none to evaluate again."""

    facts: Facts | None
    why_not: str = ""  # set when facts is None


def rebuild(recorded: RecordedDecision) -> Rebuilt:
    """The evaluation's facts, from what the ledger stored with the decision."""
    if recorded.outcome not in EVALUATED:
        return Rebuilt(None, _NOT_EVALUATED.get(recorded.outcome, "no rule was evaluated"))
    stored = recorded.facts
    if _ROLLBACK_POLICY in recorded.policies and "candidate" not in stored:
        return Rebuilt(None, "an operator's rollback: no rule was evaluated")
    if "candidate" not in stored:
        return Rebuilt(
            None,
            "the ledger holds no facts for this decision (recorded before the ledger kept "
            "them, or without evaluating any rule)",
        )
    try:
        candidate = _version(recorded.model, stored["candidate"], "candidate")
        holders = _holders(recorded.model, stored.get("compared_with"))
        requested_by = _text(stored.get("requested_by"), "requested_by")
        now_ms = _whole(stored.get("now_ms"), "now_ms")
    except _Unreadable as exc:
        return Rebuilt(None, f"its stored facts cannot be read: {exc}")
    target = Target(recorded.target, is_stage=recorded.target_kind is TargetKind.STAGE)
    facts = Facts(candidate, target, holders, requested_by=requested_by, now_ms=now_ms)
    return Rebuilt(facts)


def facts_of(recorded: RecordedDecision) -> Facts | None:
    """The evaluation's facts; None when there are none to evaluate again (`rebuild` says why)."""
    return rebuild(recorded).facts


@dataclass(frozen=True)
class Trial:
    """One recorded decision, decided again."""

    decision: RecordedDecision
    was: Outcome
    would: Outcome | None  # None: it could not be decided again (`reason` says why)
    reason: str  # the new decision's reason, or why there is none
    checks: tuple[Check, ...] = ()  # the new evaluation's checks
    policies: tuple[str, ...] = ()  # the policies that covered it this time

    @property
    def flips(self) -> bool:
        return self.would is not None and self.would is not self.was

    @property
    def evaluated(self) -> bool:
        return self.would is not None

    @property
    def failed(self) -> tuple[Check, ...]:
        """The new checks that failed, enforced or audit-only."""
        return tuple(c for c in self.checks if not c.passed)

    def to_dict(self) -> dict[str, Any]:
        d = self.decision
        return {
            "decision": {
                "id": d.id,
                "time": d.decided_at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                "registry": d.registry.value,
                "model": d.model,
                "version": d.version,
                "target": d.target,
                "target_kind": d.target_kind.value,
                "outcome": d.outcome.value,
                "reason": d.reason,
                "policies": list(d.policies),
            },
            "was": self.was.value,
            "would": self.would.value if self.would is not None else None,
            "flips": self.flips,
            "reason": self.reason,
            "policies": list(self.policies),
            "checks": [c.to_dict() for c in self.checks],
        }


@dataclass(frozen=True)
class WhatIf:
    """Decisions decided again under a policy set, in the order given."""

    trials: tuple[Trial, ...]
    source: str = ""  # where the policy set came from (its file)

    @property
    def flipped(self) -> list[Trial]:
        return [t for t in self.trials if t.flips]

    @property
    def evaluated(self) -> int:
        return sum(1 for t in self.trials if t.evaluated)

    @property
    def not_evaluable(self) -> int:
        return sum(1 for t in self.trials if not t.evaluated)

    def to_dict(self) -> dict[str, Any]:
        return {
            "policy_source": self.source,
            "evaluated": self.evaluated,
            "flipped": len(self.flipped),
            "not_evaluable": self.not_evaluable,
            "trials": [t.to_dict() for t in self.trials],
        }


def what_if(decisions: Sequence[RecordedDecision], policies: PolicySet) -> WhatIf:
    """What `policies` would have decided for each of `decisions`, on the same facts."""
    return WhatIf(tuple(trial(d, policies) for d in decisions), policies.source)


def trial(recorded: RecordedDecision, policies: PolicySet) -> Trial:
    """What `policies` would have decided for one recorded decision, on the same facts."""
    was = recorded.outcome
    rebuilt = rebuild(recorded)
    facts = rebuilt.facts
    if facts is None:
        return Trial(recorded, was, None, rebuilt.why_not)
    kind = _kind(recorded)
    if kind is None:
        return Trial(
            recorded,
            was,
            None,
            "the decision records no plan, so whether it decided a request or guarded a move "
            "is unknown",
        )
    covering = policies.covering(recorded.model, facts.target)
    missing = _missing_holder(recorded, facts, covering)
    if missing is not None:
        return Trial(
            recorded,
            was,
            None,
            f"a compare_to rule names {missing.kind} '{missing}', but the decision did not record "
            f"who held {missing} then (its policies compared with no such target), so the "
            "comparison cannot be made again",
        )
    decision = evaluate(facts, covering)
    would, reason = _outcome(kind, recorded, decision, covering)
    return Trial(recorded, was, would, reason, decision.checks, decision.policies)


def _outcome(
    kind: str, recorded: RecordedDecision, decision: Decision, covering: Sequence[Policy]
) -> tuple[Outcome, str]:
    """The outcome the pipeline makes of an evaluation, with its reason."""
    target = decision.target
    need = review_need(covering)
    if kind == _GUARD:
        outside = f"{target.kind.capitalize()} '{target}' was set outside the gate"
        if not covering:
            return Outcome.APPROVED, (
                f"{outside}; no policy covers it for model '{recorded.model}', so the gate would "
                "not guard it: the move would stand (nothing recorded)."
            )
        if decision.approved and need is not None:
            return Outcome.REJECTED, (
                f"{outside}; it passes the automated checks, but the policy asks for human "
                f"review ({need.approvals} approval(s)), which it did not get, so it would be "
                f"undone. {decision.reason}"
            )
        if decision.approved:
            return Outcome.APPROVED, f"{outside}; it passes the policy, so it would be kept. " + (
                decision.reason
            )
        return Outcome.REJECTED, f"{outside} and fails the policy, so it would be undone. " + (
            decision.reason
        )
    if not decision.approved:
        return Outcome.REJECTED, decision.reason
    if need is None:
        return Outcome.APPROVED, decision.reason
    checks = decision.reason.replace("Approved for", "Checks for", 1)
    if kind == _REVIEWED:
        if recorded.outcome is not Outcome.APPROVED:
            return recorded.outcome, f"The review's verdict stands: {recorded.reason} {checks}"
        approvals = _approvals(recorded.facts)
        if approvals < need.approvals:
            return Outcome.PENDING_REVIEW, (
                f"Pending review: {approvals} approval(s) were given, the policies ask for "
                f"{need.approvals}. {checks}"
            )
        return Outcome.APPROVED, (
            f"The reviewers' approval stands ({approvals} approval(s), {need.approvals} needed). "
            f"{checks}"
        )
    return Outcome.PENDING_REVIEW, (
        f"Pending review: the automated checks pass; {need.approvals} approval(s) from reviewers "
        f"are needed before {target.kind} '{target}' moves. {checks}"
    )


def _kind(recorded: RecordedDecision) -> str | None:
    """request, guard or reviewed (the end of a human review); None: cannot be told."""
    review = recorded.facts.get("review")
    if isinstance(review, Mapping) and "votes" in review:
        return _REVIEWED
    if recorded.outcome is Outcome.PENDING_REVIEW:
        return _REQUEST
    plan = recorded.facts.get("plan")
    if not isinstance(plan, list):
        return None
    steps = {step.get("do") for step in plan if isinstance(step, Mapping)}
    return _REQUEST if steps & {"approve", "reject"} else _GUARD


def _approvals(facts: Mapping[str, Any]) -> int:
    """The distinct reviewers who approved, as the review's end recorded its votes."""
    review = facts.get("review")
    votes = review.get("votes") if isinstance(review, Mapping) else None
    return len(
        {
            str(v.get("reviewer"))
            for v in votes or ()
            if isinstance(v, Mapping) and v.get("verdict") == "approve"
        }
    )


def _missing_holder(
    recorded: RecordedDecision, facts: Facts, covering: Sequence[Policy]
) -> Target | None:
    """A target a covering compare_to rule names whose holder the decision did not record."""
    named = {r.compare_to for p in covering for r in p.rules if isinstance(r, CompareRule)}
    for target in sorted(named, key=str):
        if target in facts.holders:
            continue
        if not target.is_stage and recorded.registry in _STAGES_ONLY:
            continue  # never recorded there: the comparison fails closed, as it did for the gate
        return target
    return None


# --- reading the stored facts back (worker/decisions.py `_version`) --------------------------


def _holders(model: str, stored: Any) -> dict[Target, VersionFacts | None]:
    if stored is None:
        return {}
    if not isinstance(stored, Mapping):
        raise _Unreadable(f"compared_with is {type(stored).__name__}, not an object")
    return {
        Target.parse(str(name)): (
            _version(model, holder, f"compared_with.{name}") if holder is not None else None
        )
        for name, holder in stored.items()
    }


def _version(model: str, stored: Any, where: str) -> VersionFacts:
    if not isinstance(stored, Mapping):
        raise _Unreadable(f"{where} is {type(stored).__name__}, not an object")
    version = stored.get("version")
    if isinstance(version, bool) or not isinstance(version, str | int):
        raise _Unreadable(f"{where}.version is {version!r}, not a version number")
    run_id = _text(stored.get("run_id"), f"{where}.run_id")
    metrics = stored.get("metrics")
    run = None
    if metrics is not None:
        run = RunFacts(
            run_id=run_id or "",
            metrics=_metrics(metrics, f"{where}.metrics"),
            tags=_tags(stored.get("run_tags"), f"{where}.run_tags"),
            start_time_ms=_whole(stored.get("run_start_ms"), f"{where}.run_start_ms"),
        )
    return VersionFacts(
        model=model,
        version=str(version),
        description=_text(stored.get("description"), f"{where}.description") or "",
        tags=_tags(stored.get("tags"), f"{where}.tags"),
        run_id=run_id,
        run=run,
        run_problem=_text(stored.get("run_problem"), f"{where}.run_problem"),
        created_by=_text(stored.get("created_by"), f"{where}.created_by"),
        created_by_source=_text(stored.get("created_by_source"), f"{where}.created_by_source"),
        stage=_text(stored.get("stage"), f"{where}.stage"),
    )


def _metrics(stored: Any, where: str) -> dict[str, float]:
    if not isinstance(stored, Mapping):
        raise _Unreadable(f"{where} is {type(stored).__name__}, not an object")
    return {str(name): _metric(value, f"{where}.{name}") for name, value in stored.items()}


def _metric(value: Any, where: str) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):  # how the ledger stores a non-finite number (NaN, inf)
        try:
            number = float(value)
        except ValueError:
            number = 0.0
        if not math.isfinite(number):
            return number
    raise _Unreadable(f"{where} is {value!r}, not a number")


def _tags(stored: Any, where: str) -> dict[str, str]:
    if stored is None:
        return {}
    if not isinstance(stored, Mapping):
        raise _Unreadable(f"{where} is {type(stored).__name__}, not an object")
    return {str(k): str(v) for k, v in stored.items()}


def _text(value: Any, where: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise _Unreadable(f"{where} is {value!r}, not text")


def _whole(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _Unreadable(f"{where} is {value!r}, not a time in milliseconds")
    return int(value)
