"""`mlflow-gate dlq list|show|replay|purge` through click's CliRunner, against a real Redis."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import redis
from click.testing import CliRunner, Result
from harness import free_port, start_redis

from cli.main import main
from shared import keys
from shared.deadletter import DeadLetter, DeadLetterStore
from shared.errors import MlflowNotFound, MlflowUnavailable

MINUTES = 60.0
HOURS = 3600.0


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    process, url = start_redis(tmp_path_factory.mktemp("dlq-cli-redis"))
    try:
        yield url
    finally:
        process.stop()


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    client.flushall()
    yield client
    client.close()


@pytest.fixture
def store(client: redis.Redis) -> DeadLetterStore:
    return DeadLetterStore(client)


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


def put_at(
    store: DeadLetterStore,
    monkeypatch: pytest.MonkeyPatch,
    when: float,
    event: dict[str, Any],
    error: BaseException,
    attempts: int,
) -> DeadLetter:
    """Dead-letter `event` as if it failed at Unix time `when`."""
    with monkeypatch.context() as patch:
        patch.setattr("shared.deadletter.time", SimpleNamespace(time=lambda: when))
        return store.put(event, error, attempts)


@pytest.fixture
def two(store: DeadLetterStore, monkeypatch: pytest.MonkeyPatch) -> DeadLetterStore:
    """evt-old: fraud-detector v3, MLflow down, failed 3 hours ago after 16 attempts.
    evt-new: churn v7, not found, failed 10 minutes ago at the first attempt."""
    now = time.time()
    put_at(store, monkeypatch, now - 3 * HOURS, gate_event("evt-old"), MlflowUnavailable("503"), 16)
    gone = MlflowNotFound("version 7 is gone", 404)
    put_at(store, monkeypatch, now - 10 * MINUTES, gate_event("evt-new", "churn", "7"), gone, 1)
    return store


def dlq(redis_url: str, *args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(main, ["dlq", *args], env={"GATE_REDIS_URL": redis_url}, input=input)


def queued(client: redis.Redis) -> list[dict[str, Any]]:
    """The Celery messages waiting in the gate's queue: the task each names, and its event."""
    messages = []
    for raw in client.lrange(keys.QUEUE, 0, -1):
        message = json.loads(raw)
        args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        messages.append({"task": message["headers"]["task"], "event": args[0]})
    return messages


# --- list --------------------------------------------------------------------------------------


def test_list_shows_a_table_with_every_column_and_a_count(
    two: DeadLetterStore, redis_url: str
) -> None:
    result = dlq(redis_url, "list")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["ID", "MODEL", "VERSION", "EVENT", "ERROR", "ATTEMPTS", "AGE"]
    # oldest failure first
    assert lines[1].split() == [
        "evt-old", "fraud-detector", "3", "model_version_tag.set",
        "MlflowUnavailable:", "503", "16", "3h",
    ]  # fmt: skip
    assert lines[2].split() == [
        "evt-new", "churn", "7", "model_version_tag.set",
        "MlflowNotFound:", "version", "7", "is", "gone", "1", "10m",
    ]  # fmt: skip
    assert lines[-1] == "2 dead letters"
    assert len(lines) == 4


def test_list_columns_line_up(two: DeadLetterStore, redis_url: str) -> None:
    lines = dlq(redis_url, "list").stdout.splitlines()[:3]
    for column in ("MODEL", "VERSION", "ERROR", "ATTEMPTS"):
        at = lines[0].index(column)
        assert all(line[at - 2 : at] == "  " and line[at] != " " for line in lines), column


def test_list_of_an_empty_store_says_so(store: DeadLetterStore, redis_url: str) -> None:
    result = dlq(redis_url, "list")
    assert result.exit_code == 0
    assert result.stdout.strip() == "the dead-letter store is empty"


