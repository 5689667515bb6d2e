"""shared.events: MLflow webhook payloads into gate events, and nothing else gets through."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mlflow.webhooks.types import (
    ModelVersionAliasCreatedPayload,
    ModelVersionAliasDeletedPayload,
    ModelVersionCreatedPayload,
    ModelVersionTagDeletedPayload,
    ModelVersionTagSetPayload,
    PromptAliasCreatedPayload,
    RegisteredModelCreatedPayload,
)

from shared import tags
from shared.errors import EventError
from shared.events import SUBSCRIBED, GateEvent, Kind, Origin, RegistryKind, parse_mlflow_webhook

EVENT_ID = "delivery-1"
RECEIVED_AT = 1_700_000_000.5
_DROP = object()  # marks a field to remove


def webhook(entity: str, action: str, data: Any) -> bytes:
    """A body laid out as mlflow/webhooks/delivery.py sends it."""
    envelope = {
        "entity": entity,
        "action": action,
        "timestamp": "2025-01-01T00:00:00.000000+00:00",
        "data": data,
    }
    return json.dumps(envelope).encode("utf-8")


def parse(body: bytes) -> GateEvent | None:
    return parse_mlflow_webhook(body, event_id=EVENT_ID, received_at=RECEIVED_AT)


def tag_set(key: str = tags.REQUEST, value: Any = "champion", **extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = dict(ModelVersionTagSetPayload.example())
    data.update(name="fraud-detector", version="3", key=key, value=value)
    data.update(extra)
    return data


# --- the subscribed events ---------------------------------------------------------------------


def test_a_governance_request_tag_becomes_a_request_event() -> None:
    # Given MLflow's model_version_tag.set for governance.request=champion on version 3
    body = webhook("model_version_tag", "set", tag_set())
    # When it is parsed
    event = parse(body)
    # Then it is a request for that version and target, carrying the receiver's id and time
    assert event == GateEvent(
        event_id=EVENT_ID,
        registry=RegistryKind.MLFLOW,
        origin=Origin.WEBHOOK,
        kind=Kind.REQUEST,
        model="fraud-detector",
        version="3",
        target="champion",
        received_at=RECEIVED_AT,
        webhook_event="model_version_tag.set",
    )


def test_a_governance_request_with_an_empty_value_keeps_the_empty_target() -> None:
    # An empty request is passed on (the evaluation rejects it with a reason), not dropped.
    event = parse(webhook("model_version_tag", "set", tag_set(value="")))
    assert event is not None
    assert event.kind is Kind.REQUEST
    assert event.target == ""


def test_mlflows_example_alias_created_payload_becomes_an_alias_created_event() -> None:
    # Given MLflow's own example payload for model_version_alias.created
    data = ModelVersionAliasCreatedPayload.example()
    # When it is parsed
    event = parse(webhook("model_version_alias", "created", data))
    # Then the alias and version are carried over
    assert event == GateEvent(
        event_id=EVENT_ID,
        registry=RegistryKind.MLFLOW,
        origin=Origin.WEBHOOK,
        kind=Kind.ALIAS_CREATED,
        model=data["name"],
        version=data["version"],
        target=data["alias"],
        received_at=RECEIVED_AT,
        webhook_event="model_version_alias.created",
    )


def test_mlflows_example_alias_deleted_payload_becomes_an_alias_deleted_event() -> None:
    data = ModelVersionAliasDeletedPayload.example()
    event = parse(webhook("model_version_alias", "deleted", data))
    assert event == GateEvent(
        event_id=EVENT_ID,
        registry=RegistryKind.MLFLOW,
        origin=Origin.WEBHOOK,
        kind=Kind.ALIAS_DELETED,
        model=data["name"],
        version=None,
        target=data["alias"],
        received_at=RECEIVED_AT,
        webhook_event="model_version_alias.deleted",
    )


@pytest.mark.parametrize(("given", "expected"), [(7, "7"), ("7", "7"), ("007", "7")])
def test_a_version_may_be_an_int_or_a_numeric_string(given: Any, expected: str) -> None:
    event = parse(webhook("model_version_tag", "set", tag_set(version=given)))
    assert event is not None
    assert event.version == expected


# --- what the gate does not act on -------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        tags.STATUS,
        tags.TARGET,
        tags.REASON,
        tags.POLICY,
        tags.DECIDED_AT,
        tags.CHECKS,
        tags.approved_pointer("champion"),
        "data_version",
        "governance.request.note",
    ],
)
def test_other_tags_including_the_gates_own_are_ignored(key: str) -> None:
    # Given a tag set other than governance.request (the gate writes governance.status itself)
    body = webhook("model_version_tag", "set", tag_set(key=key, value="approved"))
    # When it is parsed, Then the gate does not act on it (no feedback loop)
    assert parse(body) is None


@pytest.mark.parametrize(
    ("entity", "action", "data"),
    [
        ("model_version_tag", "deleted", ModelVersionTagDeletedPayload.example()),
        ("model_version", "updated", ModelVersionCreatedPayload.example()),
        ("registered_model", "created", RegisteredModelCreatedPayload.example()),
        ("prompt_alias", "created", PromptAliasCreatedPayload.example()),
        ("model_version_alias", "updated", ModelVersionAliasCreatedPayload.example()),
        ("budget_policy", "exceeded", {"anything": ["goes", 1]}),
    ],
)
def test_unsubscribed_events_are_ignored(entity: str, action: str, data: Any) -> None:
    assert f"{entity}.{action}" not in SUBSCRIBED
    assert parse(webhook(entity, action, data)) is None


def test_a_version_created_with_a_request_tag_is_a_request() -> None:
    # Given a version created with governance.request among its tags (no tag.set is sent then)
    data = {**ModelVersionCreatedPayload.example(), "tags": {tags.REQUEST: "Production"}}
    # When its model_version.created webhook is parsed
    event = parse(webhook("model_version", "created", data))
    # Then it is a request for that version and target
    assert event is not None
    assert (event.kind, event.model, event.version, event.target) == (
        Kind.REQUEST, "example_model", "1", "Production",
    )  # fmt: skip


@pytest.mark.parametrize("version_tags", [{}, {"example_key": "v"}, None])
def test_a_version_created_without_a_request_is_ignored(version_tags: Any) -> None:
    data = {**ModelVersionCreatedPayload.example(), "tags": version_tags}
    assert parse(webhook("model_version", "created", data)) is None


@pytest.mark.parametrize("version_tags", [["governance.request"], {tags.REQUEST: 1}])
def test_a_version_created_with_malformed_tags_is_an_event_error(version_tags: Any) -> None:
    data = {**ModelVersionCreatedPayload.example(), "tags": version_tags}
    with pytest.raises(EventError, match=r"data\.tags"):
        parse(webhook("model_version", "created", data))


def test_an_unsubscribed_event_is_ignored_without_looking_at_its_data() -> None:
    assert parse(webhook("registered_model", "created", None)) is None


# --- malformed bodies --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body", [b"", b"{", b"not json", b'{"entity": "x",}', b"\xff\xfe\xfa"], ids=repr
)
def test_a_body_that_is_not_json_is_an_event_error(body: bytes) -> None:
    with pytest.raises(EventError, match="not valid JSON"):
        parse(body)


@pytest.mark.parametrize("body", [b"[]", b'"model_version_tag.set"', b"42", b"null", b"true"])
def test_a_body_that_is_not_an_object_is_an_event_error(body: bytes) -> None:
    with pytest.raises(EventError, match="must be a JSON object"):
        parse(body)


def _envelope(**fields: Any) -> bytes:
    payload: dict[str, Any] = {"entity": "model_version_tag", "action": "set", "data": tag_set()}
    for key, value in fields.items():
        if value is _DROP:
            payload.pop(key)
        else:
            payload[key] = value
    return json.dumps(payload).encode()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (_envelope(entity=_DROP), "field 'entity' is missing"),
        (_envelope(entity=None), "field 'entity' is missing"),
        (_envelope(entity=3), "field 'entity' must be a string, not int"),
        (_envelope(entity=""), "field 'entity' is empty"),
        (_envelope(action=_DROP), "field 'action' is missing"),
        (_envelope(action=["set"]), "field 'action' must be a string, not list"),
        (_envelope(data=_DROP), "field 'data' is missing or not an object"),
        (_envelope(data="name=m"), "field 'data' is missing or not an object"),
        (_envelope(data=[tag_set()]), "field 'data' is missing or not an object"),
    ],
)
def test_a_bad_envelope_names_the_field(body: bytes, message: str) -> None:
    with pytest.raises(EventError) as excinfo:
        parse(body)
    assert message in str(excinfo.value)


def _without(data: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k != key}


ALIAS_CREATED = dict(ModelVersionAliasCreatedPayload.example())


@pytest.mark.parametrize(
    ("entity", "action", "data", "message"),
    [
        ("model_version_tag", "set", _without(tag_set(), "name"), "field 'data.name' is missing"),
        ("model_version_tag", "set", tag_set(name=12), "field 'data.name' must be a string"),
        ("model_version_tag", "set", tag_set(name=""), "field 'data.name' is empty"),
        ("model_version_tag", "set", _without(tag_set(), "key"), "field 'data.key' is missing"),
        ("model_version_tag", "set", tag_set(key=1), "field 'data.key' must be a string"),
        ("model_version_tag", "set", _without(tag_set(), "value"), "field 'data.value' is missing"),
        ("model_version_tag", "set", tag_set(value=5), "field 'data.value' must be a string"),
        ("model_version_tag", "set", _without(tag_set(), "version"), "field 'data.version'"),
        ("model_version_tag", "set", tag_set(version="latest"), "field 'data.version'"),
        ("model_version_tag", "set", tag_set(version=""), "field 'data.version'"),
        ("model_version_tag", "set", tag_set(version="-1"), "field 'data.version'"),
        ("model_version_tag", "set", tag_set(version=-1), "field 'data.version'"),
        ("model_version_tag", "set", tag_set(version=1.5), "field 'data.version'"),
        ("model_version_tag", "set", tag_set(version=True), "field 'data.version'"),
        ("model_version_tag", "set", tag_set(version="\u0663"), "field 'data.version'"),
        (
            "model_version_alias",
            "created",
            _without(ALIAS_CREATED, "alias"),
            "field 'data.alias' is missing",
        ),
        (
            "model_version_alias",
            "created",
            _without(ALIAS_CREATED, "version"),
            "field 'data.version'",
        ),
        (
            "model_version_alias",
            "deleted",
            {"name": "m", "alias": None},
            "field 'data.alias' is missing",
        ),
        ("model_version_alias", "deleted", {"alias": "champion"}, "field 'data.name' is missing"),
    ],
)
def test_a_subscribed_event_with_a_bad_field_names_the_field(
    entity: str, action: str, data: dict[str, Any], message: str
) -> None:
    # Given a subscribed event whose data lacks a field or has the wrong type
    # When it is parsed, Then EventError names the field
    with pytest.raises(EventError) as excinfo:
        parse(webhook(entity, action, data))
    assert message in str(excinfo.value)


def test_deeply_nested_json_is_an_event_error() -> None:
    body = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(EventError):
        parse(body)


def test_a_json_integer_too_long_to_convert_is_an_event_error() -> None:
    body = b'{"entity": "model_version_tag", "action": ' + b"1" * 5000 + b"}"
    with pytest.raises(EventError):
        parse(body)


def test_a_version_string_too_long_to_convert_is_an_event_error() -> None:
    body = webhook("model_version_tag", "set", tag_set(version="1" * 5000))
    with pytest.raises(EventError, match=r"data\.version"):
        parse(body)


# --- GateEvent round trip ----------------------------------------------------------------------

MLFLOW_WEBHOOK = (RegistryKind.MLFLOW, Origin.WEBHOOK)
EVENTS = [
    GateEvent(
        "d-1", *MLFLOW_WEBHOOK, Kind.REQUEST, "m", "3", "champion", 1.5, "model_version_tag.set"
    ),
    GateEvent("d-2", *MLFLOW_WEBHOOK, Kind.REQUEST, "m", "3", "", 0.0, "model_version_tag.set"),
    GateEvent(
        "d-3",
        *MLFLOW_WEBHOOK,
        Kind.ALIAS_CREATED,
        "m",
        "4",
        "champion",
        2.0,
        "model_version_alias.created",
    ),
    GateEvent(
        "d-4",
        *MLFLOW_WEBHOOK,
        Kind.ALIAS_DELETED,
        "m",
        None,
        "champion",
        3.0,
        "model_version_alias.deleted",
    ),
]


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: e.event_id)
def test_an_event_survives_a_json_round_trip(event: GateEvent) -> None:
    # Given an event, When it goes through to_dict, JSON (as Celery sends it) and from_dict
    data = event.to_dict()
    back = GateEvent.from_dict(json.loads(json.dumps(data)))
    # Then it is the same event, and its kind travels as the plain string value
    assert back == event
    assert data["kind"] == event.kind.value
    assert type(data["kind"]) is str


@pytest.mark.parametrize(
    ("source", "registry", "origin"),
    [("mlflow", RegistryKind.MLFLOW, Origin.WEBHOOK), ("sweep", RegistryKind.MLFLOW, Origin.SWEEP)],
)
def test_an_event_written_before_the_registry_origin_split_still_reads(
    source: str, registry: RegistryKind, origin: Origin
) -> None:
    # Given an event as queued or dead-lettered by an older gate: one `source`, no registry/origin
    data = EVENTS[0].to_dict()
    del data["registry"], data["origin"]
    data["source"] = source
    # When it is read back, Then the source names both
    event = GateEvent.from_dict(data)
    assert (event.registry, event.origin) == (registry, origin)
    assert event.kind is Kind.REQUEST


def test_the_legacy_transition_requested_kind_reads_as_a_request() -> None:
    data = {**EVENTS[0].to_dict(), "kind": "transition_requested"}
    assert GateEvent.from_dict(data).kind is Kind.REQUEST


@pytest.mark.parametrize("garbage", [None, [], "event", 3, ["event_id", "d-1"]])
def test_from_dict_rejects_a_non_object(garbage: Any) -> None:
    with pytest.raises(EventError, match="must be a JSON object"):
        GateEvent.from_dict(garbage)


def _event_dict(**changes: Any) -> dict[str, Any]:
    data = EVENTS[0].to_dict()
    for key, value in changes.items():
        if value is _DROP:
            data.pop(key)
        else:
            data[key] = value
    return data


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_event_dict(event_id=_DROP), "event_id"),
        (_event_dict(model=7), "model"),
        (_event_dict(model=""), "model"),
        (_event_dict(registry=_DROP), "RegistryKind"),
        (_event_dict(registry="gitlab"), "gitlab"),
        (_event_dict(origin=_DROP), "Origin"),
        (_event_dict(origin="rumour"), "rumour"),
        (_event_dict(webhook_event=None), "webhook_event"),
        (_event_dict(kind="promote"), "promote"),
        (_event_dict(kind=_DROP), "None"),
        (_event_dict(version=3), "version"),
        (_event_dict(target=["champion"]), "target"),
        (_event_dict(received_at="yesterday"), "yesterday"),
        (_event_dict(received_at=None), "d-1"),
    ],
)
def test_from_dict_rejects_a_malformed_event(data: dict[str, Any], message: str) -> None:
    with pytest.raises(EventError) as excinfo:
        GateEvent.from_dict(data)
    assert message in str(excinfo.value)


# --- properties: only None, an event, or EventError --------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


def _outcome_is_allowed(body: bytes) -> None:
    try:
        result = parse(body)
    except EventError:
        return
    assert result is None or isinstance(result, GateEvent)


@settings(max_examples=200, deadline=None, database=None)
@given(body=st.binary(max_size=512))
def test_arbitrary_bytes_give_none_an_event_or_an_event_error(body: bytes) -> None:
    _outcome_is_allowed(body)


@settings(max_examples=200, deadline=None, database=None)
@given(value=json_values)
def test_arbitrary_json_gives_none_an_event_or_an_event_error(value: Any) -> None:
    _outcome_is_allowed(json.dumps(value).encode())


@settings(max_examples=200, deadline=None, database=None)
@given(
    name=st.sampled_from(SUBSCRIBED),
    data=st.dictionaries(
        st.sampled_from(["name", "version", "key", "value", "alias", "tags", "other"]),
        json_values | st.just(tags.REQUEST),
    ),
)
def test_subscribed_events_with_arbitrary_data_give_an_event_or_an_event_error(
    name: str, data: dict[str, Any]
) -> None:
    entity, action = name.split(".")
    _outcome_is_allowed(webhook(entity, action, data))
