"""shared.whatif: the ledger's decisions decided again under another policy set, on the facts they
recorded. Decisions are recorded by the real pipeline (in-memory MLflow, SQLite ledger), or built
with the pipeline's own `evaluated()` and stored through the ledger's JSON handling."""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

import pytest

from shared import tags
from shared.evaluation import Facts, RunFacts, VersionFacts
from shared.events import GateEvent, Kind, Origin, RegistryKind
from shared.ledger import DecisionRow, Ledger, RecordedDecision, TargetKind, Verdict
from shared.ledger.rows import jsonable
from shared.outcomes import Outcome
from shared.policy import PolicySet, Target, parse_policies
from shared.whatif import facts_of, rebuild, trial, what_if
from worker.decisions import evaluated
from worker.pipeline import Pipeline
from worker.registries import Registries
from worker.registries.memory import InMemoryMlflow, InMemoryRegistry
from worker.steps import Do, Step, plan_facts

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)
NOW_MS = int(NOW.timestamp() * 1000)
DAY_MS = 86_400_000
CHAMPION = Target("champion", is_stage=False)
PRODUCTION = Target("Production", is_stage=True)

POLICY = """
policies:
  - name: production-quality
    targets: [champion, Production]
    rules:
      - metric: validation_accuracy
        min: {threshold}
      - description: required
  - name: better-than-champion
    targets: [challenger]
    rules:
      - compare_to: champion
        metric: validation_accuracy
  - name: credit-review
    models: ["credit-*"]
    targets: [champion]
    rules:
      - metric: validation_accuracy
        min: 0.80
    review:
      approvals: 1
"""


def policies(text: str) -> PolicySet:
    return parse_policies(text, source="test.yaml")


def quality(threshold: float = 0.90, *, extra: str = "") -> PolicySet:
    return policies(POLICY.format(threshold=threshold) + extra)


# --- decisions as the ledger keeps them ----------------------------------------------------


def version(
    number: str = "5",
    accuracy: float | None = 0.95,
    *,
    metrics: Mapping[str, float] | None = None,
    created_by: str | None = "dave",
    start_ms: int | None = NOW_MS - DAY_MS,
    description: str = "described",
) -> VersionFacts:
    logged = dict(metrics or {})
    if accuracy is not None:
        logged["validation_accuracy"] = accuracy
    return VersionFacts(
        model="fraud",
        version=number,
        description=description,
        tags={},
        run_id=f"run-{number}",
        run=RunFacts(f"run-{number}", logged, {}, start_ms),
        created_by=created_by,
        created_by_source="registry",
    )


def recorded(
    outcome: Outcome,
    candidate: VersionFacts | None = None,
    *,
    target: Target = CHAMPION,
    holders: Mapping[Target, VersionFacts | None] | None = None,
    requested_by: str | None = "erin",
    plan: Sequence[Do] = (),
    extra: Mapping[str, Any] | None = None,
    registry: RegistryKind = RegistryKind.MLFLOW,
    model: str = "fraud",
    decision_id: int = 1,
    policies_: tuple[str, ...] = ("production-quality",),
    raw_facts: Mapping[str, Any] | None = None,
) -> RecordedDecision:
    """A decision with its facts stored as the pipeline stores them (worker/decisions.py), made
    JSON as the ledger makes it (a NaN becomes "nan")."""
    candidate = candidate or version()
    facts = Facts(candidate, target, dict(holders or {}), requested_by, NOW_MS)
    steps = [Step(do, candidate.version) for do in plan]
    stored = plan_facts({**evaluated(facts), **(extra or {})}, steps)
    return RecordedDecision(
        id=decision_id,
        decided_at=NOW,
        registry=registry,
        model=model,
        version=candidate.version,
        target=target.name,
        target_kind=TargetKind.STAGE if target.is_stage else TargetKind.ALIAS,
        outcome=outcome,
        reason="as recorded",
        event_id=f"evt-{decision_id}",
        origin=Origin.WEBHOOK,
        policies=policies_,
        facts=jsonable(dict(raw_facts if raw_facts is not None else stored), "facts"),
    )


