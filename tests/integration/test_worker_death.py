"""A whole worker killed (SIGKILL to its process group, as an out-of-memory kill of its container
does): the events it held are decided by another worker long before the Redis visibility
timeout (an hour), without the sweep, once each; a live worker, however slow, keeps its own.
Real Redis, MLflow, receiver and Celery workers; each test runs a stack of its own."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from conftest import Stack
from harness import DelayProxy, wait_until

from shared import keys

pytestmark = pytest.mark.integration

REQUEST = "governance.request"
StackFactory = Callable[..., Stack]

# Heartbeats every 0.67 s; a worker silent for 4 s is dead. Model locks that would outlive the
# test (10 minutes), so that only the freeing of a dead worker's locks can unblock its models;
# and no sweep (no --beat): only the rescue of the dead worker's messages can decide its events.
FAST_DEATH = {"GATE_WORKER_DEAD_AFTER_SECONDS": "4", "GATE_MODEL_LOCK_SECONDS": "600"}


def received(log: str) -> int:
    return log.count(f"Task {keys.TASK_RECONCILE}[")  # "Task gate.reconcile[<id>] received"


def test_a_worker_killed_whole_has_its_events_decided_by_another_worker(
    private_stack: StackFactory,
) -> None:
    # Given a worker (2 processes) whose MLflow answers slowly, holding two requests in flight,
    # and a third request queued behind them
    stack = private_stack()
    stack.start_redis()
    stack.start_mlflow()
    stack.start_receiver()
    proxy = DelayProxy(stack.mlflow_uri, delay=3.0)
    try:
        doomed = stack.start_worker("doomed", env={**FAST_DEATH, "MLFLOW_TRACKING_URI": proxy.url})
        stack.gate("webhook", "register", "--url", f"{stack.receiver_url}/webhooks/mlflow")
        time.sleep(1.5)
        subjects = []
        for _ in range(3):
            model = stack.new_model()
            mv = stack.new_version(model, {"validation_accuracy": 0.95})
            stack.client.set_model_version_tag(model, mv.version, REQUEST, "champion")
            subjects.append((model, mv.version))
        wait_until(
            lambda: received(doomed.log_tail(50_000)) >= 2 and stack.redis.hlen(keys.UNACKED) >= 2,
            30,
            what=f"two tasks in flight\n{stack.logs()}",
        )
        time.sleep(1.0)  # mid-decision: model locks taken, calls to MLflow under way
        held = set(stack.redis.hkeys(keys.UNACKED))

        # When the whole worker is killed at once, and another worker starts
        doomed.kill()
        assert not doomed.group_alive()
        assert set(stack.redis.hkeys(keys.UNACKED)) == held  # kombu gave nothing back
        rescuer = stack.start_worker("rescuer", env=FAST_DEATH)

        # Then every request is decided, well before the visibility timeout (an hour), without
        # a sweep, and before the dead worker's model locks (10 minutes) would have expired
        for model, version in subjects:
            tags = stack.wait_for_decision(model, version, timeout=60)
            assert tags["governance.status"] == "approved"
            assert stack.alias_version(model, "champion") == version
        assert "rescued" in rescuer.log_tail(200_000)
        # And once each, with nothing left unacknowledged or dead-lettered
        stack.idle()
        time.sleep(1.0)
        for model, version in subjects:
            assert len(stack.decisions(model, version)) == 1
        assert stack.redis.zcard(keys.DEADLETTER_INDEX) == 0
        assert len(stack.redis.smembers(keys.WORKERS)) == 1  # the rescuer: the dead one is gone
    finally:
        proxy.close()


def test_a_live_slow_worker_keeps_its_events(private_stack: StackFactory) -> None:
    # Given a worker whose decision takes much longer than GATE_WORKER_DEAD_AFTER_SECONDS
    # (MLflow answers each call in 1.5 s), and a second, fast worker beside it
    stack = private_stack()
    stack.start_redis()
    stack.start_mlflow()
    stack.start_receiver()
    proxy = DelayProxy(stack.mlflow_uri, delay=1.5)
    try:
        slow = stack.start_worker("slow", env={**FAST_DEATH, "MLFLOW_TRACKING_URI": proxy.url})
        stack.gate("webhook", "register", "--url", f"{stack.receiver_url}/webhooks/mlflow")
        time.sleep(1.5)
        model = stack.new_model()
        mv = stack.new_version(model, {"validation_accuracy": 0.95})
        stack.client.set_model_version_tag(model, mv.version, REQUEST, "champion")
        wait_until(lambda: received(slow.log_tail(50_000)) >= 1, 30, what="the task to start")
        fast = stack.start_worker("fast", env=FAST_DEATH)
        # When the slow worker takes its time (many heartbeats of the fast one)
        tags = stack.wait_for_decision(model, mv.version, timeout=120)
        # Then it decided the event itself: the fast worker never took it from it
        assert tags["governance.status"] == "approved"
        assert "rescued" not in fast.log_tail(200_000)
        assert "rescued" not in slow.log_tail(200_000)
        assert len(stack.decisions(model, mv.version)) == 1
    finally:
        proxy.close()
