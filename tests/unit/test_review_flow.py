"""Human review in the decision pipeline, against the in-memory MLflow: pending review, N-of-M
approvals, a rejection, expiry, superseding, re-checking at promotion, notices. The HTTP API and
real identities are tested against a real `mlflow server --app-name basic-auth` in
tests/integration/test_review.py."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import pytest

from shared import tags
from shared.events import GateEvent, Kind, Origin, RegistryKind
from shared.ledger import Ledger, Verdict
from shared.notices import Notice
from shared.outcomes import Outcome
from shared.policy import Target, parse_policies
from shared.review import BY_GATE, BY_TAG, Pending, State, refusal, tally
from worker.pipeline import Pipeline
from worker.registries import Registries
from worker.registries.memory import InMemoryMlflow, InMemoryRegistry

POLICY = """
policies:
  - name: production-quality
    targets: [champion]
    rules:
      - metric: validation_accuracy
        min: 0.90
    review:
      approvals: 2
      reviewers: [alice, bob, carol]
      expires_after: 3d
  - name: risk
    models: ["credit-*"]
    targets: [champion]
    rules:
      - metric: validation_accuracy
        min: 0.80
    review:
      approvals: 1
      role: model-reviewers
"""
START = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)
CHAMPION = Target("champion", is_stage=False)


@dataclass
class Clock:
    now: datetime = START

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Gate:
    mlflow: InMemoryMlflow
    registry: InMemoryRegistry
    pipeline: Pipeline
    ledger: Ledger
    clock: Clock
    notices: list[Notice] = field(default_factory=list)

    def version(self, model: str, accuracy: float, creator: str = "dave") -> str:
        if model not in self.mlflow.models:
            self.mlflow.create_model(model)
        run_id = self.mlflow.create_run(
            metrics={"validation_accuracy": accuracy}, tags={tags.RUN_USER: creator}
        )
        return self.mlflow.create_version(model, run_id=run_id, description="described")

    def request(self, model: str, version: str, by: str | None = None) -> str:
        if by is not None:
            self.mlflow.set_version_tag(model, version, tags.REQUESTED_BY, by)
        self.mlflow.set_version_tag(model, version, tags.REQUEST, "champion")
        return self.pipeline.handle(_event(model, version, Origin.WEBHOOK))

    def vote(self, model: str, version: str, who: str, verdict: Verdict, comment: str = "") -> str:
        review = self.ledger.open_review(RegistryKind.MLFLOW, model, "champion")
        assert review is not None and review.version == version
        cast, _ = self.ledger.vote(review.id, who, verdict, comment or None, "mlflow", self.clock())
        return self.pipeline.handle(_event(model, version, Origin.REVIEW, f"vote-{cast.id}"))

    def status(self, model: str, version: str) -> str | None:
        return dict(self.registry.version(model, version).tags).get(tags.STATUS)

    def holder(self, model: str) -> str | None:
        return self.registry.holder(model, CHAMPION)

    def types(self) -> list[str]:
        return [n.type for n in self.notices]


def _event(model: str, version: str, origin: Origin, event_id: str | None = None) -> GateEvent:
    return GateEvent(
        event_id=event_id or f"evt-{uuid.uuid4().hex[:8]}",
        registry=RegistryKind.MLFLOW,
        origin=origin,
        kind=Kind.REQUEST,
        model=model,
        version=version,
        target="champion",
        received_at=0.0,
        webhook_event="test",
    )


@pytest.fixture
def gate(sqlite_ledger: Ledger) -> Iterator[Gate]:
    mlflow = InMemoryMlflow()
    registry = InMemoryRegistry(mlflow)
    clock = Clock()
    notices: list[Notice] = []
    pipeline = Pipeline(
        Registries({RegistryKind.MLFLOW: registry}),
        parse_policies(POLICY),
        sqlite_ledger,
        clock,
        notify=notices.append,
        links=lambda model, version: {
            "mlflow": f"http://mlflow/#/models/{model}/versions/{version}"
        },
    )
    yield Gate(mlflow, registry, pipeline, sqlite_ledger, clock, notices)


def test_passing_checks_wait_for_review_and_nothing_moves(gate: Gate) -> None:
    v1 = gate.version("fraud", 0.95)
    outcome = gate.request("fraud", v1)
    assert outcome == f"fraud v{v1} pending_review for champion"
    assert gate.holder("fraud") is None
    assert gate.status("fraud", v1) == "pending_review"
    review = gate.ledger.open_review(RegistryKind.MLFLOW, "fraud", "champion")
    assert review is not None and review.outcome is Outcome.PENDING_REVIEW
    reason = dict(gate.registry.version("fraud", v1).tags)[tags.REASON]
    assert "2 approval(s)" in reason and "alice, bob, carol" in reason
    assert "Requester unknown" in reason and "created by dave" in reason
    assert gate.types() == ["review.requested"]
    assert gate.notices[0].data["links"]["mlflow"].endswith("/versions/1")
    # The same request again (a duplicate webhook) asks nothing new.
    assert "waits for review" in gate.request("fraud", v1)
    assert gate.types() == ["review.requested"]


def test_two_of_three_approve_only_at_the_second(gate: Gate) -> None:
    v1 = gate.version("fraud", 0.95)
    gate.request("fraud", v1)
    assert "1 of 2 approvals" in gate.vote("fraud", v1, "alice", Verdict.APPROVE)
    assert gate.holder("fraud") is None
    assert gate.vote("fraud", v1, "bob", Verdict.APPROVE) == f"fraud v{v1} approved for champion"
    assert gate.holder("fraud") == v1
    assert gate.ledger.approved_version(RegistryKind.MLFLOW, "fraud", "champion") == v1
    final = gate.ledger.latest(RegistryKind.MLFLOW, "fraud", v1, "champion")
    assert final is not None and final.outcome is Outcome.APPROVED
    assert "Approved by reviewers alice, bob" in final.reason
    assert gate.ledger.open_review(RegistryKind.MLFLOW, "fraud", "champion") is None
    assert gate.types() == [
        "review.requested",
        "review.approved",
        "review.approved",
        "decision.approved",
    ]
    assert gate.notices[-1].data["reviewers"] == ["alice", "bob"]
    # Notices made again (a retried decision) keep their key: receivers deduplicate.
    assert gate.notices[-1].key == f"decision-{final.id}"


def test_a_rejection_rejects_with_the_reviewers_name_and_comment(gate: Gate) -> None:
    v1 = gate.version("fraud", 0.95)
    gate.request("fraud", v1)
    gate.vote("fraud", v1, "alice", Verdict.APPROVE)
    gate.vote("fraud", v1, "carol", Verdict.REJECT, "the fairness report is missing")
    assert gate.holder("fraud") is None
    reason = dict(gate.registry.version("fraud", v1).tags)[tags.REASON]
    assert reason.startswith("Rejected by reviewer carol: the fairness report is missing")
    assert gate.status("fraud", v1) == "rejected"
    assert gate.types()[-1] == "decision.rejected"


def test_the_checks_run_again_at_promotion(gate: Gate) -> None:
    v1 = gate.version("fraud", 0.95)
    gate.request("fraud", v1)
    gate.vote("fraud", v1, "alice", Verdict.APPROVE)
    run_id = gate.registry.version("fraud", v1).run_id
    assert run_id is not None
    gate.mlflow.runs[run_id].metrics["validation_accuracy"] = 0.5  # the run was changed
    gate.vote("fraud", v1, "bob", Verdict.APPROVE)
    assert gate.holder("fraud") is None
    assert gate.status("fraud", v1) == "rejected"


def test_expiry_rejects_and_says_so(gate: Gate) -> None:
    v1 = gate.version("fraud", 0.95)
    gate.request("fraud", v1)
    gate.vote("fraud", v1, "alice", Verdict.APPROVE)
    assert gate.pipeline.reviews_due() == []
    gate.clock.now = START + timedelta(days=3, seconds=1)
    (due,) = gate.pipeline.reviews_due()
    assert due.origin is Origin.REVIEW and due.event_id.endswith("-expired")
    gate.pipeline.handle(due)
    assert gate.holder("fraud") is None
    reason = dict(gate.registry.version("fraud", v1).tags)[tags.REASON]
    assert "the review expired" in reason and "1 of 2 approvals" in reason
    assert gate.types()[-2:] == ["review.expired", "decision.rejected"]
    assert gate.pipeline.reviews_due() == []


def test_a_new_request_supersedes_the_pending_review_and_its_votes(gate: Gate) -> None:
    v1 = gate.version("fraud", 0.95)
    v2 = gate.version("fraud", 0.96)
    gate.request("fraud", v1)
    gate.vote("fraud", v1, "alice", Verdict.APPROVE)
    gate.request("fraud", v2)
    assert gate.status("fraud", v1) == "superseded"
    review = gate.ledger.open_review(RegistryKind.MLFLOW, "fraud", "champion")
    assert review is not None and review.version == v2
    assert gate.ledger.votes(review.id) == []
    gate.vote("fraud", v2, "bob", Verdict.APPROVE)
    assert gate.holder("fraud") is None  # alice's vote was for version 1
    gate.vote("fraud", v2, "carol", Verdict.APPROVE)
    assert gate.holder("fraud") == v2


def test_a_vote_event_for_a_closed_review_does_nothing(gate: Gate) -> None:
    v1 = gate.version("fraud", 0.95)
    gate.request("fraud", v1)
    gate.vote("fraud", v1, "alice", Verdict.APPROVE)
    gate.vote("fraud", v1, "bob", Verdict.APPROVE)
    late = gate.pipeline.handle(_event("fraud", v1, Origin.REVIEW, "vote-999"))
    assert "no review pending" in late


def test_failing_checks_are_rejected_without_review(gate: Gate) -> None:
    v1 = gate.version("fraud", 0.5)
    gate.request("fraud", v1)
    assert gate.status("fraud", v1) == "rejected"
    assert gate.ledger.open_review(RegistryKind.MLFLOW, "fraud", "champion") is None
    assert gate.types() == ["decision.rejected"]


def test_the_requester_through_the_gate_is_trusted_over_the_tag(gate: Gate) -> None:
    v1 = gate.version("fraud", 0.95)
    gate.ledger.ask(RegistryKind.MLFLOW, "fraud", v1, "champion", "erin", "mlflow", START)
    gate.request("fraud", v1, by="mallory")  # the tag claims someone else
    review = gate.ledger.open_review(RegistryKind.MLFLOW, "fraud", "champion")
    assert review is not None
    pending = Pending.from_facts(review.facts, review.decided_at)
    assert pending.requester.name == "erin" and pending.requester.source == BY_GATE
    assert review.requested_by == "erin"


def test_a_tag_requester_is_not_verified(gate: Gate) -> None:
    v1 = gate.version("fraud", 0.95)
    gate.request("fraud", v1, by="mallory")
    review = gate.ledger.open_review(RegistryKind.MLFLOW, "fraud", "champion")
    assert review is not None
    pending = Pending.from_facts(review.facts, review.decided_at)
    assert pending.requester.source == BY_TAG and not pending.requester.verified
    assert "not verified" in pending.requester.says("requested")


def test_who_may_review(gate: Gate) -> None:
    v1 = gate.version("credit-risk", 0.95, creator="alice")
    gate.ledger.ask(RegistryKind.MLFLOW, "credit-risk", v1, "champion", "bob", "mlflow", START)
    gate.request("credit-risk", v1)
    review = gate.ledger.open_review(RegistryKind.MLFLOW, "credit-risk", "champion")
    assert review is not None
    pending = Pending.from_facts(review.facts, review.decided_at)
    # Both policies cover it: the largest approvals (2), and each policy's list must allow.
    assert pending.need.approvals == 2

    def roles(name: str) -> set[str]:
        return {"model-reviewers"} if name in ("carol", "alice", "bob", "zed") else set()

    def why(name: str) -> str | None:
        return refusal(name, pending, [], START, roles)

    assert "you requested this promotion" in (why("bob") or "")
    assert "you created this version" in (why("alice") or "")
    assert why("carol") is None  # named by one policy, in the role of the other
    assert "not a reviewer for policy 'production-quality'" in (why("zed") or "")
    outside = refusal("carol", pending, [], START, lambda name: set())
    assert "not a reviewer for policy 'risk' (it allows role model-reviewers)" in (outside or "")


def test_votes_after_expiry_do_not_count(gate: Gate) -> None:
    v1 = gate.version("fraud", 0.95)
    gate.request("fraud", v1)
    review = gate.ledger.open_review(RegistryKind.MLFLOW, "fraud", "champion")
    assert review is not None
    pending = Pending.from_facts(review.facts, review.decided_at)
    late = START + timedelta(days=4)
    gate.ledger.vote(review.id, "alice", Verdict.APPROVE, None, "mlflow", START)
    gate.ledger.vote(review.id, "bob", Verdict.APPROVE, None, "mlflow", late)
    result = tally(pending, gate.ledger.votes(review.id), late)
    assert result.state is State.EXPIRED and result.reviewers == ["alice"]


def test_a_reviewer_votes_once(gate: Gate) -> None:
    v1 = gate.version("fraud", 0.95)
    gate.request("fraud", v1)
    review = gate.ledger.open_review(RegistryKind.MLFLOW, "fraud", "champion")
    assert review is not None
    first, new = gate.ledger.vote(review.id, "alice", Verdict.APPROVE, None, "mlflow", START)
    again, new_again = gate.ledger.vote(review.id, "alice", Verdict.REJECT, "no", "mlflow", START)
    assert new and not new_again and again == first
    assert len(gate.ledger.votes(review.id)) == 1


def test_an_alias_set_around_the_review_is_undone_even_if_the_checks_pass(gate: Gate) -> None:
    v1 = gate.version("fraud", 0.95)
    gate.request("fraud", v1)
    gate.vote("fraud", v1, "alice", Verdict.APPROVE)
    gate.vote("fraud", v1, "bob", Verdict.APPROVE)
    assert gate.holder("fraud") == v1
    v2 = gate.version("fraud", 0.99)  # better, but nobody reviewed it
    gate.mlflow.set_alias("fraud", "champion", v2)
    gate.pipeline.handle(
        GateEvent(
            event_id="evt-alias",
            registry=RegistryKind.MLFLOW,
            origin=Origin.WEBHOOK,
            kind=Kind.ALIAS_CREATED,
            model="fraud",
            version=v2,
            target="champion",
            received_at=0.0,
            webhook_event="model_version_alias.created",
        )
    )
    assert gate.holder("fraud") == v1  # put back on the reviewed version
    last = gate.ledger.latest(RegistryKind.MLFLOW, "fraud", v2, "champion")
    assert last is not None and last.outcome is Outcome.REJECTED
    assert "asks for human review" in last.reason
    assert gate.types()[-1] == "guard.reverted"