def approved_request(candidate: VersionFacts | None = None, **more: Any) -> RecordedDecision:
    return recorded(Outcome.APPROVED, candidate, plan=(Do.APPROVE,), **more)


def rejected_request(candidate: VersionFacts | None = None, **more: Any) -> RecordedDecision:
    return recorded(Outcome.REJECTED, candidate, plan=(Do.REJECT,), **more)


# --- the same policy: nothing flips (the pipeline and what_if agree) -------------------------


class Gate:
    """The real pipeline on an in-memory MLflow, recording into a SQLite ledger."""

    def __init__(self, ledger: Ledger, policy_set: PolicySet) -> None:
        self.mlflow = InMemoryMlflow()
        self.registry = InMemoryRegistry(self.mlflow)
        self.ledger = ledger
        self.pipeline = Pipeline(
            Registries({RegistryKind.MLFLOW: self.registry}), policy_set, ledger, lambda: NOW
        )

    def version(self, model: str, accuracy: float) -> str:
        if model not in self.mlflow.models:
            self.mlflow.create_model(model)
        run_id = self.mlflow.create_run(
            metrics={"validation_accuracy": accuracy}, tags={tags.RUN_USER: "dave"}
        )
        return self.mlflow.create_version(model, run_id=run_id, description="described")

    def request(self, model: str, version: str, target: str) -> str:
        self.mlflow.set_version_tag(model, version, tags.REQUEST, target)
        return self.handle(Kind.REQUEST, model, version, target)

    def handle(
        self,
        kind: Kind,
        model: str,
        version: str | None,
        target: str,
        origin: Origin = Origin.WEBHOOK,
        event_id: str | None = None,
    ) -> str:
        return self.pipeline.handle(
            GateEvent(
                event_id=event_id or f"evt-{uuid.uuid4().hex[:8]}",
                registry=RegistryKind.MLFLOW,
                origin=origin,
                kind=kind,
                model=model,
                version=version,
                target=target,
                received_at=0.0,
                webhook_event="test",
            )
        )


@pytest.fixture
def history(sqlite_ledger: Ledger) -> list[RecordedDecision]:
    """Every kind of decision the pipeline records, under quality(0.90)."""
    gate = Gate(sqlite_ledger, quality())
    v1, v2 = gate.version("fraud", 0.95), gate.version("fraud", 0.80)
    assert "approved" in gate.request("fraud", v1, "champion")
    assert "rejected" in gate.request("fraud", v2, "champion")
    v3 = gate.version("fraud", 0.93)  # set outside the gate, passes: kept
    gate.mlflow.set_alias("fraud", "champion", v3)
    assert "approved" in gate.handle(Kind.ALIAS_CREATED, "fraud", v3, "champion")
    v4 = gate.version("fraud", 0.50)  # set outside the gate, fails: put back
    gate.mlflow.set_alias("fraud", "champion", v4)
    assert "rejected" in gate.handle(Kind.ALIAS_CREATED, "fraud", v4, "champion")
    v5, v6 = gate.version("fraud", 0.97), gate.version("fraud", 0.91)
    assert "approved" in gate.request("fraud", v5, "challenger")  # 0.97 >= v3's 0.93
    assert "rejected" in gate.request("fraud", v6, "challenger")  # 0.91 < 0.93
    assert "no open request" in gate.handle(Kind.REQUEST, "fraud", gate.version("fraud", 1), "x")
    gate.pipeline.roll_back(RegistryKind.MLFLOW, "fraud", CHAMPION, "bad", acted_by="ops")
    c1 = gate.version("credit-a", 0.95)
    assert "pending_review" in gate.request("credit-a", c1, "champion")
    review = sqlite_ledger.open_review(RegistryKind.MLFLOW, "credit-a", "champion")
    assert review is not None
    cast, _ = sqlite_ledger.vote(review.id, "alice", Verdict.APPROVE, None, "mlflow", NOW)
    event = f"vote-{cast.id}"
    assert "approved" in gate.handle(Kind.REQUEST, "credit-a", c1, "champion", Origin.REVIEW, event)
    return sqlite_ledger.decisions(limit=100)


