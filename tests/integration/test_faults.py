"""Nothing lost: each part of the stack fails for real, and every event is still decided once,
never approved on an error path. Each test runs a stack of its own."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable

import pytest
import requests
from conftest import Stack, signed_headers
from harness import DelayProxy, wait_until

pytestmark = pytest.mark.integration

REQUEST = "governance.request"
SIGNATURE = "X-MLflow-Signature"
StackFactory = Callable[..., Stack]


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _request_body(model: str, version: str, target: str = "champion") -> bytes:
    data = {"name": model, "version": version, "key": REQUEST, "value": target}
    payload = {"entity": "model_version_tag", "action": "set", "timestamp": "now", "data": data}
    return json.dumps(payload).encode()


def _queue_requests(stack: Stack, count: int, accuracy: float = 0.95) -> list[tuple[str, str]]:
    """`count` models with a version each, whose requests MLflow delivers into the queue."""
    before = stack.redis.llen("gate.events")
    subjects = []
    for _ in range(count):
        model = stack.new_model()
        mv = stack.new_version(model, {"validation_accuracy": accuracy})
        stack.client.set_model_version_tag(model, mv.version, REQUEST, "champion")
        subjects.append((model, mv.version))
    wait_until(lambda: stack.redis.llen("gate.events") >= before + count, 30, what="events queued")
    return subjects


def test_a_worker_killed_mid_task_decides_the_event_once_after_redelivery(
    private_stack: StackFactory,
) -> None:
    # Given a worker whose MLflow answers slowly, so that a task is surely in flight
    stack = private_stack()
    stack.start_redis()
    stack.start_mlflow()
    stack.start_receiver()
    proxy = DelayProxy(stack.mlflow_uri, delay=3.0)
    try:
        worker = stack.start_worker(env={"MLFLOW_TRACKING_URI": proxy.url})
        stack.gate("webhook", "register", "--url", f"{stack.receiver_url}/webhooks/mlflow")
        time.sleep(1.5)
        model = stack.new_model()
        mv = stack.new_version(model, {"validation_accuracy": 0.95})
        stack.client.set_model_version_tag(model, mv.version, REQUEST, "champion")
        wait_until(lambda: "received" in worker.log_tail(20000), 30, what="the task to start")
        time.sleep(0.5)
        # When its pool processes are killed with SIGKILL in the middle of the task
        children = _children(worker.pid)
        assert children, "the worker has pool processes"
        for child in children:
            os.kill(child, signal.SIGKILL)
        proxy.delay = 0.0
        # Then the message is redelivered and the event decided, exactly once
        stack.wait_for_decision(model, mv.version)
        stack.idle()
        time.sleep(1.0)
        assert len(stack.decisions(model, mv.version)) == 1
        assert stack.alias_version(model, "champion") == mv.version
        assert "WorkerLostError" in worker.log_tail(50000)
        assert stack.redis.zcard("gate:deadletter:index") == 0
    finally:
        proxy.close()


def test_mlflow_down_dead_letters_then_replay_and_redrive_decide_everything(
    private_stack: StackFactory,
) -> None:
    # Given six promotion requests queued while no worker runs
    stack = private_stack().up()
    stack.stop("worker")
    subjects = _queue_requests(stack, 6)
    # When MLflow goes down and a worker (no automatic redrive) works through them
    stack.stop("mlflow")
    stack.start_worker(env={"GATE_REDRIVE_ENABLED": "false"})
    # Then, after the shortened budget, all six are dead letters, and nothing was decided
    wait_until(
        lambda: stack.redis.zcard("gate:deadletter:index") == 6,
        60,
        what=f"6 dead letters\n{stack.logs()}",
    )
    for model, _ in subjects:
        assert stack.decisions(model) == []
    listing = json.loads(stack.gate("dlq", "list", "--json").stdout)
    assert {e["error_class"] for e in listing} == {"MlflowUnavailable"}
    assert {e["attempts"] for e in listing} == {3}
    assert all(e["transient"] for e in listing)
    table = stack.gate("dlq", "list").stdout
    assert "6 dead letters" in table and "MlflowUnavailable" in table

    # When MLflow returns, an operator replays two by hand
    stack.start_mlflow()
    first_two = [e["id"] for e in listing if e["model"] in {m for m, _ in subjects[:2]}]
    dry = stack.gate("dlq", "replay", "--all", "--dry-run").stdout
    assert "would replay 6" in dry
    replayed = stack.gate("dlq", "replay", *first_two).stdout
    assert "replayed 2, failed 0" in replayed
    for model, version in subjects[:2]:
        assert stack.wait_for_decision(model, version)["governance.status"] == "approved"

    # And the automatic redrive, once switched on, decides the other four
    stack.stop("worker")
    stack.start_worker(beat=True)
    for model, version in subjects[2:]:
        assert stack.wait_for_decision(model, version)["governance.status"] == "approved"
        assert stack.alias_version(model, "champion") == version
    assert stack.redis.zcard("gate:deadletter:index") == 0
    for model, version in subjects:
        assert len(stack.decisions(model, version)) == 1


def test_redis_down_means_503_until_it_returns_and_nothing_acknowledged_is_lost(
    private_stack: StackFactory,
) -> None:
    stack = private_stack(redis_appendonly=True).up()
    model = stack.new_model()
    first = stack.new_version(model, {"validation_accuracy": 0.95})
    # Given Redis is down
    stack.stop("redis")
    # When a webhook arrives, the receiver refuses it with 503 and Retry-After, never a 2xx
    body = _request_body(model, first.version)
    delivery = str(uuid.uuid4())
    refused = requests.post(
        f"{stack.receiver_url}/webhooks/mlflow", data=body, headers=signed_headers(body, delivery),
        timeout=10,
    )  # fmt: skip
    assert refused.status_code == 503
    assert refused.headers["Retry-After"] == "5"
    assert requests.get(f"{stack.receiver_url}/readyz", timeout=10).status_code == 503
    # And MLflow's own delivery of a request made now is refused too, and retried by MLflow
    stack.client.set_model_version_tag(model, first.version, REQUEST, "champion")
    time.sleep(1.0)
    # When Redis returns (before MLflow's retry after Retry-After: 5 s)
    stack.start_redis()
    # Then the retried delivery is accepted and decided, and the refused one can be resent
    tags = stack.wait_for_decision(model, first.version, timeout=60)
    assert tags["governance.status"] == "approved"
    resent = requests.post(
        f"{stack.receiver_url}/webhooks/mlflow", data=body, headers=signed_headers(body, delivery),
        timeout=10,
    )  # fmt: skip
    assert resent.status_code == 202
    stack.wait_for_decision(model, first.version, count=2)
    assert requests.get(f"{stack.receiver_url}/readyz", timeout=10).status_code == 200


def test_queued_events_survive_a_redis_restart_with_append_only_persistence(
    private_stack: StackFactory,
) -> None:
    stack = private_stack(redis_appendonly=True).up()
    stack.stop("worker")
    subjects = _queue_requests(stack, 3)
    # When Redis restarts with the events still queued
    stack.stop("redis")
    stack.start_redis()
    assert stack.redis.llen("gate.events") == 3
    # Then a worker decides every one of them
    stack.start_worker()
    for model, version in subjects:
        assert stack.wait_for_decision(model, version)["governance.status"] == "approved"


def test_webhooks_lost_while_the_receiver_is_down_are_decided_by_the_sweep(
    private_stack: StackFactory,
) -> None:
    # Given MLflow that does not retry deliveries, and the receiver down
    stack = private_stack(mlflow_env={"MLFLOW_WEBHOOK_REQUEST_MAX_RETRIES": "0"}).up()
    approved = stack.new_model()
    good = stack.new_version(approved, {"validation_accuracy": 0.95})
    stack.client.set_model_version_tag(approved, good.version, REQUEST, "champion")
    stack.wait_for_decision(approved, good.version)
    stack.processes["receiver"].kill()
    # When a request is made and a protected alias is moved directly: both webhooks are lost
    model = stack.new_model()
    mv = stack.new_version(model, {"validation_accuracy": 0.95})
    stack.client.set_model_version_tag(model, mv.version, REQUEST, "champion")
    bad = stack.new_version(approved, {"validation_accuracy": 0.30})
    stack.client.set_registered_model_alias(approved, "champion", bad.version)
    time.sleep(2.0)
    assert stack.decisions(model) == []
    # Then the periodic sweep finds both and the worker decides them
    stack.stop("worker")
    stack.start_worker(beat=True)
    assert stack.wait_for_decision(model, mv.version)["governance.status"] == "approved"
    assert stack.wait_for_decision(approved, bad.version)["governance.status"] == "rejected"
    wait_until(
        lambda: stack.alias_version(approved, "champion") == good.version, 20, what="alias back"
    )
    # And a sweep that runs again decides nothing twice
    time.sleep(3.0)
    stack.idle()
    assert len(stack.decisions(model, mv.version)) == 1
    assert len(stack.decisions(approved, bad.version)) == 1


def test_bad_input_over_http_is_refused_clearly_and_never_queued(stack: Stack) -> None:
    url = f"{stack.receiver_url}/webhooks/mlflow"
    good = _request_body("some-model", "1")
    stale = signed_headers(good, "stale", timestamp=int(time.time()) - 3600)
    reused = signed_headers(good, "reused")
    other = _request_body("other-model", "2")
    cases: list[tuple[str, bytes, dict[str, str], int]] = [
        ("malformed JSON", b"{not json", signed_headers(b"{not json", "a"), 400),
        ("truncated JSON", good[:30], signed_headers(good[:30], "b"), 400),
        ("not an object", b"[1, 2]", signed_headers(b"[1, 2]", "c"), 400),
        (
            "wrong types",
            b'{"entity": 1, "action": "set"}',
            signed_headers(b'{"entity": 1, "action": "set"}', "d"),
            400,
        ),
        (
            "missing data",
            b'{"entity": "model_version_tag", "action": "set"}',
            signed_headers(b'{"entity": "model_version_tag", "action": "set"}', "e"),
            400,
        ),
        ("huge body", b"x" * (1024 * 1024 + 1), {"Content-Type": "application/json"}, 413),
        ("missing signature", good, {"Content-Type": "application/json"}, 401),
        (
            "forged signature",
            good,
            {**signed_headers(good, "f"), "X-MLflow-Signature": "v1,Zm9v"},
            401,
        ),
        ("reused signature, other body", other, reused, 401),
        ("stale signature", good, stale, 401),
        (
            "unknown event",
            b'{"entity": "prompt", "action": "created", "data": {}}',
            signed_headers(b'{"entity": "prompt", "action": "created", "data": {}}', "g"),
            200,
        ),
    ]
    before = stack.redis.llen("gate.events") + stack.redis.hlen("unacked")
    for name, body, headers, expected in cases:
        response = requests.post(url, data=body, headers=headers, timeout=10)
        assert response.status_code == expected, name
        assert response.json()["message"], name
    stack.idle()
    assert stack.redis.llen("gate.events") + stack.redis.hlen("unacked") == before == 0
    assert stack.decisions("some-model") == stack.decisions("other-model") == []
