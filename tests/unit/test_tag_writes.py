"""The gate writes only the governance tags whose value changes: a decision asked again writes
what differs (its time, here), not the six tags again, nor the alias already on the version; one
that changes its outcome writes them, status last. What is skipped rests on the decision's own
reads (no extra call), never on an earlier event's: another worker process, or a person, may
have written since."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pytest

from shared import tags
from shared.events import GateEvent, Kind, Origin, RegistryKind
from shared.ledger import Ledger
from shared.policy import parse_policies
from worker.pipeline import Pipeline
from worker.registries import Registries
from worker.registries.memory import InMemoryMlflow, InMemoryRegistry

APPROVED_CHAMPION = tags.approved_pointer("champion")

POLICY = """
policies:
  - name: production-quality
    targets: [champion]
    rules:
      - metric: validation_accuracy
        min: 0.90
      - compare_to: champion
        metric: validation_accuracy
"""


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def world(sqlite_ledger: Ledger) -> Iterator[tuple[InMemoryMlflow, Pipeline, Clock]]:
    mlflow = InMemoryMlflow()
    clock = Clock()
    registries = Registries({RegistryKind.MLFLOW: InMemoryRegistry(mlflow)})
    yield mlflow, Pipeline(registries, parse_policies(POLICY), sqlite_ledger, clock), clock


def request(mlflow: InMemoryMlflow, pipeline: Pipeline, model: str, version: str) -> str:
    mlflow.set_version_tag(model, version, tags.REQUEST, "champion")
    mlflow.calls.clear()
    event = GateEvent(
        f"evt-{uuid.uuid4().hex}", RegistryKind.MLFLOW, Origin.WEBHOOK, Kind.REQUEST,
        model, version, "champion", 0.0, "test",
    )  # fmt: skip
    return pipeline.handle(event)


def test_a_request_asked_again_writes_only_what_changed(
    world: tuple[InMemoryMlflow, Pipeline, Clock],
) -> None:
    mlflow, pipeline, clock = world
    mlflow.create_model("fraud")
    v1 = mlflow.create_version(
        "fraud", run_id=mlflow.create_run(metrics={"validation_accuracy": 0.95})
    )
    # Given a first decision: every governance tag written, status last, and the model's copy
    request(mlflow, pipeline, "fraud", v1)
    assert len(mlflow.calls_to("model-versions/set-tag")) == 6
    assert len(mlflow.calls_to("registered-models/set-tag")) == 1
    reads = len([c for c in mlflow.calls if c[0] == "GET"])
    # When the same version is requested again for the same target, a minute later
    mlflow.tag_keys_written.clear()
    clock.now += timedelta(minutes=1)
    outcome = request(mlflow, pipeline, "fraud", v1)
    # Then it is decided again, but only what changed is written: its time, and its checks (the
    # comparison is now with itself, the holder); not the target, policy or status; and the
    # alias, which the version's own read shows on it, is not set again (no webhook back). The
    # model's copy is written: this decision did not read it (an earlier one's read may be stale)
    assert outcome.endswith("approved for champion")
    assert mlflow.tag_keys_written == [tags.CHECKS, tags.DECIDED_AT]
    assert mlflow.calls_to("registered-models/alias") == []
    assert len(mlflow.calls_to("registered-models/set-tag")) == 1
    # And no read was added to find out
    assert len([c for c in mlflow.calls if c[0] == "GET"]) <= reads
    found = (
        mlflow.session()
        .get(
            "http://in-memory-mlflow/api/2.0/mlflow/model-versions/get",
            params={"name": "fraud", "version": v1},
        )
        .json()["model_version"]
    )
    shown = {t["key"]: t["value"] for t in found["tags"]}
    assert shown[tags.DECIDED_AT] == "2026-11-23T12:01:00Z" and shown[tags.STATUS] == "approved"


def test_a_new_version_gets_every_tag_status_last(
    world: tuple[InMemoryMlflow, Pipeline, Clock],
) -> None:
    mlflow, pipeline, clock = world
    mlflow.create_model("fraud")
    run = mlflow.create_run(metrics={"validation_accuracy": 0.80})
    v1 = mlflow.create_version("fraud", run_id=run)
    request(mlflow, pipeline, "fraud", v1)  # rejected
    mlflow.tag_keys_written.clear()
    # When a better version is requested
    run2 = mlflow.create_run(metrics={"validation_accuracy": 0.99})
    v2 = mlflow.create_version("fraud", run_id=run2)
    clock.now += timedelta(minutes=1)
    request(mlflow, pipeline, "fraud", v2)
    # Then a new version gets all six, status last
    assert mlflow.tag_keys_written[-1] == tags.STATUS
    assert len(mlflow.tag_keys_written) == 6


def test_the_models_copy_follows_the_approval_across_worker_processes(
    world: tuple[InMemoryMlflow, Pipeline, Clock], sqlite_ledger: Ledger
) -> None:
    mlflow, first, clock = world
    # Given two worker processes (a registry each) over one MLflow and one ledger
    policies = parse_policies(POLICY)
    second = Pipeline(
        Registries({RegistryKind.MLFLOW: InMemoryRegistry(mlflow)}), policies, sqlite_ledger, clock
    )
    mlflow.create_model("fraud")
    v1, v2 = (
        mlflow.create_version(
            "fraud", run_id=mlflow.create_run(metrics={"validation_accuracy": 0.95})
        )
        for _ in range(2)
    )
    request(mlflow, first, "fraud", v1)  # the first process approves v1
    request(mlflow, second, "fraud", v2)  # the second, v2
    assert mlflow.models["fraud"].tags[APPROVED_CHAMPION] == v2
    # When the first process approves v1 again
    clock.now += timedelta(minutes=1)
    assert request(mlflow, first, "fraud", v1).endswith("approved for champion")
    # Then the model's copy shows v1, as the alias and the ledger do: what the first process
    # wrote before is not taken for what the model shows now
    assert mlflow.models["fraud"].aliases["champion"] == v1
    assert mlflow.models["fraud"].tags[APPROVED_CHAMPION] == v1


def test_an_alias_moved_since_an_earlier_decision_is_set_again(
    world: tuple[InMemoryMlflow, Pipeline, Clock],
) -> None:
    mlflow, pipeline, clock = world
    mlflow.create_model("fraud")
    v1, v2 = (
        mlflow.create_version(
            "fraud", run_id=mlflow.create_run(metrics={"validation_accuracy": 0.95})
        )
        for _ in range(2)
    )
    request(mlflow, pipeline, "fraud", v1)
    # Given the alias moved by someone after the gate set it (its webhook not handled yet)
    mlflow.set_alias("fraud", "champion", v2)
    # When v1 is requested again
    clock.now += timedelta(minutes=1)
    assert request(mlflow, pipeline, "fraud", v1).endswith("approved for champion")
    # Then the alias is set on it again: the gate's own earlier set is not taken for the state
    assert len(mlflow.calls_to("registered-models/alias")) == 1
    assert mlflow.models["fraud"].aliases["champion"] == v1