def test_the_policy_in_force_decides_every_recorded_decision_the_same(
    history: list[RecordedDecision],
) -> None:
    result = what_if(history, quality())
    assert result.flipped == []
    recorded_outcomes = sorted(
        (t.decision.model, t.decision.version, t.decision.target, t.was.value)
        for t in result.trials
    )
    assert recorded_outcomes == [
        ("credit-a", "1", "champion", "approved"),  # the review's end
        ("credit-a", "1", "champion", "pending_review"),
        ("fraud", "1", "champion", "approved"),  # put back by the operator's rollback
        ("fraud", "1", "champion", "approved"),  # the request
        ("fraud", "2", "champion", "rejected"),
        ("fraud", "3", "champion", "approved"),  # a move outside the gate, kept
        ("fraud", "3", "champion", "rolled_back"),
        ("fraud", "4", "champion", "rejected"),  # a move outside the gate, undone
        ("fraud", "5", "challenger", "approved"),  # compare_to champion
        ("fraud", "6", "challenger", "rejected"),
        ("fraud", "7", "x", "skipped"),
    ]
    for tried in result.trials:
        if tried.evaluated:
            assert tried.would is tried.was, tried.reason
    assert result.evaluated == 8
    # The skipped request, the operator's rollback (approved) and the version rolled back: not.
    not_evaluable = {(t.was.value, t.reason) for t in result.trials if not t.evaluated}
    assert not_evaluable == {
        ("skipped", "skipped: nothing was decided (the request was no longer open)"),
        ("approved", "an operator's rollback: no rule was evaluated"),
        ("rolled_back", "rolled back by an operator; no rule was evaluated"),
    }
    assert result.not_evaluable == 3


def test_a_stricter_threshold_flips_the_kept_move_and_the_approval_below_it(
    history: list[RecordedDecision],
) -> None:
    result = what_if(history, quality(0.94))
    flipped = {(t.decision.model, t.decision.version, t.was, t.would) for t in result.flipped}
    assert flipped == {
        ("fraud", "3", Outcome.APPROVED, Outcome.REJECTED),  # the move kept at 0.93: undone
    }
    (kept,) = result.flipped
    assert "set outside the gate and fails the policy, so it would be undone" in kept.reason
    (failed,) = [c for c in kept.checks if not c.passed]
    assert (failed.actual, failed.required) == (0.93, ">= 0.94")


# --- flips both ways, review, audit ----------------------------------------------------------


def test_a_looser_threshold_approves_what_was_rejected() -> None:
    tried = trial(rejected_request(version(accuracy=0.85)), quality(0.80))
    assert (tried.was, tried.would, tried.flips) == (Outcome.REJECTED, Outcome.APPROVED, True)
    assert tried.reason.startswith("Approved for alias 'champion': 2 of 2 checks passed")


def test_a_stricter_threshold_rejects_what_was_approved_and_says_actual_and_required() -> None:
    tried = trial(approved_request(version(accuracy=0.92)), quality(0.95))
    assert tried.would is Outcome.REJECTED and tried.flips
    (check,) = tried.failed
    assert (check.check, check.actual, check.required) == (
        "metric validation_accuracy",
        0.92,
        ">= 0.95",
    )
    assert "validation_accuracy is 0.92, below the minimum 0.95" in tried.reason


def test_an_unchanged_outcome_is_no_flip() -> None:
    tried = trial(approved_request(version(accuracy=0.99)), quality(0.95))
    assert (tried.would, tried.flips) == (Outcome.APPROVED, False)


def test_a_review_turns_an_approved_request_into_pending_review() -> None:
    reviewed = quality(extra=REVIEW.format(mode="enforce"))
    tried = trial(approved_request(version(accuracy=0.95)), reviewed)
    assert (tried.would, tried.flips) == (Outcome.PENDING_REVIEW, True)
    assert "2 approval(s)" in tried.reason and "Checks for alias 'champion'" in tried.reason


REVIEW = """
  - name: four-eyes-review
    targets: [champion]
    mode: {mode}
    rules:
      - description: required
    review:
      approvals: 2
"""


