"""worker.tasks when a message goes back to the queue (Reject with requeue) and when a retry
cannot be published: the start counted for a requeue is taken back, so that Redis hiccups never
end an event as WorkerLost; a retry that could not be published is a transient dead letter,
which the redrive replays."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import fakeredis
import pytest
import redis
from celery.exceptions import Reject

from shared import keys
from shared.deadletter import DeadLetterStore
from shared.ledger import Ledger
from shared.policy import PolicySet
from shared.settings import Settings
from worker import attempts, runtime, tasks
from worker.pipeline import Pipeline
from worker.registries import Registries

TASK_ID = "task-1"


class FreeLock:
    """A model lock that is always free (the real one is tested against a real Redis)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    def acquire(self, wait: float) -> bool:
        return True

    def keep(self) -> None:
        pass

    def release(self) -> None:
        pass


def foreign_event(event_id: str = "evt-1") -> dict[str, Any]:
    """A well-formed event for a registry the worker does not have: a PermanentError."""
    return {
        "event_id": event_id, "registry": "databricks", "origin": "webhook", "kind": "request",
        "model": "main.ml.fraud", "version": "1", "target": "champion",
        "received_at": 1_700_000_000.0, "webhook_event": "model_version_tag.set",
    }  # fmt: skip


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch, sqlite_ledger: Ledger) -> Iterator[fakeredis.FakeRedis]:
    """A worker runtime on fakeredis with no registry at all (GATE_MAX_DELIVERIES 5); no pause
    before a requeue."""
    client = fakeredis.FakeRedis()
    policies = PolicySet(())
    registries = Registries({})
    rt = runtime.Runtime(Settings(max_deliveries=5), policies)
    rt._clients = runtime.Clients(
        pid=os.getpid(),
        redis=client,
        registries=registries,
        ledger=sqlite_ledger,
        pipeline=Pipeline(registries, policies, sqlite_ledger),
        deadletters=DeadLetterStore(client),
    )
    monkeypatch.setattr(runtime, "_current", rt)
    monkeypatch.setattr(attempts, "REQUEUE_PAUSE_SECONDS", 0.0)
    monkeypatch.setattr(tasks, "ModelLock", FreeLock)  # fakeredis has no Lua here
    yield client
    client.close()


def deliver(payload: dict[str, Any]) -> str:
    """One delivery of the task message TASK_ID, as a worker runs it."""
    tasks.reconcile.push_request(id=TASK_ID, retries=0)
    try:
        return str(tasks.reconcile.run(payload))
    finally:
        tasks.reconcile.pop_request()


def test_a_requeued_message_takes_its_start_back(client: fakeredis.FakeRedis) -> None:
    # Given a dead-letter store Redis refuses to write to (WRONGTYPE)
    client.set(keys.DEADLETTER, "not a hash")
    # When an event that must be dead-lettered is delivered
    with pytest.raises(Reject) as raised:
        deliver(foreign_event())
    # Then its message goes back to the queue, and the start is not counted as a worker death
    assert raised.value.requeue is True
    assert int(client.get(keys.starts(TASK_ID, 0)) or 0) == 0


def test_many_requeues_never_make_an_event_a_worker_lost(client: fakeredis.FakeRedis) -> None:
    # Given an event requeued more often than GATE_MAX_DELIVERIES, while Redis refuses its
    # dead letter
    client.set(keys.DEADLETTER, "not a hash")
    for _ in range(8):
        with pytest.raises(Reject):
            deliver(foreign_event())
    # When the store can be written again
    client.delete(keys.DEADLETTER)
    outcome = deliver(foreign_event())
    # Then the event is dead-lettered for its own error, not as a poison message
    assert outcome.startswith("dead-lettered after 1 attempt(s)")
    entry = DeadLetterStore(client).get("evt-1")
    assert entry is not None and entry.error_class == "PermanentError"


def test_a_worker_death_still_counts(client: fakeredis.FakeRedis) -> None:
    # Given a message whose worker died five times (five starts counted, none taken back)
    client.set(keys.starts(TASK_ID, 0), 5)
    # When it is delivered once more
    outcome = deliver(foreign_event())
    # Then it is a poison message
    assert "worker died 5 times" in outcome
    entry = DeadLetterStore(client).get("evt-1")
    assert entry is not None and entry.error_class == "WorkerLost"


def test_a_retry_that_could_not_be_published_is_a_transient_dead_letter(
    client: fakeredis.FakeRedis,
) -> None:
    # Given the Reject that Task.retry raises when Redis refuses to publish the retry
    refused = redis.ResponseError("NOPERM this user has no permissions to run the 'lpush' command")
    event = {**foreign_event("evt-2"), "registry": "mlflow"}
    # When Celery sends task_failure for it
    tasks._dead_letter_on_failure(
        sender=tasks.reconcile, exception=Reject(refused, requeue=False), args=[event]
    )
    # Then the event is dead-lettered as RetryNotPublished, a transient error the redrive replays
    entry = DeadLetterStore(client).get("evt-2")
    assert entry is not None
    assert entry.error_class == "RetryNotPublished"
    assert "its retry could not be published: ResponseError: NOPERM" in entry.error
    assert entry.transient is True
    assert entry.event == event
