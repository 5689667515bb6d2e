"""receiver.admin: the dead-letter store over HTTP, behind a bearer token, through the real app."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import fakeredis
import pytest
import redis
from flask.testing import FlaskClient

from receiver.app import create_app
from shared.deadletter import DeadLetterStore
from shared.errors import MlflowNotFound, MlflowUnavailable
from shared.settings import Settings

TOKEN = "t"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
REPLAY = "/admin/dlq/replay"


def gate_event(event_id: str, model: str = "fraud-detector", version: str = "3") -> dict[str, Any]:
    return {
        "event_id": event_id,
        "registry": "mlflow",
        "origin": "webhook",
        "kind": "request",
        "model": model,
        "version": version,
        "target": "champion",
        "received_at": 1_700_000_000.0,
        "webhook_event": "model_version_tag.set",
        "from_stage": None,
    }


@dataclass
class Admin:
    client: FlaskClient
    store: DeadLetterStore
    published: list[dict[str, Any]] = field(default_factory=list)
    publish_failures: list[Exception] = field(default_factory=list)

    def publish(self, event: dict[str, Any]) -> None:
        if self.publish_failures:
            raise self.publish_failures.pop(0)
        self.published.append(event)

    def replay(self, body: Any) -> Any:
        return self.client.post(REPLAY, json=body, headers=AUTH)

    def ids_in_store(self) -> list[str]:
        return [e.id for e in self.store.all()]


@contextmanager
def admin_app(settings: Settings) -> Iterator[Admin]:
    redis_client = fakeredis.FakeRedis()
    admin = Admin(client=None, store=DeadLetterStore(redis_client))  # type: ignore[arg-type]
    app = create_app(settings, redis_client=redis_client, publish=admin.publish)
    admin.client = app.test_client()
    try:
        yield admin
    finally:
        redis_client.close()


@pytest.fixture
def admin() -> Iterator[Admin]:
    with admin_app(Settings(webhook_secret="s", admin_token=TOKEN)) as app:
        yield app


@pytest.fixture
def three(admin: Admin) -> Admin:
    """Three dead letters: two transient for fraud-* models, one permanent for churn."""
    admin.store.put(gate_event("evt-1", "fraud-detector", "1"), MlflowUnavailable("503"), 16)
    admin.store.put(gate_event("evt-2", "fraud-scorer", "2"), MlflowUnavailable("timeout"), 16)
    admin.store.put(gate_event("evt-3", "churn", "7"), MlflowNotFound("version 7 is gone", 404), 1)
    return admin


# --- existence and authorization ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"), [("GET", "/admin/dlq"), ("POST", REPLAY)], ids=["list", "replay"]
)
def test_without_an_admin_token_the_admin_routes_do_not_exist(method: str, path: str) -> None:
    # Given a receiver started without GATE_ADMIN_TOKEN
    with admin_app(Settings(webhook_secret="s")) as admin:
        admin.store.put(gate_event("evt-1"), MlflowUnavailable("503"), 16)
        # When anyone calls an admin route, even with a plausible token
        response = admin.client.open(path, method=method, json={"all": True}, headers=AUTH)
        # Then it is 404, and nothing was replayed
        assert response.status_code == 404
        assert admin.published == []
        assert admin.ids_in_store() == ["evt-1"]


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="missing"),
        pytest.param({"Authorization": "Bearer wrong"}, id="wrong-token"),
        pytest.param({"Authorization": TOKEN}, id="no-bearer-prefix"),
        pytest.param({"Authorization": f"Basic {TOKEN}"}, id="basic"),
        pytest.param({"Authorization": f"Bearer {TOKEN}x"}, id="token-prefix-only"),
        pytest.param({"Authorization": "Bearer "}, id="empty-token"),
        pytest.param({"Authorization": "Bearer \u00e9"}, id="non-ascii"),
    ],
)
@pytest.mark.parametrize(
    ("method", "path"), [("GET", "/admin/dlq"), ("POST", REPLAY)], ids=["list", "replay"]
)
def test_a_missing_or_wrong_bearer_token_is_401(
    three: Admin, headers: dict[str, str], method: str, path: str
) -> None:
    response = three.client.open(path, method=method, json={"all": True}, headers=headers)
    assert response.status_code == 401
    assert response.json["status"] == "unauthorized"
    assert "Bearer" in response.json["message"]
    assert "dead_letters" not in response.json
    assert three.published == []
    assert len(three.ids_in_store()) == 3


# --- listing -----------------------------------------------------------------------------------


def test_get_dlq_lists_every_entry_in_full(three: Admin) -> None:
    response = three.client.get("/admin/dlq", headers=AUTH)
    assert response.status_code == 200
    entries = response.json["dead_letters"]
    assert [e["id"] for e in entries] == ["evt-1", "evt-2", "evt-3"]
    churn = entries[2]
    assert churn["model"] == "churn"
    assert churn["version"] == "7"
    assert churn["error_class"] == "MlflowNotFound"
    assert churn["error"] == "version 7 is gone"
    assert churn["transient"] is False
    assert churn["attempts"] == 1
    assert churn["event"] == gate_event("evt-3", "churn", "7")
    assert {"first_failure", "last_failure"} <= churn.keys()


def test_get_dlq_of_an_empty_store_is_an_empty_list(admin: Admin) -> None:
    response = admin.client.get("/admin/dlq", headers=AUTH)
    assert response.status_code == 200
    assert response.json == {"dead_letters": []}


# --- replay ------------------------------------------------------------------------------------


def test_replay_by_ids_publishes_those_and_removes_them(three: Admin) -> None:
    # When two of three are replayed by id, one unknown id among them
    response = three.replay({"ids": ["evt-1", "evt-3", "nope"]})
    # Then the two are published and gone, the unknown one is reported
    assert response.status_code == 200
    assert response.json["replayed"] == ["evt-1", "evt-3"]
    assert response.json["not_found"] == ["nope"]
    assert response.json["failed"] == []
    assert response.json["dry_run"] is False
    assert response.json["summary"] == "replayed 2, failed 0, not found 1"
    assert [e["event_id"] for e in three.published] == ["evt-1", "evt-3"]
    assert three.published[1] == {**gate_event("evt-3", "churn", "7"), "origin": "replay"}
    assert three.ids_in_store() == ["evt-2"]


def test_replay_of_an_empty_id_list_does_nothing(three: Admin) -> None:
    response = three.replay({"ids": []})
    assert response.status_code == 200
    assert response.json["replayed"] == []
    assert three.published == []
    assert len(three.ids_in_store()) == 3


def test_replay_all_replays_everything(three: Admin) -> None:
    response = three.replay({"all": True})
    assert response.status_code == 200
    assert response.json["replayed"] == ["evt-1", "evt-2", "evt-3"]
    assert len(three.published) == 3
    assert three.ids_in_store() == []


@pytest.mark.parametrize(
    ("filters", "chosen"),
    [
        ({"model": "fraud-*"}, ["evt-1", "evt-2"]),
        ({"model": "churn"}, ["evt-3"]),
        ({"error": "notfound"}, ["evt-3"]),
        ({"error": "TIMEOUT"}, ["evt-2"]),
        ({"model": "fraud-*", "error": "503"}, ["evt-1"]),
        ({"model": "nothing-*"}, []),
    ],
)
def test_replay_all_with_filters_replays_only_the_matching_entries(
    three: Admin, filters: dict[str, str], chosen: list[str]
) -> None:
    response = three.replay({"all": True, **filters})
    assert response.status_code == 200
    assert response.json["replayed"] == chosen
    assert [e["event_id"] for e in three.published] == chosen
    assert three.ids_in_store() == [i for i in ("evt-1", "evt-2", "evt-3") if i not in chosen]


def test_replay_all_since_keeps_older_failures(
    admin: Admin, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given one entry that failed three hours ago and one that failed just now
    now = time.time()
    monkeypatch.setattr("shared.deadletter.time", SimpleNamespace(time=lambda: now - 3 * 3600))
    admin.store.put(gate_event("old"), MlflowUnavailable("503"), 16)
    monkeypatch.setattr("shared.deadletter.time", SimpleNamespace(time=lambda: now))
    admin.store.put(gate_event("new"), MlflowUnavailable("503"), 16)
    # When those that failed within the last 2 hours are replayed
    response = admin.replay({"all": True, "since": "2h"})
    # Then only the recent one is
    assert response.status_code == 200
    assert response.json["replayed"] == ["new"]
    assert admin.ids_in_store() == ["old"]


def test_replay_all_since_an_iso_time(admin: Admin) -> None:
    admin.store.put(gate_event("evt-1"), MlflowUnavailable("503"), 16)
    assert admin.replay({"all": True, "since": "2999-01-01T00:00Z"}).json["replayed"] == []
    assert admin.replay({"all": True, "since": "2000-01-01T00:00Z"}).json["replayed"] == ["evt-1"]


def test_a_dry_run_says_what_would_be_replayed_and_does_nothing(three: Admin) -> None:
    response = three.replay({"all": True, "model": "fraud-*", "dry_run": True})
    assert response.status_code == 200
    assert response.json["dry_run"] is True
    assert response.json["replayed"] == ["evt-1", "evt-2"]
    assert response.json["summary"] == "would replay 2, failed 0"
    assert three.published == []
    assert len(three.ids_in_store()) == 3


def test_a_dry_run_by_ids(three: Admin) -> None:
    response = three.replay({"ids": ["evt-2", "nope"], "dry_run": True})
    assert response.status_code == 200
    assert response.json["replayed"] == ["evt-2"]
    assert response.json["not_found"] == ["nope"]
    assert three.published == []
    assert len(three.ids_in_store()) == 3


def test_a_publish_that_raises_is_503_and_the_entry_is_kept(three: Admin) -> None:
    # Given the broker refuses the first publish only
    three.publish_failures.append(ConnectionError("broker gone"))
    # When two entries are replayed
    response = three.replay({"ids": ["evt-1", "evt-2"]})
    # Then 503 naming the failed entry and why; it is kept, the other went through
    assert response.status_code == 503
    assert response.json["failed"] == [
        {
            "id": "evt-1",
            "error": "ConnectionError: the event could not be enqueued; check Redis, then retry",
        }
    ]
    assert response.json["replayed"] == ["evt-2"]
    assert response.json["summary"] == "replayed 1, failed 1"
    assert [e["event_id"] for e in three.published] == ["evt-2"]
    assert three.ids_in_store() == ["evt-1", "evt-3"]


# --- bad bodies --------------------------------------------------------------------------------


def test_a_body_that_is_not_json_is_400(three: Admin) -> None:
    response = three.client.post(
        REPLAY, data=b"ids=evt-1", headers={**AUTH, "Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json["status"] == "bad_request"
    assert "JSON object" in response.json["message"]
    assert three.published == []


def test_a_body_without_a_json_content_type_is_400(three: Admin) -> None:
    response = three.client.post(REPLAY, data=b'{"all": true}', headers=AUTH)
    assert response.status_code == 400
    assert three.published == []


@pytest.mark.parametrize(
    ("body", "words"),
    [
        pytest.param([], "JSON object", id="a-list"),
        pytest.param("all", "JSON object", id="a-string"),
        pytest.param(None, "JSON object", id="null"),
        pytest.param({}, "either", id="neither"),
        pytest.param({"model": "fraud-*"}, "either", id="filters-without-all"),
        pytest.param({"all": False}, "either", id="all-false"),
        pytest.param({"all": "true"}, "either", id="all-a-string"),
        pytest.param({"ids": ["evt-1"], "all": True}, "either", id="both"),
        pytest.param({"ids": "evt-1"}, "'ids'", id="ids-a-string"),
        pytest.param({"ids": [1, 2]}, "'ids'", id="ids-numbers"),
        pytest.param({"ids": ["evt-1", None]}, "'ids'", id="ids-with-null"),
        pytest.param({"ids": {"evt-1": True}}, "'ids'", id="ids-an-object"),
        pytest.param({"all": True, "model": 3}, "strings", id="model-a-number"),
        pytest.param({"all": True, "error": ["x"]}, "strings", id="error-a-list"),
        pytest.param({"all": True, "since": 7200}, "strings", id="since-a-number"),
        pytest.param({"all": True, "since": "yesterday"}, "30m", id="since-garbage"),
        pytest.param({"all": True, "since": "2 weeks"}, "ISO", id="since-weeks"),
    ],
)
def test_a_bad_body_is_400_with_a_message_and_replays_nothing(
    three: Admin, body: Any, words: str
) -> None:
    response = three.replay(body)
    assert response.status_code == 400
    assert response.json["status"] == "bad_request"
    assert words in response.json["message"]
    assert three.published == []
    assert len(three.ids_in_store()) == 3


@pytest.mark.parametrize("dry_run", ["true", 1, "yes"])
def test_a_dry_run_that_is_not_a_boolean_is_refused_not_taken_for_a_real_replay(
    three: Admin, dry_run: Any
) -> None:
    # Given an operator who asks for a dry run, spelled loosely
    response = three.replay({"all": True, "dry_run": dry_run})
    # Then nothing is replayed (the body is refused as malformed)
    assert three.published == []
    assert len(three.ids_in_store()) == 3
    assert response.status_code == 400
    assert "dry_run" in response.json["message"]


def test_filters_with_a_list_of_ids_are_refused_rather_than_ignored(three: Admin) -> None:
    response = three.replay({"ids": ["evt-1"], "model": "churn*"})
    assert response.status_code == 400
    assert "'all': true" in response.json["message"]
    assert three.published == []
    assert three.ids_in_store() == ["evt-1", "evt-2", "evt-3"]


def test_the_admin_routes_answer_503_not_500_when_redis_is_down() -> None:
    # Given a receiver whose Redis is down
    server = fakeredis.FakeServer()
    redis_client = fakeredis.FakeRedis(server=server)
    app = create_app(
        Settings(webhook_secret="s", admin_token=TOKEN),
        redis_client=redis_client,
        publish=lambda event: None,
    )
    server.connected = False
    client = app.test_client()
    # When tooling lists or replays dead letters
    listed = client.get("/admin/dlq", headers=AUTH)
    replayed = client.post(REPLAY, json={"all": True}, headers=AUTH)
    # Then it is told to retry later, with a reason
    assert (listed.status_code, replayed.status_code) == (503, 503)
    assert "Redis" in listed.json["message"]


def test_redis_errors_are_answered_without_their_text_and_logged_without_password(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Given Redis and the broker fail with errors naming their host and password
    leak = "Error connecting to redis://gate:hunter2@redis.internal.example:6379"
    with admin_app(Settings(webhook_secret="s", admin_token=TOKEN)) as admin:
        admin.store.put(gate_event("evt-1"), MlflowUnavailable("503"), 16)
        admin.publish_failures.append(ConnectionError(leak))

        def fail(*args: object, **kwargs: object) -> None:
            raise redis.ConnectionError(leak)

        # When tooling replays (the publish fails), then lists (Redis fails)
        with caplog.at_level(logging.WARNING):
            replayed = admin.replay({"ids": ["evt-1"]})
            monkeypatch.setattr(admin.store.client, "zrange", fail)
            listed = admin.client.get("/admin/dlq", headers=AUTH)
    # Then both answer 503 saying what to do, without the errors' text
    assert (replayed.status_code, listed.status_code) == (503, 503)
    for answered in (replayed, listed):
        text = answered.get_data(as_text=True)
        assert "hunter2" not in text and "redis.internal.example" not in text
    assert listed.json["message"].startswith("Redis did not answer (ConnectionError); check")
    # And the log has the detail, with the password hidden
    assert caplog.text.count("redis://gate:***@redis.internal.example") == 2
    assert "hunter2" not in caplog.text