def test_an_audit_mode_review_is_not_asked_for() -> None:
    audited = quality(extra=REVIEW.format(mode="audit"))
    tried = trial(approved_request(version(accuracy=0.95)), audited)
    assert (tried.would, tried.flips) == (Outcome.APPROVED, False)


def test_audit_mode_failures_are_reported_but_never_flip_an_approval() -> None:
    audit = policies(
        """
policies:
  - name: shadow
    targets: [champion]
    mode: audit
    rules:
      - metric: validation_accuracy
        min: 0.99
"""
    )
    tried = trial(approved_request(version(accuracy=0.95)), audit)
    assert (tried.would, tried.flips) == (Outcome.APPROVED, False)
    (check,) = tried.failed
    assert check.enforced is False
    assert "Audit only, not enforced: validation_accuracy is 0.95" in tried.reason


def test_a_policy_set_covering_nothing_rejects_fail_closed_and_that_flip_is_shown() -> None:
    elsewhere = policies(
        "policies:\n  - name: other\n    targets: [Staging]\n    rules:\n"
        "      - description: required\n"
    )
    tried = trial(approved_request(), elsewhere)
    assert (tried.would, tried.flips) == (Outcome.REJECTED, True)
    assert "no policy covers it for model 'fraud'" in tried.reason
    assert tried.checks == ()


def test_four_eyes_and_max_age_use_the_recorded_requester_and_time() -> None:
    rules = policies(
        """
policies:
  - name: governance
    targets: [champion]
    rules:
      - four_eyes: true
      - max_age_days: 3
"""
    )
    fresh = approved_request(version(start_ms=NOW_MS - 2 * DAY_MS), requested_by="erin")
    assert trial(fresh, rules).would is Outcome.APPROVED  # whatever today's date
    old = approved_request(version(start_ms=NOW_MS - 5 * DAY_MS), requested_by="erin")
    assert trial(old, rules).would is Outcome.REJECTED
    own = approved_request(version(created_by="erin"), requested_by="Erin")
    tried = trial(own, rules)
    assert tried.would is Outcome.REJECTED and "who also created it" in tried.reason


# --- guards (a version set on the target outside the gate) ---------------------------------


def test_a_kept_move_would_be_undone_where_review_is_asked() -> None:
    kept = recorded(Outcome.APPROVED, version(accuracy=0.95), requested_by=None)  # plan: none
    tried = trial(kept, quality(extra=REVIEW.format(mode="enforce")))
    assert (tried.would, tried.flips) == (Outcome.REJECTED, True)
    assert "asks for human review (2 approval(s)), which it did not get" in tried.reason


def test_an_undone_move_on_a_target_no_policy_covers_would_stand() -> None:
    undone = recorded(Outcome.REJECTED, version(accuracy=0.5), plan=(Do.PUT,), requested_by=None)
    nothing = policies(
        "policies:\n  - name: other\n    targets: [Staging]\n    rules:\n"
        "      - description: required\n"
    )
    tried = trial(undone, nothing)
    assert (tried.would, tried.flips) == (Outcome.APPROVED, True)
    assert "the gate would not guard it: the move would stand" in tried.reason


# --- the end of a human review ---------------------------------------------------------------


def _reviewed(outcome: Outcome, *approvers: str, rejecter: str | None = None) -> RecordedDecision:
    votes = [{"reviewer": who, "verdict": "approve"} for who in approvers]
    if rejecter:
        votes.append({"reviewer": rejecter, "verdict": "reject", "comment": "no"})
    review = {"approvals": 1, "gates": [], "expires_after_seconds": None, "votes": votes}
    plan = (Do.APPROVE,) if outcome is Outcome.APPROVED else (Do.REJECT,)
    return recorded(outcome, version(accuracy=0.95), plan=plan, extra={"review": review})


def test_an_approval_with_fewer_approvals_than_now_asked_would_still_be_pending() -> None:
    two = quality(extra=REVIEW.format(mode="enforce"))
    tried = trial(_reviewed(Outcome.APPROVED, "alice"), two)
    assert (tried.would, tried.flips) == (Outcome.PENDING_REVIEW, True)
    assert "1 approval(s) were given, the policies ask for 2" in tried.reason
    enough = trial(_reviewed(Outcome.APPROVED, "alice", "bob"), two)
    assert (enough.would, enough.flips) == (Outcome.APPROVED, False)


