"""Reading a version's run, through the pipeline on the in-memory MLflow.

One rule: a run that does not exist (404) is a fact, and a decision is made on it (a check fails,
saying so); a run, or a version, the gate may not read (401, 403) is the gate's configuration at
fault, so no decision is made: MlflowForbidden (a PermanentError, which the task dead-letters)
says which credentials to fix and how to replay. Whoever's run it is: the candidate's, or the
holder's of a target a compare_to rule names.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from harness import recent

from shared import tags
from shared.errors import MlflowForbidden, PermanentError
from shared.events import GateEvent, Kind, Origin, RegistryKind
from shared.ledger import Ledger
from shared.policy import Target, parse_policies
from worker.pipeline import Pipeline
from worker.registries import Registries
from worker.registries.memory import InMemoryMlflow, InMemoryRegistry

POLICY = """
policies:
  - name: beat-production
    targets: [Production]
    rules:
      - metric: validation_accuracy
        min: 0.9
      - compare_to: Production
        metric: validation_accuracy
"""
RUNS_GET = "/api/2.0/mlflow/runs/get"
VERSION_GET = "/api/2.0/mlflow/model-versions/get"
PRODUCTION = Target("Production", is_stage=True)
MODEL = "fraud"


@dataclass
class Gate:
    mlflow: InMemoryMlflow
    registry: InMemoryRegistry
    pipeline: Pipeline
    log: Ledger

    def version(self, accuracy: float) -> tuple[str, str]:
        run = self.mlflow.create_run(metrics={"validation_accuracy": accuracy})
        return self.mlflow.create_version(MODEL, run_id=run), run

    def request(self, version: str) -> str:
        self.mlflow.set_version_tag(MODEL, version, tags.REQUEST, "Production")
        event = GateEvent(f"evt-{version}", RegistryKind.MLFLOW, Origin.WEBHOOK, Kind.REQUEST,
                          MODEL, version, "Production", 0.0, "test")  # fmt: skip
        return self.pipeline.handle(event)

    def holder(self, accuracy: float = 0.95) -> tuple[str, str]:
        version, run = self.version(accuracy)
        assert "approved" in self.request(version)
        return version, run

    def tags_of(self, version: str) -> dict[str, str]:
        return dict(self.registry.version(MODEL, version).tags)

    def nothing_decided_for(self, version: str) -> None:
        assert tags.STATUS not in self.tags_of(version)
        assert all(e["version"] != version for e in recent(self.log, MODEL))


@pytest.fixture
def gate(sqlite_ledger: Ledger) -> Iterator[Gate]:
    mlflow = InMemoryMlflow()
    registry = InMemoryRegistry(mlflow)
    log = sqlite_ledger
    pipeline = Pipeline(Registries({RegistryKind.MLFLOW: registry}), parse_policies(POLICY), log)
    mlflow.create_model(MODEL)
    yield Gate(mlflow, registry, pipeline, log)


# --- 401 and 403: the gate's credentials, dead-lettered -----------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "says"),
    [
        (401, "UNAUTHENTICATED", "the gate's credentials were refused"),
        (403, "PERMISSION_DENIED", "the gate's account lacks a permission"),
    ],
)
def test_a_candidates_run_the_gate_may_not_read_is_not_decided_but_dead_lettered(
    gate: Gate, status: int, code: str, says: str
) -> None:
    # Given MLflow refuses the gate the candidate's run
    version, run = gate.version(0.97)
    gate.mlflow.fail("GET", RUNS_GET, status, code)  # once: fixed before the replay
    # When its request is handled
    with pytest.raises(MlflowForbidden) as caught:
        gate.request(version)
    # Then it is a permanent error (the task dead-letters it) saying what to fix and how to
    # replay, and nothing is decided: no tag, no audit entry, nothing moved
    error = caught.value
    assert isinstance(error, PermanentError) and error.status == status
    text = str(error)
    assert text.startswith(f"cannot read run {run} of version {version} of model 'fraud': ")
    assert f"MLflow answered {status} {code} to GET {RUNS_GET}" in text
    assert says in text
    assert "MLFLOW_TRACKING_TOKEN or MLFLOW_TRACKING_USERNAME/PASSWORD" in text
    assert "mlflow-gate dlq replay <id>" in text
    gate.nothing_decided_for(version)
    assert gate.registry.holder(MODEL, PRODUCTION) is None
    # When the credentials are fixed and the event replayed, Then it is decided
    assert "approved" in gate.request(version)


@pytest.mark.parametrize("status", [401, 403])
def test_a_holders_run_the_gate_may_not_read_is_dead_lettered_too(gate: Gate, status: int) -> None:
    # Given Production held, and MLflow refusing the gate the holder's run
    holder, holder_run = gate.holder()
    candidate, _ = gate.version(0.97)
    gate.mlflow.forbid_run(holder_run, status)
    # When the candidate's request is handled
    with pytest.raises(MlflowForbidden, match=f"cannot read run {holder_run} of version {holder}"):
        gate.request(candidate)
    # Then nothing is decided for it, and the holder stays
    gate.nothing_decided_for(candidate)
    assert gate.registry.holder(MODEL, PRODUCTION) == holder


@pytest.mark.parametrize("status", [401, 403])
def test_a_version_the_gate_may_not_read_is_dead_lettered(gate: Gate, status: int) -> None:
    version, _ = gate.version(0.97)
    gate.mlflow.set_version_tag(MODEL, version, tags.REQUEST, "Production")
    gate.mlflow.fail("GET", VERSION_GET, status, "PERMISSION_DENIED")
    with pytest.raises(MlflowForbidden, match="mlflow-gate dlq replay"):
        gate.request(version)
    gate.nothing_decided_for(version)


# --- 404: a fact, decided on --------------------------------------------------------------------


def test_a_candidate_whose_run_is_gone_is_rejected_saying_so(gate: Gate) -> None:
    version, run = gate.version(0.97)
    del gate.mlflow.runs[run]  # deleted and garbage-collected: MLflow answers 404
    gate.request(version)
    found = gate.tags_of(version)
    assert found[tags.STATUS] == "rejected"
    assert (
        f"run {run} of version {version}: the run does not exist (deleted?)" in (found[tags.REASON])
    )


def test_a_holder_whose_run_is_gone_fails_the_comparison_closed(gate: Gate) -> None:
    holder, holder_run = gate.holder()
    del gate.mlflow.runs[holder_run]
    better, _ = gate.version(0.99)
    gate.request(better)
    found = gate.tags_of(better)
    assert found[tags.STATUS] == "rejected"
    assert (
        f"cannot compare with current Production (version {holder}): run {holder_run} of "
        f"version {holder}: the run does not exist (deleted?)"
    ) in found[tags.REASON]
    assert gate.registry.holder(MODEL, PRODUCTION) == holder


def test_a_holder_whose_metric_is_nan_fails_the_comparison_closed(gate: Gate) -> None:
    _, holder_run = gate.holder()
    gate.mlflow.runs[holder_run].metrics["validation_accuracy"] = float("nan")
    better, _ = gate.version(0.99)
    gate.request(better)
    found = gate.tags_of(better)
    assert found[tags.STATUS] == "rejected"
    assert (
        f"validation_accuracy is nan in run {holder_run}, not a usable number"
        in (found[tags.REASON])
    )
