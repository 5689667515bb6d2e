"""The webhooks the gate's own writes cause. An alias set on the version the gate approved for it
(the gate's approval, or its putting the alias back, coming back from MLflow) is recognised from
the event and the ledger, without an MLflow call; a decision left unfinished on the target is
still finished first, and a move by someone else is still guarded, on the state its own event
finds, whatever order the events come in."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from shared import tags
from shared.errors import MlflowUnavailable
from shared.events import GateEvent, Kind, Origin, RegistryKind
from shared.ledger import Ledger
from shared.policy import Target, parse_policies
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
"""
CHAMPION = Target("champion", is_stage=False)


def event(kind: Kind, version: str | None) -> GateEvent:
    return GateEvent(
        f"evt-{uuid.uuid4().hex}", RegistryKind.MLFLOW, Origin.WEBHOOK, kind, "fraud", version,
        "champion", 0.0, "test",
    )  # fmt: skip


@pytest.fixture
def world(sqlite_ledger: Ledger) -> Iterator[tuple[InMemoryMlflow, InMemoryRegistry, Pipeline]]:
    mlflow = InMemoryMlflow()
    registry = InMemoryRegistry(mlflow)
    registries = Registries({RegistryKind.MLFLOW: registry})
    mlflow.create_model("fraud")
    yield mlflow, registry, Pipeline(registries, parse_policies(POLICY), sqlite_ledger)


def version(mlflow: InMemoryMlflow, accuracy: float) -> str:
    run = mlflow.create_run(metrics={"validation_accuracy": accuracy})
    return mlflow.create_version("fraud", run_id=run)


def approve(mlflow: InMemoryMlflow, pipeline: Pipeline, v: str) -> None:
    mlflow.set_version_tag("fraud", v, tags.REQUEST, "champion")
    assert pipeline.handle(event(Kind.REQUEST, v)).endswith("approved for champion")


def test_the_gates_own_alias_webhook_costs_no_mlflow_call(
    world: tuple[InMemoryMlflow, InMemoryRegistry, Pipeline], sqlite_ledger: Ledger
) -> None:
    mlflow, _, pipeline = world
    v1 = version(mlflow, 0.95)
    approve(mlflow, pipeline, v1)
    decisions = len(sqlite_ledger.decisions(model_glob="fraud"))
    mlflow.calls.clear()
    # When the alias set of that approval comes back as a webhook
    outcome = pipeline.handle(event(Kind.ALIAS_CREATED, v1))
    # Then it is known from the event and the ledger: nothing to guard, no call, no record
    assert "which the gate approved: nothing to guard" in outcome
    assert mlflow.calls == []
    assert len(sqlite_ledger.decisions(model_glob="fraud")) == decisions


def test_a_decision_left_unfinished_is_finished_by_its_alias_webhook(
    world: tuple[InMemoryMlflow, InMemoryRegistry, Pipeline],
) -> None:
    mlflow, registry, pipeline = world
    v1 = version(mlflow, 0.95)
    mlflow.set_version_tag("fraud", v1, tags.REQUEST, "champion")
    # Given an approval that set the alias, then failed writing its tags (its worker gave up)
    mlflow.fail_connection("POST", "/api/2.0/mlflow/model-versions/set-tag", times=3)
    with pytest.raises(MlflowUnavailable):
        pipeline.handle(event(Kind.REQUEST, v1))
    assert registry.holder("fraud", CHAMPION) == v1
    assert tags.STATUS not in registry.version("fraud", v1).tags
    # When the alias webhook of that approval is handled
    outcome = pipeline.handle(event(Kind.ALIAS_CREATED, v1))
    # Then the decision is finished first (its tags written, status last), as before
    assert outcome == f"fraud v{v1} approved for champion"
    assert registry.version("fraud", v1).tags[tags.STATUS] == "approved"


@pytest.mark.parametrize("order", ["the gate's first", "the move's first"])
def test_a_move_by_someone_else_is_guarded_whatever_the_order_of_the_webhooks(
    world: tuple[InMemoryMlflow, InMemoryRegistry, Pipeline], order: str
) -> None:
    mlflow, registry, pipeline = world
    good, bad = version(mlflow, 0.95), version(mlflow, 0.50)
    approve(mlflow, pipeline, good)
    # Given someone moved the alias to a failing version right after the gate set it
    mlflow.set_alias("fraud", "champion", bad)
    own, move = event(Kind.ALIAS_CREATED, good), event(Kind.ALIAS_CREATED, bad)
    # When both webhooks are handled, in either order
    for e in [own, move] if order == "the gate's first" else [move, own]:
        pipeline.handle(e)
    # Then the move is undone on the state its own event found: the alias is back on `good`
    assert registry.holder("fraud", CHAMPION) == good
    assert registry.version("fraud", bad).tags[tags.STATUS] == "rejected"


def test_an_alias_set_on_a_version_not_approved_is_still_read_and_guarded(
    world: tuple[InMemoryMlflow, InMemoryRegistry, Pipeline],
) -> None:
    mlflow, registry, pipeline = world
    bad = version(mlflow, 0.50)
    mlflow.set_alias("fraud", "champion", bad)
    mlflow.calls.clear()
    assert pipeline.handle(event(Kind.ALIAS_CREATED, bad)) == f"fraud v{bad} rejected for champion"
    assert mlflow.calls_to("registered-models/get")  # the holder was read
    assert registry.holder("fraud", CHAMPION) is None