def test_list_json_is_parseable_and_has_every_field(two: DeadLetterStore, redis_url: str) -> None:
    result = dlq(redis_url, "list", "--json")
    assert result.exit_code == 0, result.output
    entries = json.loads(result.stdout)
    assert [e["id"] for e in entries] == ["evt-old", "evt-new"]
    old = entries[0]
    assert set(old) == {
        "id", "event", "error_class", "error", "transient", "attempts",
        "first_failure", "last_failure", "model", "version",
    }  # fmt: skip
    assert old["event"] == gate_event("evt-old")
    assert (old["error_class"], old["error"], old["transient"], old["attempts"]) == (
        "MlflowUnavailable",
        "503",
        True,
        16,
    )
    assert (old["model"], old["version"]) == ("fraud-detector", "3")


def test_list_json_of_an_empty_store_is_an_empty_list(
    store: DeadLetterStore, redis_url: str
) -> None:
    assert json.loads(dlq(redis_url, "list", "--json").stdout) == []


@pytest.mark.parametrize(
    ("filters", "ids"),
    [
        (["--model", "fraud-*"], ["evt-old"]),
        (["--model", "churn"], ["evt-new"]),
        (["--error", "notfound"], ["evt-new"]),
        (["--error", "MLFLOWUNAVAILABLE"], ["evt-old"]),
        (["--since", "1h"], ["evt-new"]),
        (["--since", "1d"], ["evt-old", "evt-new"]),
        (["--model", "fraud-*", "--since", "1h"], []),
    ],
)
def test_list_filters(
    two: DeadLetterStore, redis_url: str, filters: list[str], ids: list[str]
) -> None:
    result = dlq(redis_url, "list", "--json", *filters)
    assert result.exit_code == 0, result.output
    assert [e["id"] for e in json.loads(result.stdout)] == ids


def test_list_with_filters_matching_nothing_says_so(two: DeadLetterStore, redis_url: str) -> None:
    result = dlq(redis_url, "list", "--model", "nothing-*")
    assert result.exit_code == 0
    assert result.stdout.strip() == "the dead-letter store is empty (for these filters)"


def test_list_with_a_bad_since_is_a_configuration_error(
    two: DeadLetterStore, redis_url: str
) -> None:
    result = dlq(redis_url, "list", "--since", "yesterday")
    assert result.exit_code == 2
    assert "30m" in result.stderr
    assert "Traceback" not in result.output


# --- show --------------------------------------------------------------------------------------


def test_show_prints_the_entry_as_json(two: DeadLetterStore, redis_url: str) -> None:
    result = dlq(redis_url, "show", "evt-new")
    assert result.exit_code == 0, result.output
    entry = json.loads(result.stdout)
    assert entry["id"] == "evt-new"
    assert entry["event"] == gate_event("evt-new", "churn", "7")
    assert entry["error_class"] == "MlflowNotFound"
    assert entry["transient"] is False


def test_show_of_an_unknown_id_exits_1(two: DeadLetterStore, redis_url: str) -> None:
    result = dlq(redis_url, "show", "nope")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert "no dead letter 'nope'" in result.stderr
    assert "dlq list" in result.stderr


# --- replay ------------------------------------------------------------------------------------


