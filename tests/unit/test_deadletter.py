"""shared.deadletter: the store in Redis, the filters, and replay that never loses an entry."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import fakeredis
import pytest
import redis

from shared import keys
from shared.deadletter import DeadLetter, DeadLetterStore, ReplayReport, replay, select
from shared.errors import (
    MlflowNotFound,
    MlflowRequestError,
    MlflowUnavailable,
    PermanentError,
    TransientError,
)


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


class Clock:
    """Stands in for time.time() inside shared.deadletter."""

    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock(1_800_000_000.0)
    monkeypatch.setattr("shared.deadletter.time", fake)
    return fake


@pytest.fixture
def client() -> Iterator[fakeredis.FakeRedis]:
    client = fakeredis.FakeRedis()
    yield client
    client.close()


@pytest.fixture
def store(client: fakeredis.FakeRedis) -> DeadLetterStore:
    return DeadLetterStore(client)


@dataclass
class Recorder:
    """A publish function that records, and raises the queued failures first."""

    published: list[dict[str, Any]] = field(default_factory=list)
    failures: dict[str, Exception] = field(default_factory=dict)  # event id -> error to raise

    def __call__(self, event: dict[str, Any]) -> None:
        failure = self.failures.get(event["event_id"])
        if failure is not None:
            raise failure
        self.published.append(event)


# --- the store ---------------------------------------------------------------------------------


def test_put_then_get_returns_the_entry_with_the_original_event(
    store: DeadLetterStore, clock: Clock
) -> None:
    # Given an event that failed for good after 3 attempts
    event = gate_event("evt-1")
    # When it is dead-lettered
    put = store.put(event, MlflowNotFound("version 3 of fraud-detector is gone", 404), 3)
    # Then it can be read back in full
    got = store.get("evt-1")
    assert got == put
    assert got == DeadLetter(
        id="evt-1",
        event=event,
        error_class="MlflowNotFound",
        error="version 3 of fraud-detector is gone",
        transient=False,
        attempts=3,
        first_failure=clock.now,
        last_failure=clock.now,
        model="fraud-detector",
        version="3",
    )


def test_get_of_an_unknown_id_is_none(store: DeadLetterStore) -> None:
    assert store.get("never-put") is None


def test_entries_are_stored_as_json_under_the_documented_keys(
    store: DeadLetterStore, client: fakeredis.FakeRedis, clock: Clock
) -> None:
    store.put(gate_event("evt-1"), MlflowUnavailable("MLflow answered 503"), 16)
    raw = client.hget(keys.DEADLETTER, "evt-1")
    assert raw is not None
    assert json.loads(raw)["error"] == "MLflow answered 503"
    assert client.zscore(keys.DEADLETTER_INDEX, "evt-1") == clock.now


def test_a_second_put_of_the_same_id_keeps_the_first_failure(
    store: DeadLetterStore, clock: Clock
) -> None:
    # Given an event dead-lettered once
    first = store.put(gate_event("evt-1"), MlflowUnavailable("timeout"), 16)
    # When it fails again later (after a replay) with another error
    clock.now += 3600
    second = store.put(gate_event("evt-1"), MlflowNotFound("gone", 404), 1)
    # Then there is still one entry; it keeps the first failure time and has the latest error
    assert store.count() == 1
    assert second.first_failure == first.first_failure == clock.now - 3600
    assert second.last_failure == clock.now
    assert store.get("evt-1") == second
    assert second.error_class == "MlflowNotFound"
    assert second.attempts == 1


def test_an_explicit_first_failure_is_kept(store: DeadLetterStore, clock: Clock) -> None:
    entry = store.put(gate_event("evt-1"), TransientError("x"), 2, first_failure=clock.now - 60)
    assert entry.first_failure == clock.now - 60
    assert entry.last_failure == clock.now


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (TransientError("flaky"), True),
        (MlflowUnavailable("MLflow answered 503"), True),
        (redis.ConnectionError("Redis went away"), True),
        (redis.TimeoutError("Redis timed out"), True),
        (PermanentError("bad event"), False),
        (MlflowRequestError("forbidden", 403), False),
        (MlflowNotFound("no such version", 404), False),
        (ValueError("a bug"), False),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v),
)
def test_transient_is_true_only_for_failures_that_may_go_away(
    store: DeadLetterStore, error: BaseException, transient: bool
) -> None:
    entry = store.put(gate_event("evt-1"), error, 1)
    assert entry.transient is transient
    assert entry.error_class == type(error).__name__
    stored = store.get("evt-1")
    assert stored is not None
    assert stored.transient is transient


def test_an_event_without_model_or_version_is_stored_with_none(store: DeadLetterStore) -> None:
    event = {"event_id": "evt-1", "kind": "alias_deleted", "model": "m", "version": None}
    entry = store.put(event, PermanentError("x"), 1)
    assert entry.model == "m"
    assert entry.version is None


def test_an_event_without_an_id_still_gets_an_entry(store: DeadLetterStore) -> None:
    entry = store.put({"kind": "request"}, PermanentError("no id"), 1)
    assert entry.id.startswith("unknown-")
    assert store.get(entry.id) == entry


def test_all_lists_entries_oldest_failure_first(store: DeadLetterStore, clock: Clock) -> None:
    for event_id in ("c", "a", "b"):
        store.put(gate_event(event_id), TransientError("x"), 1)
        clock.now += 1
    # "c" failing again moves it to the end
    store.put(gate_event("c"), TransientError("again"), 2)
    assert [e.id for e in store.all()] == ["a", "b", "c"]


def test_all_works_with_a_client_that_decodes_responses(clock: Clock) -> None:
    client = fakeredis.FakeRedis(decode_responses=True)
    store = DeadLetterStore(client)
    store.put(gate_event("evt-1"), TransientError("x"), 1)
    assert [e.id for e in store.all()] == ["evt-1"]
    client.close()


def test_remove_deletes_the_entry_and_its_index(
    store: DeadLetterStore, client: fakeredis.FakeRedis
) -> None:
    store.put(gate_event("evt-1"), TransientError("x"), 1)
    store.put(gate_event("evt-2"), TransientError("x"), 1)
    assert store.remove("evt-1") is True
    assert store.get("evt-1") is None
    assert client.zscore(keys.DEADLETTER_INDEX, "evt-1") is None
    assert [e.id for e in store.all()] == ["evt-2"]
    assert store.count() == 1


def test_remove_of_an_unknown_id_is_false(store: DeadLetterStore) -> None:
    assert store.remove("never-put") is False


def test_purge_deletes_everything_and_says_how_many(
    store: DeadLetterStore, client: fakeredis.FakeRedis
) -> None:
    for event_id in ("a", "b", "c"):
        store.put(gate_event(event_id), TransientError("x"), 1)
    assert store.count() == 3
    assert store.purge() == 3
    assert store.count() == 0
    assert store.all() == []
    assert not client.exists(keys.DEADLETTER, keys.DEADLETTER_INDEX)


def test_purge_of_an_empty_store_is_zero(store: DeadLetterStore) -> None:
    assert store.purge() == 0


# --- select ------------------------------------------------------------------------------------


def letter(
    entry_id: str,
    *,
    model: str | None = "fraud-detector",
    error_class: str = "MlflowUnavailable",
    error: str = "MLflow answered 503",
    transient: bool = True,
    last_failure: float = 1_000.0,
) -> DeadLetter:
    return DeadLetter(
        id=entry_id,
        event=gate_event(entry_id),
        error_class=error_class,
        error=error,
        transient=transient,
        attempts=1,
        first_failure=last_failure,
        last_failure=last_failure,
        model=model,
        version="1",
    )


def ids(entries: list[DeadLetter]) -> list[str]:
    return [e.id for e in entries]


def test_select_without_filters_keeps_everything_in_order() -> None:
    entries = [letter("a"), letter("b"), letter("c")]
    assert select(entries) == entries


def test_select_by_model_glob() -> None:
    entries = [
        letter("a", model="fraud-detector"),
        letter("b", model="fraud-scorer"),
        letter("c", model="churn"),
        letter("d", model=None),
    ]
    assert ids(select(entries, model="fraud-*")) == ["a", "b"]
    assert ids(select(entries, model="churn")) == ["c"]
    assert ids(select(entries, model="*")) == ["a", "b", "c", "d"]
    # model names are case-sensitive, like MLflow's
    assert ids(select(entries, model="Fraud-*")) == []


def test_select_by_error_matches_class_or_message_case_insensitively() -> None:
    entries = [
        letter("a", error_class="MlflowUnavailable", error="MLflow answered 503"),
        letter("b", error_class="MlflowNotFound", error="version 3 does not exist"),
        letter("c", error_class="ConnectionError", error="Redis went away"),
    ]
    assert ids(select(entries, error="notfound")) == ["b"]
    assert ids(select(entries, error="DOES NOT EXIST")) == ["b"]
    assert ids(select(entries, error="mlflow")) == ["a", "b"]
    assert ids(select(entries, error="redis")) == ["c"]
    assert ids(select(entries, error="nothing like it")) == []


def test_select_since_keeps_failures_at_or_after_the_time() -> None:
    entries = [letter("old", last_failure=100.0), letter("edge", last_failure=200.0)]
    entries.append(letter("new", last_failure=300.0))
    assert ids(select(entries, since=200.0)) == ["edge", "new"]
    assert ids(select(entries, since=301.0)) == []


def test_select_since_looks_at_the_last_failure_not_the_first() -> None:
    entry = replace(letter("a", last_failure=500.0), first_failure=100.0)
    assert ids(select([entry], since=200.0)) == ["a"]


def test_select_transient_only() -> None:
    entries = [letter("t", transient=True), letter("p", transient=False)]
    assert ids(select(entries, transient_only=True)) == ["t"]
    assert ids(select(entries, transient_only=False)) == ["t", "p"]


def test_select_filters_combine() -> None:
    entries = [
        letter("match", model="fraud-a", error="MLflow answered 503", last_failure=300.0),
        letter("wrong-model", model="churn", last_failure=300.0),
        letter("wrong-error", model="fraud-b", error_class="MlflowNotFound", error="gone"),
        letter("too-old", model="fraud-c", last_failure=100.0),
        letter("permanent", model="fraud-d", transient=False, last_failure=300.0),
    ]
    chosen = select(entries, model="fraud-*", error="503", since=200.0, transient_only=True)
    assert ids(chosen) == ["match"]


# --- replay ------------------------------------------------------------------------------------


def test_replay_publishes_each_original_event_and_removes_it(store: DeadLetterStore) -> None:
    # Given two dead letters
    events = [gate_event("evt-1", version="1"), gate_event("evt-2", version="2")]
    for event in events:
        store.put(event, MlflowUnavailable("down"), 16)
    publish = Recorder()
    # When both are replayed
    report = replay(store, publish, ["evt-1", "evt-2"])
    # Then each original event is published once, in order, marked as a replay, and the
    # entries are gone
    assert publish.published == [{**e, "origin": "replay"} for e in events]
    assert report == ReplayReport(replayed=["evt-1", "evt-2"], failed=[], missing=[])
    assert store.count() == 0


def test_a_replayed_event_that_fails_again_at_once_keeps_its_new_dead_letter(
    store: DeadLetterStore,
) -> None:
    store.put(gate_event("evt-1"), MlflowUnavailable("down"), 16)

    def publish(event: dict[str, Any]) -> None:
        # A fast worker takes the replayed event and dead-letters it again before replay()
        # returns: that new entry must survive the replay.
        store.put(event, MlflowUnavailable("still down"), 1)

    report = replay(store, publish, ["evt-1"])
    assert report.replayed == ["evt-1"]
    again = store.get("evt-1")
    assert again is not None and again.error == "still down" and again.attempts == 1
    assert store.count() == 1


def test_a_publish_that_raises_keeps_the_entry_and_reports_it(store: DeadLetterStore) -> None:
    # Given two dead letters, and a broker that refuses the first one
    for event_id in ("evt-1", "evt-2"):
        store.put(gate_event(event_id), MlflowUnavailable("down"), 16)
    publish = Recorder(failures={"evt-1": ConnectionError("broker gone")})
    # When both are replayed
    report = replay(store, publish, ["evt-1", "evt-2"])
    # Then the refused one is kept, unchanged, and reported with why; the other goes on
    assert report.failed == [("evt-1", "ConnectionError: broker gone")]
    assert report.replayed == ["evt-2"]
    assert store.get("evt-1") is not None
    assert store.get("evt-2") is None
    assert [e["event_id"] for e in publish.published] == ["evt-2"]


def test_unknown_ids_are_reported_missing_and_not_published(store: DeadLetterStore) -> None:
    store.put(gate_event("evt-1"), MlflowUnavailable("down"), 16)
    publish = Recorder()
    report = replay(store, publish, ["nope", "evt-1"])
    assert report.missing == ["nope"]
    assert report.replayed == ["evt-1"]
    assert [e["event_id"] for e in publish.published] == ["evt-1"]


def test_an_id_listed_twice_is_published_once(store: DeadLetterStore) -> None:
    store.put(gate_event("evt-1"), MlflowUnavailable("down"), 16)
    publish = Recorder()
    report = replay(store, publish, ["evt-1", "evt-1"])
    assert len(publish.published) == 1
    assert report.replayed == ["evt-1"]
    assert report.missing == ["evt-1"]


def test_a_dry_run_publishes_and_removes_nothing(store: DeadLetterStore) -> None:
    for event_id in ("evt-1", "evt-2"):
        store.put(gate_event(event_id), MlflowUnavailable("down"), 16)
    publish = Recorder()
    report = replay(store, publish, ["evt-1", "evt-2", "nope"], dry_run=True)
    assert publish.published == []
    assert store.count() == 2
    assert report.replayed == ["evt-1", "evt-2"]
    assert report.missing == ["nope"]
    assert report.failed == []


def test_replay_of_no_ids_does_nothing(store: DeadLetterStore) -> None:
    store.put(gate_event("evt-1"), MlflowUnavailable("down"), 16)
    publish = Recorder()
    assert replay(store, publish, []) == ReplayReport()
    assert publish.published == []
    assert store.count() == 1


# --- ReplayReport.summary ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("report", "dry_run", "summary"),
    [
        (ReplayReport(), False, "replayed 0, failed 0"),
        (ReplayReport(replayed=["a", "b"]), False, "replayed 2, failed 0"),
        (ReplayReport(replayed=["a", "b"]), True, "would replay 2, failed 0"),
        (ReplayReport(replayed=["a"], failed=[("b", "why")]), False, "replayed 1, failed 1"),
        (
            ReplayReport(replayed=["a"], failed=[("b", "why")], missing=["c", "d"]),
            False,
            "replayed 1, failed 1, not found 2",
        ),
        (ReplayReport(missing=["c"]), True, "would replay 0, failed 0, not found 1"),
    ],
)
def test_summary(report: ReplayReport, dry_run: bool, summary: str) -> None:
    assert report.summary(dry_run) == summary


def test_summary_defaults_to_a_real_replay() -> None:
    assert ReplayReport(replayed=["a"]).summary() == "replayed 1, failed 0"
