"""Databricks registry webhooks: signature checks against vectors computed here with hmac and
hashlib (independently of shared.databricks), payload parsing, and the receiver's route."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import datetime, timezone
from typing import Any

import fakeredis
import pytest
from flask.testing import FlaskClient

from receiver.app import create_app
from shared import databricks, keys
from shared.errors import ConfigError, EventError, SignatureError
from shared.events import GateEvent, Kind, Origin, RegistryKind
from shared.settings import DatabricksSettings, Settings

SECRET = "dbx-unit-secret"
URL = "/webhooks/databricks"


def hex_hmac(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def body(**fields: Any) -> bytes:
    payload: dict[str, Any] = {
        "event": "TRANSITION_REQUEST_CREATED",
        "webhook_id": "c5596721253c4b429368cf6f4341b88a",
        "event_timestamp": 1589859029343,
        "model_name": "Airline_Delay_SparkML",
        "version": "8",
        "to_stage": "Production",
        "from_stage": "None",
        "text": "Registered model 'Airline_Delay_SparkML' version 8 transition requested.",
    }
    payload.update(fields)
    return json.dumps({k: v for k, v in payload.items() if v is not None}).encode()


# --- signatures ----------------------------------------------------------------------------


def verify(
    *,
    secret: str | None,
    authorization: str | None,
    signature_header: str | None,
    authorization_header: str | None,
    body: bytes,
) -> None:
    """Verify `body` sent with the given headers (None: not sent) against what is configured."""
    headers = {
        name: value
        for name, value in (
            ("X-Databricks-Signature", signature_header),
            ("Authorization", authorization_header),
        )
        if value is not None
    }
    databricks.DatabricksVerifier(secret, authorization).verify(body, headers)


def test_sign_matches_a_fixed_vector() -> None:
    # A vector computed once with: hmac.new(b"key", b"The quick brown fox...", sha256)
    text = b"The quick brown fox jumps over the lazy dog"
    expected = "f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
    assert hex_hmac("key", text) == expected
    assert databricks.DatabricksVerifier(secret="key").sign(text) == expected


def test_without_a_secret_there_is_nothing_to_sign_with() -> None:
    with pytest.raises(ConfigError, match="GATE_DATABRICKS_WEBHOOK_SECRET"):
        databricks.DatabricksVerifier(authorization="Bearer x").sign(b"{}")


def test_a_correct_signature_passes_and_is_case_insensitive() -> None:
    raw = body()
    sig = hex_hmac(SECRET, raw)
    for given in (sig, sig.upper(), f" {sig} "):
        verify(
            secret=SECRET,
            authorization=None,
            signature_header=given,
            authorization_header=None,
            body=raw,
        )


def test_header_names_are_case_insensitive() -> None:
    raw = body()
    headers = {"x-databricks-signature": hex_hmac(SECRET, raw), "AUTHORIZATION": "Bearer x"}
    databricks.DatabricksVerifier(SECRET, "Bearer x").verify(raw, headers)


@pytest.mark.parametrize(
    ("signature", "fragment"),
    [
        (None, "missing X-Databricks-Signature"),
        ("", "missing X-Databricks-Signature"),
        (hex_hmac("another-secret", body()), "does not match"),
        (hex_hmac(SECRET, body(version="9")), "does not match"),
        ("v1," + hex_hmac(SECRET, body()), "does not match"),
    ],
)
def test_a_missing_or_forged_signature_is_refused(signature: str | None, fragment: str) -> None:
    with pytest.raises(SignatureError, match=fragment):
        verify(
            secret=SECRET,
            authorization=None,
            signature_header=signature,
            authorization_header=None,
            body=body(),
        )


def test_the_authorization_header_must_match_exactly() -> None:
    raw = body()
    kwargs: dict[str, Any] = {"secret": None, "authorization": "Bearer s3cret", "body": raw}
    verify(signature_header=None, authorization_header="Bearer s3cret", **kwargs)
    for wrong in (None, "", "Bearer s3cre", "Bearer s3cret2", "bearer s3cret"):
        with pytest.raises(SignatureError, match="Authorization"):
            verify(signature_header=None, authorization_header=wrong, **kwargs)


def test_with_both_configured_both_are_required() -> None:
    raw = body()
    good = {"signature_header": hex_hmac(SECRET, raw), "authorization_header": "Bearer x"}
    verify(secret=SECRET, authorization="Bearer x", body=raw, **good)
    with pytest.raises(SignatureError):
        verify(
            secret=SECRET,
            authorization="Bearer x",
            body=raw,
            signature_header=good["signature_header"],
            authorization_header=None,
        )
    with pytest.raises(SignatureError):
        verify(
            secret=SECRET,
            authorization="Bearer x",
            body=raw,
            signature_header=None,
            authorization_header="Bearer x",
        )


@pytest.mark.parametrize("empty", [None, ""])
def test_nothing_configured_is_refused_when_the_verifier_is_built(empty: str | None) -> None:
    with pytest.raises(ConfigError, match="not configured"):
        databricks.DatabricksVerifier(empty, empty)


def test_the_event_id_is_a_hash_of_the_body_whatever_the_headers() -> None:
    raw = body()
    expected = "dbx-" + hashlib.sha256(raw).hexdigest()
    assert databricks.event_id_of(raw, {}) == expected
    assert databricks.event_id_of(raw, {"X-Databricks-Signature": "x"}) == expected


# --- payloads ------------------------------------------------------------------------------


def test_a_transition_request_becomes_an_event() -> None:
    raw = body()
    event = databricks.parse_webhook(raw, received_at=100.0)
    assert event is not None
    assert (event.registry, event.origin) == (RegistryKind.DATABRICKS, Origin.WEBHOOK)
    assert event.kind is Kind.REQUEST
    assert (event.model, event.version, event.target) == (
        "Airline_Delay_SparkML",
        "8",
        "Production",
    )
    assert event.from_stage == "None"
    assert event.webhook_event == "TRANSITION_REQUEST_CREATED"
    # Dedupe on a hash of the body: no delivery id exists.
    assert event.event_id == "dbx-" + hashlib.sha256(raw).hexdigest()
    # It survives the trip through Celery's JSON.
    assert GateEvent.from_dict(json.loads(json.dumps(event.to_dict()))) == event


def test_event_timestamp_is_in_milliseconds() -> None:
    payload = databricks.parse_payload(body(event_timestamp=1589859029343))
    assert payload is not None
    assert payload.event_time == datetime(2020, 5, 19, 3, 30, 29, 343000, tzinfo=timezone.utc)


def test_stage_is_a_synonym_of_to_stage_and_stages_are_canonical() -> None:
    raw = json.loads(body())
    del raw["to_stage"]
    raw["stage"] = "production"
    event = databricks.parse_webhook(json.dumps(raw).encode(), received_at=0.0)
    assert event is not None and event.target == "Production"


@pytest.mark.parametrize(
    "name",
    [
        "TRANSITION_REQUEST_CREATED",
        "TRANSITION_REQUEST_TO_STAGING_CREATED",
        "TRANSITION_REQUEST_TO_PRODUCTION_CREATED",
        "TRANSITION_REQUEST_TO_ARCHIVED_CREATED",
    ],
)
def test_every_request_event_is_a_request(name: str) -> None:
    event = databricks.parse_webhook(body(event=name), received_at=0.0)
    assert event is not None and event.kind is Kind.REQUEST


@pytest.mark.parametrize(
    "name", ["MODEL_VERSION_TRANSITIONED_STAGE", "MODEL_VERSION_TRANSITIONED_TO_PRODUCTION"]
)
def test_transitions_are_guarded(name: str) -> None:
    event = databricks.parse_webhook(body(event=name), received_at=0.0)
    assert event is not None and event.kind is Kind.STAGE_TRANSITIONED


@pytest.mark.parametrize(
    "name", ["COMMENT_CREATED", "MODEL_VERSION_CREATED", "REGISTERED_MODEL_CREATED"]
)
def test_other_events_are_ignored(name: str) -> None:
    assert databricks.parse_webhook(body(event=name), received_at=0.0) is None


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b"not json", "not valid JSON"),
        (b"[]", "JSON object"),
        (body(event=None), "'event' is missing"),
        (body(model_name=None), "'model_name' is missing"),
        (body(model_name=7), "'model_name' must be a string"),
        (body(version="eight"), "'version' must be a version number"),
        (body(version=True), "'version' must be a version number"),
        (body(to_stage=None), "'to_stage' is missing"),
        (body(to_stage="champion"), "'to_stage' must be one of"),
        (body(event_timestamp="yesterday"), "milliseconds"),
        (body(event_timestamp=1.5), "milliseconds"),
        (body(from_stage=3), "'from_stage' must be a string"),
    ],
)
def test_malformed_payloads_name_the_field(raw: bytes, fragment: str) -> None:
    with pytest.raises(EventError, match=fragment):
        databricks.parse_webhook(raw, received_at=0.0)


def test_a_numeric_version_is_accepted() -> None:
    event = databricks.parse_webhook(body(version=8), received_at=0.0)
    assert event is not None and event.version == "8"


# --- the receiver's route ------------------------------------------------------------------


class Sink:
    def __init__(self) -> None:
        self.published: list[dict[str, Any]] = []

    def __call__(self, event: dict[str, Any]) -> None:
        self.published.append(event)


def client(
    databricks: DatabricksSettings | None = None, **settings: Any
) -> tuple[FlaskClient, Sink, fakeredis.FakeRedis]:
    redis_client = fakeredis.FakeRedis()
    sink = Sink()
    app = create_app(
        Settings(webhook_secret="mlflow-secret", databricks=databricks, **settings),
        redis_client=redis_client,
        publish=sink,
    )
    return app.test_client(), sink, redis_client


def test_the_route_accepts_a_signed_request_once() -> None:
    http, sink, redis_client = client(DatabricksSettings(webhook_secret=SECRET))
    raw = body()
    headers = {"X-Databricks-Signature": hex_hmac(SECRET, raw)}
    first = http.post(URL, data=raw, headers=headers)
    assert first.status_code == 202, first.json
    event_id = "dbx-" + hashlib.sha256(raw).hexdigest()
    assert first.json["event_id"] == event_id
    assert (sink.published[0]["registry"], sink.published[0]["origin"]) == ("databricks", "webhook")
    assert redis_client.get(keys.delivery("databricks", event_id)) == event_id.encode()
    again = http.post(URL, data=raw, headers=headers)
    assert (again.status_code, again.json["status"]) == (200, "duplicate")
    assert len(sink.published) == 1


@pytest.mark.parametrize(
    "headers",
    [{}, {"X-Databricks-Signature": "0" * 64}, {"X-Databricks-Signature": hex_hmac("x", body())}],
)
def test_the_route_refuses_unsigned_and_forged(headers: dict[str, str]) -> None:
    http, sink, _ = client(DatabricksSettings(webhook_secret=SECRET))
    response = http.post(URL, data=body(), headers=headers)
    assert response.status_code == 401
    assert not sink.published


def test_the_route_checks_the_authorization_header() -> None:
    http, sink, _ = client(DatabricksSettings(webhook_authorization="Bearer hook-token"))
    assert http.post(URL, data=body(), headers={"Authorization": "Bearer nope"}).status_code == 401
    ok = http.post(URL, data=body(), headers={"Authorization": "Bearer hook-token"})
    assert ok.status_code == 202
    assert len(sink.published) == 1


def test_the_route_answers_400_ignored_and_does_not_exist_unconfigured() -> None:
    http, sink, _ = client(DatabricksSettings(webhook_secret=SECRET))
    bad = body(version="x")
    assert (
        http.post(
            URL, data=bad, headers={"X-Databricks-Signature": hex_hmac(SECRET, bad)}
        ).status_code
        == 400
    )
    other = body(event="COMMENT_CREATED")
    ignored = http.post(
        URL, data=other, headers={"X-Databricks-Signature": hex_hmac(SECRET, other)}
    )
    assert (ignored.status_code, ignored.json["status"]) == (200, "ignored")
    assert not sink.published
    unconfigured, _, _ = client()
    assert unconfigured.post(URL, data=body()).status_code == 404


def test_a_receiver_for_databricks_only_starts_and_refuses_mlflow_webhooks() -> None:
    # Given only the Databricks webhook secret (no GATE_WEBHOOK_SECRET)
    settings = Settings(databricks=DatabricksSettings(webhook_secret="dbx-secret"))
    app = create_app(settings, redis_client=fakeredis.FakeRedis(), publish=lambda event: None)
    # When an MLflow webhook arrives, Then it is refused: nothing can verify it
    response = app.test_client().post("/webhooks/mlflow", data=b"{}")
    assert response.status_code == 401
    assert "GATE_WEBHOOK_SECRET" in response.json["message"]


def test_a_workspace_without_webhook_verification_has_no_route() -> None:
    # Given a workspace the workers decide, but no webhook secret or authorization
    http, _, _ = client(DatabricksSettings(host="https://dbc.example", token="t"))
    # Then the route does not exist: nothing could verify what arrives there
    assert http.post(URL, data=body()).status_code == 404


def test_unsigned_mode_routes_unverified_requests() -> None:
    # Given a receiver in unsigned development mode, without any Databricks setting
    http, sink, _ = client(allow_unsigned=True)
    # When an unsigned request arrives, Then it is accepted, its id a hash of the body
    response = http.post(URL, data=body())
    assert response.status_code == 202
    assert response.json["event_id"] == "dbx-" + hashlib.sha256(body()).hexdigest()
    assert len(sink.published) == 1
