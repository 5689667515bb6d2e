"""receiver.app: verify, parse, dedupe, enqueue, answer; and never acknowledge what was not queued.

Requests are signed by a helper written here from hmac/hashlib/base64, independently of
shared.signing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import fakeredis
import pytest
import redis
from flask.testing import FlaskClient

from receiver.app import create_app
from receiver.metrics import ACK_SECONDS, WEBHOOKS
from shared import keys
from shared.errors import ConfigError
from shared.settings import Settings

SECRET = "receiver-unit-secret"
URL = "/webhooks/mlflow"


def mlflow_body(entity: str = "model_version_tag", action: str = "set", **data: Any) -> bytes:
    payload = {
        "entity": entity,
        "action": action,
        "timestamp": "2025-01-01T00:00:00+00:00",
        "data": data
        or {
            "name": "fraud-detector",
            "version": "3",
            "key": "governance.request",
            "value": "champion",
        },
    }
    return json.dumps(payload).encode()


def signed(
    body: bytes,
    *,
    secret: str = SECRET,
    delivery_id: str | None = None,
    timestamp: int | None = None,
) -> dict[str, str]:
    """Headers as MLflow sends them: v1,base64(HMAC-SHA256(secret, "<id>.<ts>.<body>"))."""
    delivery_id = delivery_id or str(uuid.uuid4())
    sent_at = str(int(time.time()) if timestamp is None else timestamp)
    content = delivery_id.encode() + b"." + sent_at.encode() + b"." + body
    mac = hmac.new(secret.encode(), content, hashlib.sha256).digest()
    return {
        "Content-Type": "application/json",
        "X-MLflow-Delivery-Id": delivery_id,
        "X-MLflow-Timestamp": sent_at,
        "X-MLflow-Signature": "v1," + base64.b64encode(mac).decode(),
    }


@dataclass
class Receiver:
    client: FlaskClient
    redis: fakeredis.FakeRedis
    server: fakeredis.FakeServer
    published: list[dict[str, Any]] = field(default_factory=list)
    publish_failures: list[Exception] = field(default_factory=list)

    def publish(self, event: dict[str, Any]) -> None:
        if self.publish_failures:
            raise self.publish_failures.pop(0)
        self.published.append(event)

    def post(self, body: bytes, headers: dict[str, str]) -> Any:
        return self.client.post(URL, data=body, headers=headers)


def _receiver(settings: Settings) -> Receiver:
    server = fakeredis.FakeServer()
    redis_client = fakeredis.FakeRedis(server=server)
    receiver = Receiver(client=None, redis=redis_client, server=server)  # type: ignore[arg-type]
    app = create_app(settings, redis_client=redis_client, publish=receiver.publish)
    receiver.client = app.test_client()
    return receiver


@pytest.fixture
def receiver() -> Receiver:
    return _receiver(Settings(webhook_secret=SECRET))


# --- accepted, ignored, duplicate --------------------------------------------------------------


def test_a_signed_governance_request_is_accepted_and_published_once(receiver: Receiver) -> None:
    # Given a signed model_version_tag.set for governance.request=champion
    body = mlflow_body()
    headers = signed(body, delivery_id="delivery-42")
    # When MLflow posts it
    response = receiver.post(body, headers)
    # Then it is accepted with the delivery id as event id, and published exactly once
    assert response.status_code == 202
    assert response.json["status"] == "accepted"
    assert response.json["event_id"] == "delivery-42"
    assert len(receiver.published) == 1
    event = receiver.published[0]
    fields = ("event_id", "registry", "origin", "kind", "model", "version", "target")
    assert {k: event[k] for k in fields} == {
        "event_id": "delivery-42",
        "registry": "mlflow",
        "origin": "webhook",
        "kind": "request",
        "model": "fraud-detector",
        "version": "3",
        "target": "champion",
    }
    assert event["webhook_event"] == "model_version_tag.set"
    # And the delivery is remembered as done (not pending) for the dedupe TTL
    marker = keys.delivery("mlflow", "delivery-42")
    assert receiver.redis.get(marker) == b"delivery-42"
    assert 0 < receiver.redis.ttl(marker) <= Settings().dedupe_ttl_seconds


@pytest.mark.parametrize(
    ("entity", "action", "data", "kind"),
    [
        (
            "model_version_alias",
            "created",
            {"name": "m", "alias": "champion", "version": "2"},
            "alias_created",
        ),
        ("model_version_alias", "deleted", {"name": "m", "alias": "champion"}, "alias_deleted"),
    ],
)
def test_alias_events_are_accepted(
    receiver: Receiver, entity: str, action: str, data: dict[str, str], kind: str
) -> None:
    body = mlflow_body(entity, action, **data)
    response = receiver.post(body, signed(body))
    assert response.status_code == 202
    assert [e["kind"] for e in receiver.published] == [kind]


@pytest.mark.parametrize(
    ("entity", "action", "data"),
    [
        (
            "model_version_tag",
            "set",
            {"name": "m", "version": "1", "key": "governance.status", "value": "approved"},
        ),
        ("model_version", "created", {"name": "m", "version": "1", "source": "s", "run_id": None}),
        ("registered_model", "created", {"name": "m", "tags": {}, "description": None}),
    ],
)
def test_other_events_are_ignored_without_publishing_or_writing_redis(
    receiver: Receiver, entity: str, action: str, data: dict[str, Any]
) -> None:
    body = mlflow_body(entity, action, **data)
    response = receiver.post(body, signed(body))
    assert response.status_code == 200
    assert response.json["status"] == "ignored"
    assert receiver.published == []
    assert receiver.redis.keys("*") == []


def test_the_same_delivery_twice_is_a_duplicate_and_published_once(receiver: Receiver) -> None:
    # Given a delivery that was accepted
    body = mlflow_body()
    headers = signed(body, delivery_id="delivery-7")
    assert receiver.post(body, headers).status_code == 202
    # When MLflow retries it with the same delivery id
    again = receiver.post(body, headers)
    # Then it is acknowledged as a duplicate and not published again
    assert again.status_code == 200
    assert again.json["status"] == "duplicate"
    assert again.json["event_id"] == "delivery-7"
    assert len(receiver.published) == 1


def test_a_different_delivery_of_the_same_body_is_published_again(receiver: Receiver) -> None:
    body = mlflow_body()
    assert receiver.post(body, signed(body)).status_code == 202
    assert receiver.post(body, signed(body)).status_code == 202
    assert len(receiver.published) == 2


def test_a_delivery_being_enqueued_elsewhere_is_not_acknowledged(receiver: Receiver) -> None:
    # Given another receiver process is enqueuing the same delivery right now
    receiver.redis.set(keys.delivery("mlflow", "in-flight"), b"pending")
    body = mlflow_body()
    # When this copy arrives, Then it is not acknowledged (the first copy may still fail)
    response = receiver.post(body, signed(body, delivery_id="in-flight"))
    assert response.status_code == 503
    assert response.headers["Retry-After"]
    assert receiver.published == []


# --- signatures --------------------------------------------------------------------------------


def _unsigned(headers: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k != "X-MLflow-Signature"}


@pytest.mark.parametrize(
    "make_headers",
    [
        pytest.param(lambda body: _unsigned(signed(body)), id="missing-signature"),
        pytest.param(lambda body: signed(body, secret="forged"), id="forged"),
        pytest.param(lambda body: signed(body + b" "), id="body-altered"),
        pytest.param(lambda body: signed(body, timestamp=int(time.time()) - 3600), id="stale"),
        pytest.param(lambda body: signed(body, timestamp=int(time.time()) + 3600), id="future"),
        pytest.param(
            lambda body: {**signed(body), "X-MLflow-Delivery-Id": "swapped"}, id="id-swapped"
        ),
        pytest.param(
            lambda body: {k: v for k, v in signed(body).items() if k != "X-MLflow-Timestamp"},
            id="missing-timestamp",
        ),
    ],
)
def test_a_request_without_a_valid_signature_is_401(
    receiver: Receiver, make_headers: Callable[[bytes], dict[str, str]]
) -> None:
    body = mlflow_body()
    response = receiver.post(body, make_headers(body))
    assert response.status_code == 401
    assert response.json["status"] == "unauthorized"
    assert receiver.published == []
    assert receiver.redis.keys("*") == []


def test_a_signature_is_checked_before_the_body_is_parsed(receiver: Receiver) -> None:
    response = receiver.post(b"not json", signed(b"not json", secret="forged"))
    assert response.status_code == 401


def test_an_absurd_timestamp_is_401_not_500(receiver: Receiver) -> None:
    body = mlflow_body()
    headers = signed(body)
    headers["X-MLflow-Timestamp"] = "1" + "0" * 400
    assert receiver.post(body, headers).status_code == 401


# --- malformed bodies --------------------------------------------------------------------------


def test_malformed_json_is_400(receiver: Receiver) -> None:
    body = b'{"entity": "model_version_tag", '
    response = receiver.post(body, signed(body))
    assert response.status_code == 400
    assert response.json["status"] == "bad_request"
    assert "not valid JSON" in response.json["message"]
    assert receiver.published == []


@pytest.mark.parametrize(
    ("payload", "field_name"),
    [
        ({"action": "set", "data": {}}, "'entity'"),
        ({"entity": "model_version_tag", "action": "set"}, "'data'"),
        (
            {"entity": "model_version_tag", "action": "set", "data": {"version": "1"}},
            "'data.name'",
        ),
        (
            {"entity": "model_version_alias", "action": "created", "data": {"name": "m"}},
            "'data.alias'",
        ),
        (
            {
                "entity": "model_version_tag",
                "action": "set",
                "data": {"name": "m", "version": "one", "key": "governance.request", "value": "x"},
            },
            "'data.version'",
        ),
    ],
)
def test_a_missing_or_bad_field_is_400_naming_the_field(
    receiver: Receiver, payload: dict[str, Any], field_name: str
) -> None:
    body = json.dumps(payload).encode()
    response = receiver.post(body, signed(body))
    assert response.status_code == 400
    assert field_name in response.json["message"]
    assert receiver.published == []


def test_an_absurd_version_is_400_not_500(receiver: Receiver) -> None:
    body = mlflow_body(name="m", version="9" * 5000, key="governance.request", value="champion")
    assert receiver.post(body, signed(body)).status_code == 400


def test_a_body_over_one_mib_is_413(receiver: Receiver) -> None:
    body = b" " * (1024 * 1024 + 1)
    response = receiver.post(body, signed(body))
    assert response.status_code == 413
    assert response.json["status"] == "too_large"
    assert receiver.published == []


def test_a_body_of_exactly_one_mib_is_read(receiver: Receiver) -> None:
    # Padding JSON with trailing whitespace up to the limit: still a valid, signed webhook
    body = mlflow_body()
    body += b" " * (1024 * 1024 - len(body))
    response = receiver.post(body, signed(body))
    assert response.status_code == 202


def test_another_method_is_405(receiver: Receiver) -> None:
    response = receiver.client.get(URL)
    assert response.status_code == 405
    assert response.json["status"] == "method_not_allowed"


# --- Redis or the queue unavailable ------------------------------------------------------------


def test_redis_down_is_503_with_retry_after_and_a_retry_is_then_accepted(
    receiver: Receiver,
) -> None:
    # Given Redis is unreachable
    body = mlflow_body()
    headers = signed(body, delivery_id="delivery-during-outage")
    receiver.server.connected = False
    # When MLflow delivers, Then the delivery is refused for later, and nothing is published
    response = receiver.post(body, headers)
    assert response.status_code == 503
    assert response.json["status"] == "unavailable"
    assert response.headers["Retry-After"] == "5"
    assert receiver.published == []
    # When Redis is back and MLflow retries the same delivery
    receiver.server.connected = True
    retry = receiver.post(body, headers)
    # Then it is accepted, not taken for a duplicate
    assert retry.status_code == 202
    assert len(receiver.published) == 1


def test_a_failed_publish_is_503_and_leaves_no_marker_so_a_retry_is_accepted(
    receiver: Receiver,
) -> None:
    # Given the broker refuses the next publish
    receiver.publish_failures.append(ConnectionError("broker gone"))
    body = mlflow_body()
    headers = signed(body, delivery_id="delivery-unpublished")
    # When MLflow delivers
    response = receiver.post(body, headers)
    # Then 503, and the delivery is not remembered
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    assert response.json["message"] == (
        "the gate's queue could not take the event; the event was not accepted, retry later"
    )
    assert receiver.published == []
    assert not receiver.redis.exists(keys.delivery("mlflow", "delivery-unpublished"))
    # When MLflow retries the same delivery, Then it is accepted and published
    retry = receiver.post(body, headers)
    assert retry.status_code == 202
    assert len(receiver.published) == 1


LEAK = "Error connecting to redis://gate:hunter2@redis.internal.example:6379"


@pytest.mark.parametrize("where", ["redis", "publish"])
def test_a_503_does_not_show_the_queue_s_error_text_but_logs_it_without_password(
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    where: str,
) -> None:
    # Given Redis, or the broker, fails with an error naming its host and password
    def fail(*args: object, **kwargs: object) -> None:
        raise redis.ConnectionError(LEAK)

    if where == "redis":
        monkeypatch.setattr(receiver.redis, "set", fail)
    else:
        receiver.publish_failures.append(redis.ConnectionError(LEAK))
    body = mlflow_body()
    # When MLflow delivers
    with caplog.at_level(logging.ERROR):
        response = receiver.post(body, signed(body))
    # Then the answer says what went wrong and what to do, without the error's text
    assert response.status_code == 503 and response.headers["Retry-After"] == "5"
    text = response.get_data(as_text=True)
    assert "redis.internal.example" not in text and "hunter2" not in text
    assert "the event was not accepted, retry later" in response.json["message"]
    # And the log has the detail, with the password hidden
    assert "ConnectionError: Error connecting to redis://gate:***@redis.internal.example" in (
        caplog.text
    )
    assert "hunter2" not in caplog.text


# --- health, readiness, start-up ---------------------------------------------------------------


def test_healthz_is_200(receiver: Receiver) -> None:
    response = receiver.client.get("/healthz")
    assert response.status_code == 200
    assert response.json == {"status": "ok"}


def test_readyz_follows_redis(receiver: Receiver) -> None:
    assert receiver.client.get("/readyz").status_code == 200
    receiver.server.connected = False
    down = receiver.client.get("/readyz")
    assert down.status_code == 503
    assert down.json["status"] == "unavailable"
    receiver.server.connected = True
    assert receiver.client.get("/readyz").status_code == 200


def test_readyz_does_not_show_redis_s_error_text_but_logs_it_without_password(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Given Redis fails with an error naming its host and password
    leak = "Error connecting to redis://gate:hunter2@redis.internal.example:6379"

    def ping() -> bool:
        raise redis.ConnectionError(leak)

    monkeypatch.setattr(receiver.redis, "ping", ping)
    # When /readyz is asked
    with caplog.at_level(logging.WARNING):
        down = receiver.client.get("/readyz")
    # Then it answers 503 with a fixed body, and the detail is in the log only
    assert down.status_code == 503
    assert down.json == {"status": "unavailable", "redis": "unreachable"}
    assert "hunter2" not in down.get_data(as_text=True)
    assert "Error connecting to redis://gate:***@redis.internal.example:6379" in caplog.text
    assert "hunter2" not in caplog.text


# --- metrics -----------------------------------------------------------------------------------


def _source_labels() -> set[str]:
    return {
        sample.labels["source"]
        for metric in (WEBHOOKS, ACK_SECONDS)
        for family in metric.collect()
        for sample in family.samples
    }


def _received(source: str, outcome: str) -> float:
    wanted = {"source": source, "outcome": outcome}
    samples = [s for f in WEBHOOKS.collect() for s in f.samples if s.name.endswith("_total")]
    return sum(s.value for s in samples if s.labels == wanted)


def test_webhooks_are_counted_by_source_and_outcome(receiver: Receiver) -> None:
    body = mlflow_body()
    before = _received("mlflow", "accepted"), _received("mlflow", "unauthorized")
    assert receiver.post(body, signed(body)).status_code == 202
    assert receiver.post(body, signed(body, secret="forged")).status_code == 401
    assert (_received("mlflow", "accepted"), _received("mlflow", "unauthorized")) == (
        before[0] + 1,
        before[1] + 1,
    )
    assert "gate_webhooks_received_total" in receiver.client.get("/metrics").get_data(as_text=True)


def test_requests_to_made_up_webhook_paths_add_no_label_values(receiver: Receiver) -> None:
    # Given the label values the metrics have so far (and one request to an unknown path, so
    # that the fixed label for unknown paths exists already)
    assert receiver.client.post(f"/webhooks/{uuid.uuid4()}", data=b"{}").status_code == 404
    before = _source_labels()
    # When anyone posts to 50 made-up paths under /webhooks/, without any credentials
    for _ in range(50):
        path = f"/webhooks/{uuid.uuid4()}"
        assert receiver.client.post(path, data=b"{}").status_code == 404
    # Then no new label value appears: each was counted under the one fixed label
    after = _source_labels()
    assert after == before
    assert "unknown" in after


def test_create_app_refuses_to_start_without_a_secret() -> None:
    with pytest.raises(ConfigError, match="GATE_WEBHOOK_SECRET"):
        create_app(Settings(), redis_client=fakeredis.FakeRedis(), publish=lambda event: None)


def test_unsigned_mode_accepts_unsigned_requests() -> None:
    # Given a receiver started with GATE_ALLOW_UNSIGNED and no secret
    receiver = _receiver(Settings(allow_unsigned=True))
    body = mlflow_body()
    # When a request without any MLflow header arrives
    response = receiver.post(body, {"Content-Type": "application/json"})
    # Then it is accepted, its id derived from the body so that a resend is a duplicate
    assert response.status_code == 202
    assert response.json["event_id"] == hashlib.sha256(body).hexdigest()
    assert receiver.post(body, {"Content-Type": "application/json"}).json["status"] == "duplicate"
    assert len(receiver.published) == 1
