"""worker.redrive: replay transient dead letters only for services that answer again."""

from __future__ import annotations

from typing import Any

import fakeredis

from shared.deadletter import DeadLetterStore
from shared.errors import MlflowNotFound, MlflowUnavailable
from worker.redrive import redrive


def _event(event_id: str, registry: str) -> dict[str, Any]:
    return {"event_id": event_id, "registry": registry, "model": "m", "version": "1"}


def _store() -> DeadLetterStore:
    store = DeadLetterStore(fakeredis.FakeRedis())
    store.put(_event("a", "mlflow"), MlflowUnavailable("down"), 3)
    store.put(_event("b", "mlflow"), MlflowUnavailable("down"), 3)
    store.put(_event("c", "databricks"), MlflowUnavailable("down"), 3)
    store.put(_event("d", "mlflow"), MlflowNotFound("gone", 404), 1)  # permanent: never redriven
    return store


def test_only_the_sources_whose_service_answers_are_replayed() -> None:
    store, published = _store(), []
    result = redrive(store, {"mlflow": lambda: True, "databricks": lambda: False},
                     published.append, batch=10)  # fmt: skip
    assert [e["event_id"] for e in published] == ["a", "b"]
    assert sorted(e.id for e in store.all()) == ["c", "d"]
    assert "replayed 2, failed 0" in result and "databricks (1 waiting)" in result


def test_a_batch_bounds_each_round_and_the_rest_waits() -> None:
    store, published = _store(), []
    result = redrive(store, {"mlflow": lambda: True, "databricks": lambda: True},
                     published.append, batch=2)  # fmt: skip
    assert len(published) == 2
    assert "1 left for the next round" in result
    assert store.count() == 2


def test_nothing_is_replayed_while_every_service_is_down() -> None:
    store, published = _store(), []
    result = redrive(store, {"mlflow": lambda: False}, published.append, batch=10)
    assert published == []
    assert store.count() == 4
    assert "nothing replayed" in result and "mlflow (2 waiting)" in result
