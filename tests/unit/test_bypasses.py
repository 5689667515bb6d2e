"""Someone with write access to the registry tries to get a failing version past the gate: forged
approval tags, direct alias moves compared with themselves, direct stage transitions, an older
decision retried after a newer one, a decision that outlives its lock. Against the in-memory
MLflow and a SQLite ledger; tests/integration/test_bypasses.py runs them on real processes."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import redis
from harness import start_redis

from shared import tags
from shared.errors import MlflowUnavailable
from shared.events import GateEvent, Kind, Origin, RegistryKind
from shared.ledger import Ledger
from shared.policy import Target, parse_policies
from worker.lock import LockLost, ModelLock
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
  - name: no-regression
    targets: [champion, Production]
    rules:
      - compare_to: champion
        metric: validation_accuracy
        min_delta: 0.0
"""
CHAMPION = Target("champion", is_stage=False)
PRODUCTION = Target("Production", is_stage=True)
MLFLOW = RegistryKind.MLFLOW


@dataclass
class World:
    mlflow: InMemoryMlflow
    registry: InMemoryRegistry
    pipeline: Pipeline
    ledger: Ledger

    def version(self, accuracy: float) -> str:
        run_id = self.mlflow.create_run(metrics={"validation_accuracy": accuracy})
        return self.mlflow.create_version("fraud", run_id=run_id, description="described")

    def request(self, version: str, target: str, keep: Callable[[], None] | None = None) -> str:
        self.mlflow.set_version_tag("fraud", version, tags.REQUEST, target)
        return self.handle(event(Kind.REQUEST, version, target), keep)

    def handle(self, evt: GateEvent, keep: Callable[[], None] | None = None) -> str:
        return self.pipeline.handle(evt) if keep is None else self.pipeline.handle(evt, keep)

    def sweep(self) -> list[str]:
        """One sweep: each owed event handled, as the sweep task and a worker would."""
        return [
            self.handle(e)
            for e in self.registry.sweep(self.pipeline.policies)
            if self.pipeline.owed(e)
        ]

    def stage(self, version: str) -> str | None:
        return self.registry.version("fraud", version).stage


def event(kind: Kind, version: str | None, target: str) -> GateEvent:
    return GateEvent(
        event_id=f"evt-{uuid.uuid4().hex}",
        registry=MLFLOW,
        origin=Origin.WEBHOOK,
        kind=kind,
        model="fraud",
        version=version,
        target=target,
        received_at=0.0,
        webhook_event="test",
    )


@pytest.fixture
def world(sqlite_ledger: Ledger) -> World:
    mlflow = InMemoryMlflow()
    registry = InMemoryRegistry(mlflow)
    pipeline = Pipeline(Registries({MLFLOW: registry}), parse_policies(POLICY), sqlite_ledger)
    mlflow.create_model("fraud")
    return World(mlflow, registry, pipeline, sqlite_ledger)


def test_a_forged_approval_tag_changes_nothing(world: World) -> None:
    good, bad = world.version(0.95), world.version(0.60)
    world.request(good, "champion")
    # The gate's tag, forged to name the failing version, then the alias moved (webhook lost).
    world.registry.api.set_model_tag("fraud", tags.approved_pointer("champion"), bad)
    world.mlflow.set_alias("fraud", "champion", bad)
    world.sweep()
    assert world.registry.holder("fraud", CHAMPION) == good
    assert world.ledger.approved_version(MLFLOW, "fraud", "champion") == good


def test_a_version_set_directly_is_compared_with_the_approved_one_not_itself(world: World) -> None:
    champion, worse = world.version(0.95), world.version(0.92)
    world.request(champion, "champion")
    # Through the gate, the worse version is rejected...
    world.request(worse, "champion")
    assert world.registry.holder("fraud", CHAMPION) == champion
    # ...and set directly, it is undone the same way (not compared with itself).
    world.mlflow.set_alias("fraud", "champion", worse)
    assert world.handle(event(Kind.ALIAS_CREATED, worse, "champion")) == (
        f"fraud v{worse} rejected for champion"
    )
    assert world.registry.holder("fraud", CHAMPION) == champion
    reason = world.registry.version("fraud", worse).tags[tags.REASON]
    assert f"below current champion (version {champion}" in reason
    assert "put back on version" in reason