def test_replay_all_dry_run_says_what_it_would_do_and_does_nothing(
    two: DeadLetterStore, redis_url: str, client: redis.Redis
) -> None:
    result = dlq(redis_url, "replay", "--all", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "would replay evt-old" in result.stdout
    assert "would replay evt-new" in result.stdout
    assert "would replay 2, failed 0" in result.stdout
    assert two.count() == 2
    assert client.llen(keys.QUEUE) == 0


def test_replay_all_dry_run_with_filters(two: DeadLetterStore, redis_url: str) -> None:
    result = dlq(redis_url, "replay", "--all", "--dry-run", "--model", "churn")
    assert result.exit_code == 0, result.output
    assert "would replay 1, failed 0" in result.stdout
    assert "evt-old" not in result.stdout


def test_replay_by_id_enqueues_the_event_in_redis_and_removes_the_entry(
    two: DeadLetterStore, redis_url: str, client: redis.Redis
) -> None:
    # Given two dead letters and an empty queue
    before = client.llen(keys.QUEUE)
    # When one is replayed
    result = dlq(redis_url, "replay", "evt-old")
    # Then it is enqueued as a Celery message for the reconcile task, and removed
    assert result.exit_code == 0, result.output
    assert "replayed evt-old" in result.stdout
    assert "replayed 1, failed 0" in result.stdout
    assert client.llen(keys.QUEUE) == before + 1
    replayed = {**gate_event("evt-old"), "origin": "replay"}
    assert queued(client) == [{"task": keys.TASK_RECONCILE, "event": replayed}]
    assert two.get("evt-old") is None
    assert [e.id for e in two.all()] == ["evt-new"]


def test_replay_all_with_a_filter_enqueues_only_the_matching_entries(
    two: DeadLetterStore, redis_url: str, client: redis.Redis
) -> None:
    result = dlq(redis_url, "replay", "--all", "--error", "unavailable")
    assert result.exit_code == 0, result.output
    assert [m["event"]["event_id"] for m in queued(client)] == ["evt-old"]
    assert [e.id for e in two.all()] == ["evt-new"]


def test_replay_of_an_unknown_id_exits_1_and_says_so(
    two: DeadLetterStore, redis_url: str, client: redis.Redis
) -> None:
    result = dlq(redis_url, "replay", "nope")
    assert result.exit_code == 1
    assert "not found nope" in result.stderr
    assert "replayed 0, failed 0, not found 1" in result.stdout
    assert client.llen(keys.QUEUE) == 0
    assert two.count() == 2


@pytest.mark.parametrize(
    "args", [pytest.param([], id="neither"), pytest.param(["evt-old", "--all"], id="both")]
)
def test_replay_needs_either_ids_or_all(
    two: DeadLetterStore, redis_url: str, client: redis.Redis, args: list[str]
) -> None:
    result = dlq(redis_url, "replay", *args)
    assert result.exit_code == 2
    assert "either dead-letter ids or --all" in result.stderr
    assert two.count() == 2
    assert client.llen(keys.QUEUE) == 0


# --- purge -------------------------------------------------------------------------------------


def test_purge_asks_first_and_a_no_keeps_everything(two: DeadLetterStore, redis_url: str) -> None:
    result = dlq(redis_url, "purge", input="n\n")
    assert result.exit_code == 0, result.output
    assert "Delete all 2 dead letters for good?" in result.stdout
    assert "nothing purged" in result.stdout
    assert two.count() == 2


def test_purge_asks_first_and_a_yes_deletes(two: DeadLetterStore, redis_url: str) -> None:
    result = dlq(redis_url, "purge", input="y\n")
    assert result.exit_code == 0, result.output
    assert "purged 2 dead letters" in result.stdout
    assert two.count() == 0


def test_purge_yes_deletes_without_asking(two: DeadLetterStore, redis_url: str) -> None:
    result = dlq(redis_url, "purge", "--yes")
    assert result.exit_code == 0, result.output
    assert "?" not in result.stdout
    assert "purged 2 dead letters" in result.stdout
    assert two.count() == 0
    assert two.all() == []


def test_purge_of_an_empty_store_says_so(store: DeadLetterStore, redis_url: str) -> None:
    result = dlq(redis_url, "purge", "--yes")
    assert result.exit_code == 0
    assert "already empty" in result.stdout


# --- Redis unreachable -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["list"], id="list"),
        pytest.param(["list", "--json"], id="list-json"),
        pytest.param(["show", "evt-1"], id="show"),
        pytest.param(["replay", "evt-1"], id="replay-id"),
        pytest.param(["replay", "--all", "--dry-run"], id="replay-all"),
        pytest.param(["purge", "--yes"], id="purge"),
    ],
)
def test_an_unreachable_redis_exits_2_with_a_message_not_a_traceback(args: list[str]) -> None:
    # Given GATE_REDIS_URL points at a port nothing listens on
    closed = f"redis://127.0.0.1:{free_port()}/0"
    # When a dlq command runs
    result = dlq(closed, *args)
    # Then it exits 2 and says Redis did not answer, without a traceback
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    assert "Redis" in result.stderr
    assert "GATE_REDIS_URL" in result.stderr
    assert "Traceback" not in result.output