def test_a_reviewers_rejection_stands_under_review_and_flips_without_it() -> None:
    rejected = _reviewed(Outcome.REJECTED, rejecter="bob")
    with_review = trial(rejected, quality(extra=REVIEW.format(mode="enforce")))
    assert (with_review.would, with_review.flips) == (Outcome.REJECTED, False)
    assert with_review.reason.startswith("The review's verdict stands: as recorded")
    without = trial(rejected, quality())
    assert (without.would, without.flips) == (Outcome.APPROVED, True)


# --- compare_to ------------------------------------------------------------------------------


def _challenger(holders: Mapping[Target, VersionFacts | None]) -> RecordedDecision:
    return approved_request(version("7", 0.93), target=Target("challenger", False), holders=holders)


def test_compare_to_uses_the_recorded_holder() -> None:
    decision = _challenger({CHAMPION: version("3", 0.90)})
    assert trial(decision, quality()).would is Outcome.APPROVED
    stricter = quality(extra=COMPARE.format(delta=0.05))
    tried = trial(decision, stricter)
    assert (tried.would, tried.flips) == (Outcome.REJECTED, True)
    failing = [c for c in tried.failed if c.policy == "by-a-margin"]
    assert failing[0].required == ">= 0.95 (version 3 has 0.9)"


COMPARE = """
  - name: by-a-margin
    targets: [challenger]
    rules:
      - compare_to: champion
        metric: validation_accuracy
        min_delta: {delta}
"""


def test_compare_to_where_nobody_held_the_target_passes_as_it_did() -> None:
    tried = trial(_challenger({CHAMPION: None}), quality(extra=COMPARE.format(delta=0.05)))
    assert tried.would is Outcome.APPROVED
    assert any("nobody holds champion yet" in c.message for c in tried.checks)


def test_compare_to_a_target_whose_holder_was_not_recorded_cannot_be_decided_again() -> None:
    production = policies(
        """
policies:
  - name: vs-production
    targets: [champion]
    rules:
      - compare_to: Production
        metric: validation_accuracy
"""
    )
    decision = approved_request(version(accuracy=0.95), holders={CHAMPION: version("2", 0.9)})
    tried = trial(decision, production)
    assert tried.would is None and not tried.flips
    assert "names stage 'Production', but the decision did not record who held Production" in (
        tried.reason
    )


def test_compare_to_an_alias_on_databricks_fails_closed_as_it_did_for_the_gate() -> None:
    decision = rejected_request(
        version(accuracy=0.95), target=PRODUCTION, registry=RegistryKind.DATABRICKS
    )
    vs_champion = policies(
        """
policies:
  - name: vs-champion
    targets: [Production]
    rules:
      - compare_to: champion
        metric: validation_accuracy
"""
    )
    tried = trial(decision, vs_champion)
    assert (tried.would, tried.flips) == (Outcome.REJECTED, False)
    assert "the current holder of champion is unknown" in tried.reason


# --- what the ledger stored: NaN, unknown keys, shapes it cannot read --------------------------


def test_a_nan_metric_stored_as_text_fails_as_a_nan(sqlite_ledger: Ledger) -> None:
    nan = version(accuracy=math.nan, metrics={"loss": math.inf})
    row = approved_request(nan)
    fields = {k: v for k, v in vars(row).items() if k != "id"}
    fields["facts"] = plan_facts(
        evaluated(Facts(nan, CHAMPION, {}, "erin", NOW_MS)), [Step(Do.REJECT, "5")]
    )  # floats, NaN included: the ledger stores them as it must
    stored = sqlite_ledger.decision(sqlite_ledger.record(DecisionRow(**fields)))
    assert stored is not None
    assert stored.facts["candidate"]["metrics"] == {"loss": "inf", "validation_accuracy": "nan"}
    facts = facts_of(stored)
    assert facts is not None and facts.candidate.run is not None
    assert math.isnan(facts.candidate.run.metrics["validation_accuracy"])
    assert facts.candidate.run.metrics["loss"] == math.inf
    tried = trial(stored, quality())
    assert (tried.would, tried.flips) == (Outcome.REJECTED, True)
    assert "validation_accuracy is nan in run run-5, not a usable number" in tried.reason