def test_a_failing_version_moved_straight_to_a_stage_is_moved_out_by_the_sweep(
    world: World,
) -> None:
    approved, bad = world.version(0.95), world.version(0.60)
    world.request(approved, "Production")
    assert world.stage(approved) == "Production"
    # Straight to Production, archiving what was there (MLflow sends no webhook for it).
    world.registry.api.transition_stage("fraud", bad, "Production", True)
    assert world.stage(approved) == "Archived"
    world.sweep()
    assert world.stage(bad) == "None"
    assert world.stage(approved) == "Production"  # the approved version put back
    assert world.sweep() == []  # nothing owed any more


def test_a_passing_version_moved_straight_to_a_stage_is_kept_and_approved(world: World) -> None:
    good = world.version(0.95)
    world.registry.api.transition_stage("fraud", good, "Production", False)
    world.sweep()
    assert world.stage(good) == "Production"
    assert world.ledger.standing(MLFLOW, "fraud", "Production") == {good}
    assert world.sweep() == []


def test_a_retried_older_decision_never_undoes_a_newer_one(world: World) -> None:
    v1, v2, v3 = world.version(0.91), world.version(0.95), world.version(0.97)
    world.request(v1, "champion")
    # v2 is approved, moved, but recording it on the version fails: its event will be retried.
    world.mlflow.fail_connection("POST", "/api/2.0/mlflow/model-versions/set-tag", times=3)
    world.mlflow.set_version_tag("fraud", v2, tags.REQUEST, "champion")
    older = event(Kind.REQUEST, v2, "champion")
    with pytest.raises(MlflowUnavailable):
        world.handle(older)
    assert world.registry.holder("fraud", CHAMPION) == v2
    # Meanwhile v3 is approved.
    world.request(v3, "champion")
    assert world.registry.holder("fraud", CHAMPION) == v3
    # v2's retry finds a newer decision on champion: it stops there.
    assert "superseded by decision" in world.handle(older)
    assert world.registry.holder("fraud", CHAMPION) == v3
    # v2's tags never got its decision, but the sweep does not take its request again.
    assert tags.STATUS not in world.registry.version("fraud", v2).tags
    assert world.sweep() == []
    assert world.ledger.approved_version(MLFLOW, "fraud", "champion") == v3


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[redis.Redis]:
    """A real redis-server: the lock is Lua scripts, which only a real one runs."""
    process, url = start_redis(tmp_path_factory.mktemp("lock-redis"))
    try:
        yield redis.Redis.from_url(url)
    finally:
        process.stop()


def test_a_decision_whose_lock_expired_stops_before_its_next_write(
    world: World, client: redis.Redis
) -> None:
    lock = ModelLock(client, "fraud", seconds=30)
    assert lock.acquire(wait=1)
    good = world.version(0.95)
    writes_before = len([c for c in world.mlflow.calls if c[0] != "GET"])

    def expired_then_taken() -> None:
        client.delete("gate:lock:model:fraud")  # it expired...
        client.set("gate:lock:model:fraud", "another-decision")  # ...and another took it
        lock.keep()

    with pytest.raises(LockLost, match="GATE_MODEL_LOCK_SECONDS"):
        world.request(good, "champion", keep=expired_then_taken)
    client.delete("gate:lock:model:fraud")
    writes = [c for c in world.mlflow.calls if c[0] != "GET"]
    assert len(writes) == writes_before  # the gate wrote nothing
    assert world.registry.holder("fraud", CHAMPION) is None
    assert world.ledger.decisions(model_glob="fraud") == []


def test_the_lock_is_extended_at_each_write(world: World, client: redis.Redis) -> None:
    lock = ModelLock(client, "fraud", seconds=30)
    assert lock.acquire(wait=1)
    ttls: list[int] = []

    def keep() -> None:
        client.pexpire("gate:lock:model:fraud", 5)  # nearly expired...
        lock.keep()  # ...extended to its full time again
        ttls.append(int(client.pttl("gate:lock:model:fraud")))

    world.request(world.version(0.95), "champion", keep=keep)
    assert len(ttls) >= 3 and min(ttls) > 20_000
