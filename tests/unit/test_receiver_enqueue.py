"""The receiver's one-round-trip enqueue (receiver/enqueue.py), against a real redis-server: the
message is the one `publisher()` sends, a delivery is queued once, a push Redis refuses leaves
no marker behind, and an accepted webhook costs one Redis command."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient

from cli.devstack import ManagedProcess, start_redis
from receiver.app import create_app
from receiver.enqueue import PENDING, TaskMessages
from shared import keys
from shared.queue import create_celery, publisher
from shared.settings import Settings

SECRET = "enqueue-unit-secret"
URL = "/webhooks/mlflow"


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


@pytest.fixture
def receiver(redis_server: str, client: redis.Redis) -> FlaskClient:
    """The receiver as `mlflow-gate receiver` builds it: its own Celery app, no publish given."""
    settings = Settings(webhook_secret=SECRET, redis_url=redis_server)
    return create_app(settings).test_client()


def post(receiver: FlaskClient, delivery_id: str, model: str = "fraud-detector") -> Any:
    payload = {
        "entity": "model_version_tag",
        "action": "set",
        "timestamp": "2025-01-01T00:00:00+00:00",
        "data": {"name": model, "version": "3", "key": "governance.request", "value": "champion"},
    }
    body = json.dumps(payload).encode()
    sent_at = str(int(time.time()))
    mac = hmac.new(SECRET.encode(), f"{delivery_id}.{sent_at}.".encode() + body, hashlib.sha256)
    headers = {
        "Content-Type": "application/json",
        "X-MLflow-Delivery-Id": delivery_id,
        "X-MLflow-Timestamp": sent_at,
        "X-MLflow-Signature": "v1," + base64.b64encode(mac.digest()).decode(),
    }
    return receiver.post(URL, data=body, headers=headers)


def queued(client: redis.Redis) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in client.lrange(keys.QUEUE, 0, -1)]  # type: ignore[union-attr]


def event_of(message: dict[str, Any]) -> dict[str, Any]:
    args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
    event: dict[str, Any] = args[0]
    return event


def commands(client: redis.Redis) -> dict[str, int]:
    stats: dict[str, dict[str, int]] = client.info("commandstats")  # type: ignore[assignment]
    return {
        name.removeprefix("cmdstat_"): int(v["calls"])
        for name, v in stats.items()
        if name not in ("cmdstat_info", "cmdstat_config")
    }


def test_the_message_is_the_one_publisher_sends(redis_server: str, client: redis.Redis) -> None:
    # Given the same event, sent by publisher() and built by the receiver
    app = create_celery(Settings(redis_url=redis_server))
    event = {"event_id": "evt-1", "model": "m", "version": "1"}
    publisher(app)(event)
    sent = queued(client)[0]
    built = json.loads(TaskMessages(app).reconcile(event))
    # Then they differ only in their ids
    ids = ("id", "root_id")
    assert {k: v for k, v in built["headers"].items() if k not in ids} == {
        k: v for k, v in sent["headers"].items() if k not in ids
    }
    assert built["headers"]["root_id"] == built["headers"]["id"]
    props = ("correlation_id", "delivery_tag")
    assert {k: v for k, v in built["properties"].items() if k not in props} == {
        k: v for k, v in sent["properties"].items() if k not in props
    }
    assert built["properties"]["correlation_id"] == built["headers"]["id"]
    assert {k: v for k, v in built.items() if k not in ("headers", "properties", "body")} == {
        k: v for k, v in sent.items() if k not in ("headers", "properties", "body")
    }
    assert json.loads(base64.b64decode(built["body"])) == json.loads(base64.b64decode(sent["body"]))
    app.close()


def test_a_delivery_is_queued_once_in_one_redis_command(
    receiver: FlaskClient, client: redis.Redis
) -> None:
    assert post(receiver, "warm-up").status_code == 202  # loads the script
    before = commands(client)
    # When one delivery arrives, then again
    first = post(receiver, "delivery-1")
    again = post(receiver, "delivery-1")
    after = commands(client)
    # Then it is queued once, and remembered for the dedupe TTL
    assert first.status_code == 202 and first.json["event_id"] == "delivery-1"
    assert again.status_code == 200 and again.json["status"] == "duplicate"
    events = [event_of(m) for m in queued(client)]
    assert [e["event_id"] for e in events] == ["delivery-1", "warm-up"]
    assert events[0]["model"] == "fraud-detector" and events[0]["kind"] == "request"
    marker = keys.delivery("mlflow", "delivery-1")
    assert client.get(marker) == b"delivery-1"
    assert 0 < client.ttl(marker) <= Settings().dedupe_ttl_seconds
    # And each delivery cost one command sent to Redis (commandstats also counts the commands
    # the script runs inside Redis: SET and LPUSH for the first, SET and GET for the duplicate)
    assert {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)} == {
        "evalsha": 2,
        "set": 2,
        "lpush": 1,
        "get": 1,
    }


def test_a_push_redis_refuses_is_503_and_leaves_no_marker(
    receiver: FlaskClient, client: redis.Redis
) -> None:
    # Given a queue key Redis cannot push to (WRONGTYPE)
    client.set(keys.QUEUE, "not a list")
    # When a delivery arrives, it is refused with 503, and not remembered
    refused = post(receiver, "delivery-2")
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "5"
    assert client.get(keys.delivery("mlflow", "delivery-2")) is None
    # Then, once Redis takes it, MLflow's retry is accepted and queued
    client.delete(keys.QUEUE)
    assert post(receiver, "delivery-2").status_code == 202
    assert [event_of(m)["event_id"] for m in queued(client)] == ["delivery-2"]


def test_a_delivery_an_older_receiver_is_queueing_is_not_acknowledged(
    receiver: FlaskClient, client: redis.Redis
) -> None:
    # Given an older receiver (three round trips) in the middle of queueing the same delivery
    client.set(keys.delivery("mlflow", "delivery-3"), PENDING, ex=30)
    # When its copy arrives here, it is 503: that queueing may still fail
    answer = post(receiver, "delivery-3")
    assert answer.status_code == 503
    assert queued(client) == []


def test_redis_down_is_503(tmp_path: Path) -> None:
    settings = Settings(webhook_secret=SECRET, redis_url="redis://127.0.0.1:1/0")
    answer = post(create_app(settings).test_client(), f"delivery-{uuid.uuid4()}")
    assert answer.status_code == 503
    assert answer.json["message"] == (
        "the gate's queue (Redis) did not answer; the event was not accepted, retry later"
    )
