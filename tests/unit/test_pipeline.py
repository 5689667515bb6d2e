"""The open-source decision pipeline against the in-memory MLflow registry: requests, guards,
compare_to, stage archiving, the sweep, errors. The same scenarios run against a real `mlflow
server` in tests/integration/."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone

import pytest

from cli.audit import decision_dict
from shared import tags
from shared.errors import MlflowUnavailable, PermanentError
from shared.events import GateEvent, Kind, Origin, RegistryKind
from shared.ledger import Ledger
from shared.policy import PolicySet, Target, parse_policies
from worker.pipeline import Pipeline
from worker.registries import Registries
from worker.registries.memory import InMemoryMlflow, InMemoryRegistry

POLICY = """
policies:
  - name: production-quality
    targets: [champion, Production]
    rules:
      - metric: validation_accuracy
        min: 0.90
      - description: required
  - name: better-than-champion
    targets: [challenger-proof]
    rules:
      - compare_to: champion
        metric: validation_accuracy
        min_delta: 0.01
"""
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)
CHAMPION = Target("champion", is_stage=False)
PRODUCTION = Target("Production", is_stage=True)


@dataclass
class Gate:
    mlflow: InMemoryMlflow
    registry: InMemoryRegistry
    pipeline: Pipeline
    ledger: Ledger

    def approved(self, model: str, target: str) -> str | None:
        return self.ledger.approved_version(RegistryKind.MLFLOW, model, target)

    def recent(self, model: str) -> list[dict[str, object]]:
        return [decision_dict(d) for d in self.ledger.decisions(model_glob=model)]

    def version(self, model: str, accuracy: float | None, *, described: bool = True) -> str:
        run_id = self.mlflow.create_run(
            metrics={"validation_accuracy": accuracy} if accuracy is not None else {}
        )
        description = "a well described model" if described else ""
        return self.mlflow.create_version(model, run_id=run_id, description=description)

    def request(
        self, model: str, version: str, target: str, origin: Origin = Origin.WEBHOOK
    ) -> str:
        self.mlflow.set_version_tag(model, version, tags.REQUEST, target)
        return self.pipeline.handle(event(Kind.REQUEST, model, version, target, origin))

    def tags_of(self, model: str, version: str) -> dict[str, str]:
        return dict(self.registry.version(model, version).tags)

    def writes(self) -> list[tuple[str, str]]:
        return [c for c in self.mlflow.calls if c[0] in ("POST", "DELETE", "PATCH")]


def event(
    kind: Kind, model: str, version: str | None, target: str, origin: Origin = Origin.WEBHOOK
) -> GateEvent:
    return GateEvent(
        event_id=f"evt-{kind.value}-{model}-{version}-{target}-{uuid.uuid4().hex[:8]}",
        registry=RegistryKind.MLFLOW,
        origin=origin,
        kind=kind,
        model=model,
        version=version,
        target=target,
        received_at=0.0,
        webhook_event="test",
    )


def make_gate(policies: PolicySet, ledger: Ledger) -> Gate:
    mlflow = InMemoryMlflow()
    registry = InMemoryRegistry(mlflow)
    pipeline = Pipeline(Registries({RegistryKind.MLFLOW: registry}), policies, ledger, lambda: NOW)
    return Gate(mlflow, registry, pipeline, ledger)


@pytest.fixture
def gate(sqlite_ledger: Ledger) -> Iterator[Gate]:
    yield make_gate(parse_policies(POLICY), sqlite_ledger)


# --- requests -------------------------------------------------------------------------------


def test_a_passing_request_sets_the_alias_and_records_the_decision_status_last(gate: Gate) -> None:
    gate.mlflow.create_model("fraud")
    v1 = gate.version("fraud", 0.95)
    outcome = gate.request("fraud", v1, "champion")
    assert outcome == f"fraud v{v1} approved for champion"
    assert gate.registry.holder("fraud", CHAMPION) == v1
    assert gate.approved("fraud", "champion") == v1
    found = gate.tags_of("fraud", v1)
    assert found[tags.STATUS] == "approved" and found[tags.TARGET] == "champion"
    assert found[tags.POLICY] == "production-quality"
    assert found[tags.DECIDED_AT] == "2026-11-23T12:00:00Z"
    assert "Alias 'champion' now points to version 1." in found[tags.REASON]
    checks = json.loads(found[tags.CHECKS])
    assert [c["check"] for c in checks] == ["metric validation_accuracy", "description"]
    assert len(gate.mlflow.calls_to("model-versions/set-tag")) == 6  # the governance tags
    # Status last: whoever waits for it finds the rest already written.
    assert gate.mlflow.tag_keys_written[-1] == tags.STATUS
    (entry,) = gate.recent("fraud")
    assert entry["outcome"] == "approved" and entry["registry"] == "mlflow"
    assert entry["origin"] == "webhook" and entry["event_id"].startswith("evt-request")


def test_a_failing_request_moves_nothing_and_names_each_failed_check(gate: Gate) -> None:
    gate.mlflow.create_model("fraud")
    v1 = gate.version("fraud", 0.72, described=False)
    gate.request("fraud", v1, "champion")
    assert gate.registry.holder("fraud", CHAMPION) is None
    assert gate.approved("fraud", "champion") is None
    found = gate.tags_of("fraud", v1)
    assert found[tags.STATUS] == "rejected"
    assert "validation_accuracy is 0.72, below the minimum 0.9" in found[tags.REASON]
    assert "the version has no description" in found[tags.REASON]


def test_a_target_no_policy_covers_is_rejected_fail_closed(gate: Gate) -> None:
    gate.mlflow.create_model("fraud")
    v1 = gate.version("fraud", 0.99)
    gate.request("fraud", v1, "canary")
    assert gate.registry.holder("fraud", Target("canary", False)) is None
    assert "no policy covers it" in gate.tags_of("fraud", v1)[tags.REASON]


def test_a_stage_request_transitions_and_archives_what_was_there(gate: Gate) -> None:
    gate.mlflow.create_model("fraud")
    v1, v2 = gate.version("fraud", 0.95), gate.version("fraud", 0.97)
    gate.request("fraud", v1, "production")  # stage names are case-insensitive
    assert gate.registry.version("fraud", v1).stage == "Production"
    gate.request("fraud", v2, "Production")
    assert gate.registry.version("fraud", v2).stage == "Production"
    assert gate.registry.version("fraud", v1).stage == "Archived"
    assert "(versions already there archived)" in gate.tags_of("fraud", v2)[tags.REASON]
    # Asked again: already there, nothing moves.
    before = len(gate.mlflow.calls_to("transition-stage"))
    gate.request("fraud", v2, "Production")
    assert len(gate.mlflow.calls_to("transition-stage")) == before
    assert "was already in stage Production" in gate.tags_of("fraud", v2)[tags.REASON]


def test_compare_to_the_holder_rejects_a_worse_challenger_and_passes_a_better_one(
    gate: Gate,
) -> None:
    gate.mlflow.create_model("fraud")
    champion = gate.version("fraud", 0.93)
    gate.request("fraud", champion, "champion")
    worse, better = gate.version("fraud", 0.935), gate.version("fraud", 0.95)
    gate.request("fraud", worse, "challenger-proof")
    reason = gate.tags_of("fraud", worse)[tags.REASON]
    assert gate.tags_of("fraud", worse)[tags.STATUS] == "rejected"
    assert "below current champion (version 1: 0.93, min_delta 0.01)" in reason
    gate.request("fraud", better, "challenger-proof")
    assert gate.tags_of("fraud", better)[tags.STATUS] == "approved"


def test_a_withdrawn_request_is_recorded_as_skipped_but_not_from_the_sweep(gate: Gate) -> None:
    gate.mlflow.create_model("fraud")
    v1 = gate.version("fraud", 0.95)
    # No governance.request on the version (withdrawn before the worker got to it).
    outcome = gate.pipeline.handle(event(Kind.REQUEST, "fraud", v1, "champion"))
    assert "nothing done" in outcome
    (entry,) = gate.recent("fraud")
    assert entry["outcome"] == "skipped" and "no longer open" in entry["reason"]
    assert tags.STATUS not in gate.tags_of("fraud", v1)  # skipped is not shown on the version
    swept = gate.pipeline.handle(event(Kind.REQUEST, "fraud", v1, "champion", Origin.SWEEP))
    assert "decided meanwhile" in swept
    assert len(gate.recent("fraud")) == 1


def test_a_sweep_event_for_a_decided_request_changes_nothing(gate: Gate) -> None:
    gate.mlflow.create_model("fraud")
    v1 = gate.version("fraud", 0.95)
    gate.request("fraud", v1, "champion")
    writes = len(gate.writes())
    swept = gate.pipeline.handle(event(Kind.REQUEST, "fraud", v1, "champion", Origin.SWEEP))
    assert "decided meanwhile" in swept
    assert len(gate.writes()) == writes and len(gate.recent("fraud")) == 1


# --- guarding protected aliases -------------------------------------------------------------


def test_an_alias_moved_outside_the_gate_to_a_failing_version_is_put_back(gate: Gate) -> None:
    gate.mlflow.create_model("fraud")
    good, bad = gate.version("fraud", 0.95), gate.version("fraud", 0.60)
    gate.request("fraud", good, "champion")
    gate.mlflow.set_alias("fraud", "champion", bad)  # someone with write access
    outcome = gate.pipeline.handle(event(Kind.ALIAS_CREATED, "fraud", bad, "champion"))
    assert outcome == f"fraud v{bad} rejected for champion"
    assert gate.registry.holder("fraud", CHAMPION) == good
    found = gate.tags_of("fraud", bad)
    assert found[tags.STATUS] == "rejected"
    assert "was set on version 2 outside the gate and fails the policy" in found[tags.REASON]
    assert "put back on version 1, the last the gate approved" in found[tags.REASON]


def test_an_alias_with_no_approved_version_to_return_to_is_removed(gate: Gate) -> None:
    gate.mlflow.create_model("fraud")
    bad = gate.version("fraud", 0.60)
    gate.mlflow.set_alias("fraud", "champion", bad)
    gate.pipeline.handle(event(Kind.ALIAS_CREATED, "fraud", bad, "champion"))
    assert gate.registry.holder("fraud", CHAMPION) is None
    assert "the alias was removed" in gate.tags_of("fraud", bad)[tags.REASON]


def test_an_alias_moved_outside_the_gate_to_a_passing_version_is_kept(gate: Gate) -> None:
    gate.mlflow.create_model("fraud")
    good = gate.version("fraud", 0.95)
    gate.mlflow.set_alias("fraud", "champion", good)
    outcome = gate.pipeline.handle(event(Kind.ALIAS_CREATED, "fraud", good, "champion"))
    assert outcome == f"fraud v{good} approved for champion"
    assert gate.registry.holder("fraud", CHAMPION) == good
    assert gate.approved("fraud", "champion") == good
    # The gate's own alias webhook afterwards finds it approved: no more writes, no record.
    writes = len(gate.writes())
    again = gate.pipeline.handle(event(Kind.ALIAS_CREATED, "fraud", good, "champion"))
    assert "which the gate approved" in again
    assert len(gate.writes()) == writes and len(gate.recent("fraud")) == 1


def test_unprotected_aliases_and_deleted_aliases_are_left_alone(gate: Gate) -> None:
    gate.mlflow.create_model("fraud")
    v1 = gate.version("fraud", 0.10)
    gate.mlflow.set_alias("fraud", "scratch", v1)
    assert "not governed" in gate.pipeline.handle(event(Kind.ALIAS_CREATED, "fraud", v1, "scratch"))
    assert "not held" in gate.pipeline.handle(event(Kind.ALIAS_DELETED, "fraud", None, "champion"))
    assert gate.recent("fraud") == []


# --- errors: never a decision on an error path -----------------------------------------------


def test_mlflow_down_raises_a_transient_error_and_writes_nothing(gate: Gate) -> None:
    gate.mlflow.create_model("fraud")
    v1 = gate.version("fraud", 0.95)
    gate.mlflow.set_version_tag("fraud", v1, tags.REQUEST, "champion")
    gate.mlflow.fail("GET", "/api/2.0/mlflow/runs/get", 503, "TEMPORARILY_UNAVAILABLE", times=3)
    with pytest.raises(MlflowUnavailable, match="MLflow answered 503"):
        gate.pipeline.handle(event(Kind.REQUEST, "fraud", v1, "champion"))
    assert gate.registry.holder("fraud", CHAMPION) is None
    assert tags.STATUS not in gate.tags_of("fraud", v1)
    assert gate.recent("fraud") == []


def test_a_failure_while_acting_leaves_the_decision_pending_and_its_retry_finishes_it(
    gate: Gate,
) -> None:
    gate.mlflow.create_model("fraud")
    v1 = gate.version("fraud", 0.95)
    gate.mlflow.set_version_tag("fraud", v1, tags.REQUEST, "champion")
    gate.mlflow.fail_connection("POST", "/api/2.0/mlflow/registered-models/alias", times=3)
    request = event(Kind.REQUEST, "fraud", v1, "champion")
    with pytest.raises(MlflowUnavailable, match="did not answer"):
        gate.pipeline.handle(request)
    assert tags.STATUS not in gate.tags_of("fraud", v1)
    (entry,) = gate.recent("fraud")  # decided and recorded before acting
    assert entry["outcome"] == "approved" and entry["action_state"] == "pending"
    # The retry (same event) finishes what was decided: it does not decide again.
    assert gate.pipeline.handle(request) == f"fraud v{v1} approved for champion"
    assert gate.registry.holder("fraud", CHAMPION) == v1
    (entry,) = gate.recent("fraud")
    assert entry["action_state"] == "done" and "now points to version 1" in entry["reason"]
    assert "already decided" in gate.pipeline.handle(request)  # a redelivery: nothing


def test_a_permanent_failure_while_acting_revokes_the_approval_and_a_replay_decides_again(
    gate: Gate,
) -> None:
    gate.mlflow.create_model("fraud")
    v1 = gate.version("fraud", 0.95)
    gate.mlflow.set_version_tag("fraud", v1, tags.REQUEST, "champion")
    gate.mlflow.fail(
        "POST", "/api/2.0/mlflow/registered-models/alias", 400, "INVALID_PARAMETER_VALUE"
    )
    request = event(Kind.REQUEST, "fraud", v1, "champion")
    with pytest.raises(PermanentError):
        gate.pipeline.handle(request)
    (entry,) = gate.recent("fraud")
    assert entry["action_state"] == "failed" and "dlq replay" in entry["reason"]
    assert gate.approved("fraud", "champion") is None  # never approved on an error path
    assert gate.pipeline.handle(request) == f"fraud v{v1} approved for champion"  # the replay
    assert gate.approved("fraud", "champion") == v1


def test_an_event_for_a_registry_this_worker_lacks_is_a_permanent_error(gate: Gate) -> None:
    foreign = GateEvent("e", RegistryKind.DATABRICKS, Origin.WEBHOOK, Kind.REQUEST, "m", "1",
                        "Production", 0.0, "test")  # fmt: skip
    with pytest.raises(PermanentError, match="GATE_DATABRICKS_HOST"):
        gate.pipeline.handle(foreign)


# --- the sweep ----------------------------------------------------------------------------


def test_the_sweep_finds_undecided_requests_and_unapproved_protected_aliases(gate: Gate) -> None:
    gate.mlflow.create_model("fraud")
    decided, owed = gate.version("fraud", 0.95), gate.version("fraud", 0.95)
    gate.request("fraud", decided, "champion")
    gate.mlflow.set_version_tag("fraud", owed, tags.REQUEST, "champion")  # webhook lost
    gate.mlflow.create_model("other")
    other = gate.version("other", 0.95)
    gate.mlflow.set_alias("other", "champion", other)  # set outside, webhook lost
    gate.mlflow.set_alias("other", "scratch", other)  # not protected
    found = {
        (e.kind, e.model, e.version, e.target)
        for e in gate.registry.sweep(gate.pipeline.policies)
        if gate.pipeline.owed(e)
    }
    assert found == {
        (Kind.REQUEST, "fraud", owed, "champion"),
        (Kind.ALIAS_CREATED, "other", other, "champion"),
    }
    assert all(e.origin is Origin.SWEEP for e in gate.registry.sweep(gate.pipeline.policies))


def test_health_reads_mlflows_plain_text_answer_and_a_failure_as_down(gate: Gate) -> None:
    assert gate.registry.healthy() is True  # MLflow answers /health with "OK", not JSON
    gate.mlflow.fail("GET", "/health", 503, "TEMPORARILY_UNAVAILABLE", times=3)
    assert gate.registry.healthy() is False
