"""Property tests over the real receiver app: whatever arrives, the answer is never a 5xx, nothing
is published unless the answer is 202 (and then exactly once), a 4xx explains itself, and a
correctly signed body is never refused as unsigned.

Requests are signed by a helper written here from hmac/hashlib/base64, independently of
shared.signing.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
import string
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import fakeredis
import pytest
from flask.testing import FlaskClient
from hypothesis import example, given, settings
from hypothesis import strategies as st

from receiver.app import create_app
from shared.events import GateEvent
from shared.settings import Settings

SECRET = "receiver-fuzz-secret"
URL = "/webhooks/mlflow"
FUZZ = settings(max_examples=80, deadline=None, database=None)
# The webhook-shaped bodies reach deepest into parsing: they get more examples.
FUZZ_WEBHOOKS = settings(FUZZ, max_examples=160)


def sign(body: bytes, delivery_id: str, timestamp: str, secret: str = SECRET) -> str:
    content = delivery_id.encode() + b"." + timestamp.encode() + b"." + body
    mac = hmac.new(secret.encode(), content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


@dataclass
class Receiver:
    client: FlaskClient
    redis: fakeredis.FakeRedis
    published: list[dict[str, Any]] = field(default_factory=list)

    def publish(self, event: dict[str, Any]) -> None:
        self.published.append(event)

    def post(self, body: bytes, headers: dict[str, str]) -> tuple[Any, list[dict[str, Any]]]:
        """Post on a clean slate: no example sees what an earlier one left in Redis."""
        self.redis.flushall()
        self.published.clear()
        response = self.client.post(URL, data=body, headers=headers)
        return response, list(self.published)


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    redis_client = fakeredis.FakeRedis()
    receiver = Receiver(client=None, redis=redis_client)  # type: ignore[arg-type]
    app = create_app(
        Settings(webhook_secret=SECRET), redis_client=redis_client, publish=receiver.publish
    )
    receiver.client = app.test_client()
    yield receiver
    redis_client.close()


def assert_the_invariants(response: Any, published: list[dict[str, Any]]) -> None:
    status = response.status_code
    # never a server error
    assert status < 500, (status, response.get_data())
    # published exactly once on 202, never otherwise
    assert len(published) == (1 if status == 202 else 0), (status, published)
    # every answer is JSON; a 4xx says why
    body = response.get_json(silent=True)
    assert isinstance(body, dict), response.get_data()
    if 400 <= status < 500:
        assert isinstance(body.get("message"), str)
        assert body["message"].strip()


def assert_the_worker_can_read(event: dict[str, Any], delivery_id: str) -> None:
    """What is published is an event the worker parses back unchanged, with well-typed fields."""
    assert GateEvent.from_dict(event).to_dict() == event
    assert event["event_id"] == delivery_id
    assert (event["registry"], event["origin"]) == ("mlflow", "webhook")
    assert event["kind"] in ("request", "alias_created", "alias_deleted")
    assert isinstance(event["model"], str)
    assert event["model"]
    version = event["version"]
    assert version is None or (isinstance(version, str) and version.isascii() and version.isdigit())
    assert isinstance(event["target"], str)
    assert isinstance(event["webhook_event"], str)


# --- strategies --------------------------------------------------------------------------------

# Header values as a WSGI server hands them over: printable latin-1, no line breaks.
header_text = st.text(
    st.characters(codec="latin-1", categories=["L", "N", "P", "S", "Zs"]), max_size=60
)
# What MLflow sends as a delivery id is a UUID; any token without blanks must verify.
delivery_ids = st.text(string.ascii_letters + string.digits + "-_.:", min_size=1, max_size=40)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(["", "1", "3", "governance.request", "champion", "Production"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


# Webhooks as MLflow sends them, the three the gate acts on and two it ignores.
TEMPLATES: list[dict[str, Any]] = [
    {
        "entity": "model_version_tag",
        "action": "set",
        "data": {
            "name": "fraud-detector",
            "version": "3",
            "key": "governance.request",
            "value": "champion",
        },
    },
    {
        "entity": "model_version_alias",
        "action": "created",
        "data": {"name": "fraud-detector", "alias": "champion", "version": "3"},
    },
    {
        "entity": "model_version_alias",
        "action": "deleted",
        "data": {"name": "fraud-detector", "alias": "champion"},
    },
    {
        "entity": "model_version_tag",
        "action": "set",
        "data": {"name": "m", "version": "1", "key": "governance.status", "value": "approved"},
    },
    {"entity": "registered_model", "action": "created", "data": {"name": "m", "tags": {}}},
]


def paths(template: dict[str, Any]) -> list[tuple[str, ...]]:
    """Every field of a webhook, the fields inside 'data' included."""
    found: list[tuple[str, ...]] = []
    for key, value in template.items():
        found.append((key,))
        if isinstance(value, dict):
            found += [(key, *inner) for inner in paths(value)]
    return found


@st.composite
def mutated(draw: st.DrawFn, template: dict[str, Any]) -> dict[str, Any]:
    """A real webhook with a few of its fields dropped or set to any JSON value of any type."""
    result = copy.deepcopy(template)
    result["timestamp"] = "2025-01-01T00:00:00+00:00"
    # The innermost fields first: hypothesis favours the front of a list to choose from
    choices = sorted(paths(result), key=len, reverse=True)
    targets = draw(st.lists(st.sampled_from(choices), max_size=3, unique=True))
    for path in targets:
        parent = result
        for key in path[:-1]:
            parent = parent.get(key) if isinstance(parent, dict) else None
        if not isinstance(parent, dict) or path[-1] not in parent:
            continue  # an enclosing field was dropped or replaced already
        if draw(st.booleans()):
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(json_values)
    if draw(st.booleans()):  # and maybe an extra field of any kind
        result[draw(st.text(max_size=8))] = draw(json_values)
    return result


webhook_dicts = st.sampled_from(TEMPLATES).flatmap(mutated)


@st.composite
def json_bodies(draw: st.DrawFn, values: st.SearchStrategy[Any]) -> bytes:
    value = draw(values)
    return json.dumps(value, ensure_ascii=draw(st.booleans())).encode()


bodies = st.one_of(
    st.binary(max_size=300),
    json_bodies(json_values),
    json_bodies(webhook_dicts),
)

# Ways a request can fail to be MLflow's: each returns headers for the body.
FORGERIES = [
    "missing-signature",
    "missing-delivery-id",
    "missing-timestamp",
    "wrong-secret",
    "stale",
    "future",
    "other-body",
    "other-delivery-id",
    "garbage-signature",
    "garbage-timestamp",
    "arbitrary",
]


@st.composite
def forged_headers(draw: st.DrawFn, body: bytes) -> dict[str, str]:
    how = draw(st.sampled_from(FORGERIES))
    delivery_id = draw(delivery_ids)
    now = int(time.time())
    timestamp = str(now)
    headers = {
        "Content-Type": "application/json",
        "X-MLflow-Delivery-Id": delivery_id,
        "X-MLflow-Timestamp": timestamp,
        "X-MLflow-Signature": sign(body, delivery_id, timestamp),
    }
    if how == "missing-signature":
        del headers["X-MLflow-Signature"]
    elif how == "missing-delivery-id":
        del headers["X-MLflow-Delivery-Id"]
    elif how == "missing-timestamp":
        del headers["X-MLflow-Timestamp"]
    elif how == "wrong-secret":
        secret = draw(st.text(min_size=1, max_size=20).filter(lambda s: s != SECRET))
        headers["X-MLflow-Signature"] = sign(body, delivery_id, timestamp, secret)
    elif how in ("stale", "future"):
        off = draw(st.integers(min_value=301, max_value=10**9))
        timestamp = str(max(now - off, 0) if how == "stale" else now + off)
        headers["X-MLflow-Timestamp"] = timestamp
        headers["X-MLflow-Signature"] = sign(body, delivery_id, timestamp)
    elif how == "other-body":
        other = draw(st.binary(max_size=50).filter(lambda b: b != body))
        headers["X-MLflow-Signature"] = sign(other, delivery_id, timestamp)
    elif how == "other-delivery-id":
        headers["X-MLflow-Delivery-Id"] = draw(delivery_ids.filter(lambda d: d != delivery_id))
    elif how == "garbage-signature":
        headers["X-MLflow-Signature"] = draw(header_text)
    elif how == "garbage-timestamp":
        headers["X-MLflow-Timestamp"] = draw(header_text.filter(lambda t: t != timestamp))
    else:
        headers = draw(
            st.dictionaries(
                st.sampled_from(
                    [
                        "X-MLflow-Delivery-Id",
                        "X-MLflow-Timestamp",
                        "X-MLflow-Signature",
                        "Content-Type",
                    ]
                ),
                header_text,
            )
        )
    return headers


def valid_headers(body: bytes, delivery_id: str) -> dict[str, str]:
    timestamp = str(int(time.time()))
    return {
        "Content-Type": "application/json",
        "X-MLflow-Delivery-Id": delivery_id,
        "X-MLflow-Timestamp": timestamp,
        "X-MLflow-Signature": sign(body, delivery_id, timestamp),
    }


# --- properties --------------------------------------------------------------------------------


@FUZZ
@given(body=bodies, delivery_id=delivery_ids)
def test_a_correctly_signed_body_is_never_401_nor_5xx(
    receiver: Receiver, body: bytes, delivery_id: str
) -> None:
    # Given any body, correctly signed just now
    # When it is posted
    response, published = receiver.post(body, valid_headers(body, delivery_id))
    # Then it is judged on its content: accepted, ignored or bad, never unauthorized or a crash
    assert_the_invariants(response, published)
    assert response.status_code in (200, 202, 400), response.get_data()
    if response.status_code == 202:
        assert response.json["event_id"] == delivery_id
        assert_the_worker_can_read(published[0], delivery_id)


def tag_set(**data: Any) -> dict[str, Any]:
    fields = {"name": "m", "version": "1", "key": "governance.request", "value": "champion"}
    return {"entity": "model_version_tag", "action": "set", "data": {**fields, **data}}


@FUZZ_WEBHOOKS
@given(payload=webhook_dicts, delivery_id=delivery_ids)
@example(payload=tag_set(version=[1]), delivery_id="d-1")
@example(payload=tag_set(version="one"), delivery_id="d-1")
@example(payload=tag_set(version=1.5), delivery_id="d-1")
@example(payload=tag_set(name={"n": 1}), delivery_id="d-1")
@example(payload=tag_set(value=None), delivery_id="d-1")
@example(payload={**tag_set(), "entity": ["model_version_tag"]}, delivery_id="d-1")
def test_a_signed_webhook_shaped_body_is_accepted_only_as_a_complete_event(
    receiver: Receiver, payload: dict[str, Any], delivery_id: str
) -> None:
    # Given a dict shaped like an MLflow webhook with arbitrary field values and types
    body = json.dumps(payload).encode()
    # When it is posted, correctly signed
    response, published = receiver.post(body, valid_headers(body, delivery_id))
    # Then the invariants hold; a refusal names the field at fault; what is published names the
    # model the payload named
    assert_the_invariants(response, published)
    assert response.status_code in (200, 202, 400), response.get_data()
    if response.status_code == 400:
        assert "field '" in response.json["message"]
    if response.status_code == 202:
        event = published[0]
        assert_the_worker_can_read(event, delivery_id)
        assert event["model"] == payload["data"]["name"]
        assert f"{payload['entity']}.{payload['action']}" == event["webhook_event"]


@FUZZ
@given(data=st.data(), body=bodies)
def test_a_request_without_a_valid_signature_is_401_and_publishes_nothing(
    receiver: Receiver, data: st.DataObject, body: bytes
) -> None:
    # Given any body, with headers missing, forged, stale or garbled
    headers = data.draw(forged_headers(body))
    # When it is posted
    response, published = receiver.post(body, headers)
    # Then it is refused as unauthorized, before anything else, and nothing is published
    assert_the_invariants(response, published)
    assert response.status_code == 401, (headers, response.get_data())
    assert response.json["status"] == "unauthorized"
