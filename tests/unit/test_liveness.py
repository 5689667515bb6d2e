"""worker.liveness against a real redis-server (the rescue is a Lua script): a dead worker's
unacknowledged messages go back to the queue once, a live worker's never, and a dead worker's
model locks are freed. Real worker processes killed with SIGKILL are in
tests/integration/test_worker_death.py."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from cli.devstack import ManagedProcess, start_redis
from shared import keys
from worker.liveness import Liveness
from worker.lock import ModelLock

DEAD_AFTER = 30.0  # a beat every 5 s


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    process: ManagedProcess
    process, url = start_redis(Path(tmp_path_factory.mktemp("redis")))
    try:
        yield url
    finally:
        process.stop()


@pytest.fixture
def client(redis_server: str) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(redis_server)
    connection.flushall()
    yield connection
    connection.close()


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def deliver(client: redis.Redis, tag: str, event_id: str, at: float) -> None:
    """A message of the gate's queue delivered to some worker at `at`, as kombu keeps it."""
    body = base64.b64encode(json.dumps([[{"event_id": event_id}], {}, {}]).encode()).decode()
    message = {
        "body": body,
        "headers": {"task": keys.TASK_RECONCILE, "id": f"task-{tag}"},
        "properties": {
            "delivery_tag": tag,
            "delivery_info": {"exchange": "", "routing_key": keys.QUEUE},
        },
    }
    client.hset(keys.UNACKED, tag, json.dumps([message, "", keys.QUEUE]))
    client.zadd(keys.UNACKED_INDEX, {tag: at})


def worker(
    client: redis.Redis, name: str, held: set[str], clock: Clock, dead_after: float = DEAD_AFTER
) -> Liveness:
    """A worker that has been beating for GATE_WORKER_DEAD_AFTER_SECONDS already (and may judge
    the others): its first beat is taken that long before `clock.now`."""
    liveness = Liveness(client, lambda: held, dead_after, worker_id=name, clock=clock)
    now = clock.now
    clock.now = now - dead_after
    liveness.beat()
    clock.now = now
    return liveness


def queued(client: redis.Redis) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in client.lrange(keys.QUEUE, 0, -1)]  # type: ignore[union-attr]


def expire(client: redis.Redis, name: str) -> None:
    """As if `name` stopped beating GATE_WORKER_DEAD_AFTER_SECONDS ago."""
    client.delete(keys.worker_heartbeat(name))


def test_a_dead_worker_s_messages_go_back_to_the_queue_once(client: redis.Redis) -> None:
    # Given worker A holding two messages, and worker B
    clock = Clock(1000.0)
    deliver(client, "t1", "evt-1", at=990.0)
    deliver(client, "t2", "evt-2", at=991.0)
    a = worker(client, "A", {"t1", "t2"}, clock)
    b = worker(client, "B", set(), clock)
    a.beat()
    b.beat()
    # When A dies (its heartbeat expires) and B beats and rescues
    expire(client, "A")
    clock.now = 1040.0
    b.beat()
    rescued = b.rescue()
    # Then both messages are back at the head of the queue, marked redelivered, and no longer
    # unacknowledged; A is no longer a worker
    assert sorted(rescued.requeued) == ["evt-1", "evt-2"] and rescued.dead_workers == ["A"]
    messages = queued(client)
    assert sorted(m["properties"]["delivery_tag"] for m in messages) == ["t1", "t2"]
    assert all(m["headers"]["redelivered"] is True for m in messages)
    assert all(m["properties"]["delivery_info"]["redelivered"] is True for m in messages)
    assert client.hlen(keys.UNACKED) == 0 and client.zcard(keys.UNACKED_INDEX) == 0
    assert client.smembers(keys.WORKERS) == {b"B"}
    # And a second rescue (by B or another worker) puts nothing back twice
    assert not b.rescue()
    assert len(queued(client)) == 2


def test_a_live_worker_s_messages_are_never_taken_however_old(client: redis.Redis) -> None:
    # Given worker A, alive and slow: it has held a message for an hour
    clock = Clock(10_000.0)
    deliver(client, "t1", "evt-1", at=6_400.0)
    a = worker(client, "A", {"t1"}, clock)
    b = worker(client, "B", set(), clock)
    a.beat()
    b.beat()
    # When B rescues
    rescued = b.rescue()
    # Then nothing moves
    assert not rescued
    assert queued(client) == [] and client.hlen(keys.UNACKED) == 1