def test_keys_the_evaluation_does_not_use_are_ignored() -> None:
    plain = approved_request(version(accuracy=0.95))
    facts = dict(plain.facts)
    facts["something_newer"] = {"x": [1, 2]}
    facts["candidate"] = {**facts["candidate"], "lineage": "abc"}
    more = recorded(Outcome.APPROVED, raw_facts=facts)
    assert facts_of(more) == facts_of(plain)
    assert trial(more, quality()).would is Outcome.APPROVED


@pytest.mark.parametrize(
    ("change", "said"),
    [
        (lambda c: {**c, "metrics": {"validation_accuracy": "high"}}, "metrics.validation_"),
        (lambda c: {**c, "tags": ["a"]}, "candidate.tags is list, not an object"),
        (lambda c: {**c, "version": None}, "candidate.version is None"),
        (lambda c: "v5", "candidate is str, not an object"),
    ],
)
def test_facts_it_cannot_read_are_not_decided_again_and_say_which_field(
    change: Any, said: str
) -> None:
    facts = dict(approved_request().facts)
    facts["candidate"] = change(facts["candidate"])
    tried = trial(recorded(Outcome.APPROVED, raw_facts=facts), quality())
    assert tried.would is None and not tried.flips
    assert tried.reason.startswith("its stored facts cannot be read: ") and said in tried.reason


@pytest.mark.parametrize(
    ("outcome", "said"),
    [
        (Outcome.SKIPPED, "skipped: nothing was decided"),
        (Outcome.VIOLATION, "a violation: a version moved into the stage outside the gate"),
        (Outcome.SUPERSEDED, "superseded: a pending review replaced by a newer request"),
        (Outcome.ROLLED_BACK, "rolled back by an operator"),
    ],
)
def test_outcomes_no_rule_decided_are_not_decided_again(outcome: Outcome, said: str) -> None:
    tried = trial(recorded(outcome, raw_facts={"plan": []}), quality())
    assert (tried.would, tried.flips) == (None, False)
    assert said in tried.reason
    assert rebuild(tried.decision).facts is None


def test_an_approval_without_stored_facts_is_not_decided_again() -> None:
    old = recorded(Outcome.APPROVED, raw_facts={})
    tried = trial(old, quality())
    assert tried.would is None and "the ledger holds no facts for this decision" in tried.reason
    rollback = recorded(Outcome.APPROVED, raw_facts={"plan": []}, policies_=("operator-rollback",))
    assert trial(rollback, quality()).reason == "an operator's rollback: no rule was evaluated"


def test_a_decision_without_a_plan_is_not_guessed_at() -> None:
    facts = {k: v for k, v in approved_request().facts.items() if k != "plan"}
    tried = trial(recorded(Outcome.APPROVED, raw_facts=facts), quality())
    assert tried.would is None and "records no plan" in tried.reason


# --- the result --------------------------------------------------------------------------------


def test_the_result_counts_and_serialises_as_json() -> None:
    decisions = [
        approved_request(version(accuracy=0.92), decision_id=3),
        rejected_request(version(accuracy=0.97), decision_id=2),
        recorded(Outcome.SKIPPED, raw_facts={}, decision_id=1),
    ]
    result = what_if(decisions, quality(0.95))
    assert (result.evaluated, result.not_evaluable) == (2, 1)
    assert [t.decision.id for t in result.flipped] == [3, 2]
    data = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert (data["evaluated"], data["flipped"], data["not_evaluable"]) == (2, 2, 1)
    assert data["policy_source"] == "test.yaml"
    first = data["trials"][0]
    assert (first["was"], first["would"], first["flips"]) == ("approved", "rejected", True)
    assert first["decision"]["id"] == 3 and first["decision"]["time"] == "2026-11-23T12:00:00.000Z"
    assert first["checks"][0]["actual"] == 0.92
    assert data["trials"][2]["would"] is None and data["trials"][2]["checks"] == []