def test_a_message_delivered_after_the_oldest_heartbeat_waits(client: redis.Redis) -> None:
    # Given A's last beat at 1000, and a message no heartbeat claims, delivered at 998: A may
    # have received it just before its beat and not have it in its memory yet
    clock = Clock(1000.0)
    a = worker(client, "A", set(), clock)
    a.beat()
    deliver(client, "t1", "evt-1", at=998.0)
    clock.now = 1001.0
    b = worker(client, "B", set(), clock)
    b.beat()
    # Then it is not rescued while A's last beat is that recent
    assert not b.rescue()
    # But once A has beaten again without claiming it, it is
    clock.now = 1010.0
    a.beat()
    b.beat()
    assert b.rescue().requeued == ["evt-1"]


def test_a_starting_worker_holds_every_rescue_back(client: redis.Redis) -> None:
    # Given a worker announced at start (a beat taken at time 0), which may receive messages
    # before its first real beat
    client.set(keys.worker_heartbeat("C"), json.dumps({"at": 0, "tags": []}))
    client.sadd(keys.WORKERS, "C")
    deliver(client, "t1", "evt-1", at=500.0)
    clock = Clock(1000.0)
    b = worker(client, "B", set(), clock)
    b.beat()
    # Then nothing is rescued until it has beaten
    assert not b.rescue()


def test_a_dead_worker_s_model_locks_are_freed_and_only_its_own(client: redis.Redis) -> None:
    # Given A holding the lock of one model and B of another
    a_lock = ModelLock(client, "model-a", 600, owner="A")
    b_lock = ModelLock(client, "model-b", 600, owner="B")
    assert a_lock.acquire(wait=1) and b_lock.acquire(wait=1)
    clock = Clock(1000.0)
    a = worker(client, "A", set(), clock)
    b = worker(client, "B", set(), clock)
    a.beat()
    b.beat()
    # When A dies
    expire(client, "A")
    rescued = b.rescue()
    # Then A's lock is free for another decision at once, and B's is kept
    assert rescued.locks_freed == 1
    assert client.get(keys.model_lock("model-a")) is None
    assert ModelLock(client, "model-a", 600, owner="B").acquire(wait=0.1)
    b_lock.keep()  # still B's


def test_a_worker_without_its_own_heartbeat_judges_no_one(client: redis.Redis) -> None:
    clock = Clock(1000.0)
    deliver(client, "t1", "evt-1", at=900.0)
    b = worker(client, "B", set(), clock)
    expire(client, "B")  # its own heartbeat lost (Redis evicted it, say)
    assert not b.rescue()
    assert client.hlen(keys.UNACKED) == 1


def test_messages_of_other_queues_are_left_to_kombu(client: redis.Redis) -> None:
    clock = Clock(1000.0)
    client.hset(keys.UNACKED, "t9", json.dumps([{"body": ""}, "other", "other.queue"]))
    client.zadd(keys.UNACKED_INDEX, {"t9": 900.0})
    b = worker(client, "B", set(), clock)
    b.beat()
    assert not b.rescue()
    assert client.hlen(keys.UNACKED) == 1


def test_a_worker_judges_no_one_before_it_has_beaten_for_the_whole_delay(
    client: redis.Redis,
) -> None:
    # Given a dead worker's message, and a worker that has just started beating (after its
    # start, or after Redis was out of reach: the others may not have beaten again yet)
    clock = Clock(1000.0)
    deliver(client, "t1", "evt-1", at=900.0)
    fresh = Liveness(client, set, DEAD_AFTER, worker_id="F", clock=clock)
    fresh.beat()
    # Then it rescues nothing until it has beaten for GATE_WORKER_DEAD_AFTER_SECONDS
    clock.now = 1000.0 + DEAD_AFTER - 1
    fresh.beat()
    assert not fresh.rescue()
    clock.now = 1000.0 + DEAD_AFTER
    fresh.beat()
    assert fresh.rescue().requeued == ["evt-1"]
