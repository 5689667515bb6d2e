"""`mlflow-gate db upgrade` and `mlflow-gate audit [history|prune]` as real subprocesses,
against a SQLite ledger filled through the API."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from harness import free_port

from shared.evaluation import Check
from shared.events import Origin, RegistryKind
from shared.ledger import ActionState, DecisionRow, Ledger, TargetKind
from shared.outcomes import Outcome

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime.now(timezone.utc).replace(microsecond=0)
MLFLOW = RegistryKind.MLFLOW
CHECK = Check(
    policy="production-quality",
    check="metric validation_accuracy",
    passed=False,
    actual=0.85,
    required=">= 0.9",
    message="validation_accuracy is 0.85, below the minimum 0.9",
)


def gate(url: str, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "GATE_DATABASE_URL": url,
        "GATE_LOG_FORMAT": "text",
    }
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def decision(
    minutes_ago: float, version: str, outcome: Outcome, reason: str, **more: object
) -> DecisionRow:
    fields: dict[str, object] = {
        "decided_at": NOW - timedelta(minutes=minutes_ago),
        "registry": MLFLOW,
        "model": "fraud-detector",
        "version": version,
        "target": "champion",
        "target_kind": TargetKind.ALIAS,
        "outcome": outcome,
        "reason": reason,
        "event_id": f"evt-{version}-{minutes_ago}",
        "origin": Origin.WEBHOOK,
        "policies": ("production-quality",),
    }
    fields.update(more)
    return DecisionRow(**fields)  # type: ignore[arg-type]


@pytest.fixture
def url(tmp_path: Path) -> Iterator[str]:
    """A ledger with a history: fraud-detector's champion went 2 -> 3, a rejected 4, a churn
    decision for Production; one old decision nobody needs."""
    ledger_url = f"sqlite:///{tmp_path / 'data' / 'ledger.db'}"
    with Ledger(ledger_url) as ledger:
        ledger.upgrade()
        ledger.record(decision(60 * 24 * 100, "1", Outcome.REJECTED, "An old rejection."))
        two = ledger.record(
            decision(60 * 24 * 3, "2", Outcome.APPROVED, "Approved v2.", requested_by="alice")
        )
        ledger.approve(MLFLOW, "fraud-detector", "champion", "2", two, NOW - timedelta(days=3))
        three = ledger.record(
            decision(
                60,
                "3",
                Outcome.APPROVED,
                "Approved v3.",
                requested_by="bob",
                acted_by="mlflow-gate",
                action_state=ActionState.PENDING,
            )
        )
        ledger.mark_done(three)
        ledger.approve(MLFLOW, "fraud-detector", "champion", "3", three, NOW - timedelta(hours=1))
        ledger.record(
            decision(30, "4", Outcome.REJECTED, "Rejected: accuracy 0.85.", checks=(CHECK,))
        )
        ledger.record(
            decision(
                10,
                "7",
                Outcome.APPROVED,
                "Approved churn v7.",
                model="churn_model",
                target="Production",
                target_kind=TargetKind.STAGE,
            )
        )
    yield ledger_url


def test_audit_json_lists_the_decisions_newest_first(url: str) -> None:
    done = gate(url, "audit", "--json")
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert [(d["model"], d["version"]) for d in found] == [
        ("churn_model", "7"),
        ("fraud-detector", "4"),
        ("fraud-detector", "3"),
        ("fraud-detector", "2"),
        ("fraud-detector", "1"),
    ]
    rejected = found[1]
    for key in ("time", "model", "version", "target", "outcome", "reason", "policies", "checks"):
        assert key in rejected
    assert rejected["outcome"] == "rejected" and rejected["reason"] == "Rejected: accuracy 0.85."
    assert rejected["checks"][0]["actual"] == 0.85 and rejected["policies"] == [
        "production-quality"
    ]
    assert rejected["event_id"] == "evt-4-30" and rejected["time"].endswith("Z")
    assert found[2]["action_state"] == "done" and found[2]["requested_by"] == "bob"


def test_audit_filters(url: str) -> None:
    def versions(*args: str) -> list[str]:
        done = gate(url, "audit", "--json", *args)
        assert done.returncode == 0, done.stderr
        return [d["version"] for d in json.loads(done.stdout)]

    assert versions("--model", "fraud-*", "--outcome", "approved") == ["3", "2"]
    assert versions("--model", "churn_*") == ["7"]
    assert versions("--model", "churn%") == []  # % is a plain character in a glob
    assert versions("--target", "production") == ["7"]  # stages in any case
    assert versions("--since", "2h") == ["7", "4", "3"]
    assert versions("--since", (NOW - timedelta(days=4)).isoformat(), "--limit", "2") == ["7", "4"]


def test_audit_csv_and_text(url: str) -> None:
    done = gate(url, "audit", "--csv", "--model", "fraud-detector")
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    assert [r["version"] for r in rows] == ["4", "3", "2", "1"]
    assert json.loads(rows[0]["checks"])[0]["check"] == "metric validation_accuracy"
    assert rows[1]["requested_by"] == "bob" and rows[0]["requested_by"] == ""

    text = gate(url, "audit", "--limit", "2")
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    header = "ID  TIME                  MODEL           VERSION  TARGET      OUTCOME   ORIGIN"
    assert lines[0] == header + "   REQUESTED BY"
    assert "churn_model" in lines[1] and lines[2] == "    Approved churn v7."
    assert "fraud-detector" in lines[3] and lines[4] == "    Rejected: accuracy 0.85."
    assert lines[-1] == "2 decisions, newest first"

    both = gate(url, "audit", "--json", "--csv")
    assert both.returncode == 2 and "not both" in both.stderr


def test_audit_history_says_who_held_the_target_when(url: str) -> None:
    done = gate(url, "audit", "history", "fraud-detector", "--target", "champion", "--json")
    assert done.returncode == 0, done.stderr
    current, previous = json.loads(done.stdout)
    assert (current["version"], current["until"], current["current"]) == ("3", None, True)
    assert current["decision"]["reason"] == "Approved v3."
    assert current["decision"]["requested_by"] == "bob"
    assert current["decision"]["acted_by"] == "mlflow-gate"
    assert previous["version"] == "2" and previous["ended_reason"] == "replaced by version 3"
    assert previous["until"] == current["from"]

    text = gate(url, "audit", "history", "fraud-detector", "--target", "champion")
    assert text.returncode == 0, text.stderr
    assert text.stdout.splitlines()[0] == "champion of fraud-detector, newest first:"
    assert "    approved: Approved v3." in text.stdout
    assert "    ended: replaced by version 3" in text.stdout

    never = gate(url, "audit", "history", "fraud-detector", "--target", "Production")
    assert never.returncode == 1 and "never approved" in never.stderr


def test_audit_prune_asks_first_then_deletes(url: str) -> None:
    declined = gate(url, "audit", "prune", "--before", "30d", stdin="n\n")
    assert declined.returncode == 0, declined.stderr
    assert "Delete 1 decision recorded before" in declined.stdout
    assert "nothing deleted" in declined.stdout

    done = gate(url, "audit", "prune", "--before", "30d", "--yes")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("deleted 1 decision recorded before")
    versions = [d["version"] for d in json.loads(gate(url, "audit", "--json").stdout)]
    assert versions == ["7", "4", "3", "2"]

    again = gate(url, "audit", "prune", "--before", (NOW - timedelta(days=30)).date().isoformat())
    assert again.returncode == 0 and again.stdout.startswith("nothing to delete")
    bad = gate(url, "audit", "prune", "--before", "last week", "--yes")
    assert bad.returncode == 2 and "--before 'last week' is not a time" in bad.stderr


def test_db_upgrade_creates_then_keeps_the_schema(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'new' / 'ledger.db'}"
    missing = gate(url, "audit")
    assert missing.returncode == 2 and "no ledger at" in missing.stderr
    assert not (tmp_path / "new").exists()  # reading creates nothing

    first = gate(url, "db", "upgrade")
    assert first.returncode == 0, first.stderr
    assert "upgraded from an empty database to revision 0003" in first.stdout
    second = gate(url, "db", "upgrade")
    assert second.returncode == 0 and "already at revision 0003" in second.stdout
    assert gate(url, "audit").stdout.strip() == "no decisions in the ledger"


def test_a_database_that_does_not_answer_is_exit_2_without_the_password() -> None:
    url = f"postgresql+psycopg2://gate:hunter2@127.0.0.1:{free_port()}/gate"
    for args in (("db", "upgrade"), ("audit",), ("audit", "history", "m", "--target", "t")):
        done = gate(url, *args)
        assert done.returncode == 2, (args, done.stderr)
        assert "did not answer" in done.stderr and "check GATE_DATABASE_URL" in done.stderr
        assert "hunter2" not in done.stderr + done.stdout and "gate:***@" in done.stderr


def test_a_bad_url_is_a_configuration_error() -> None:
    done = gate("mysql-ish:/nope", "audit")
    assert done.returncode == 2 and "GATE_DATABASE_URL" in done.stderr


def test_an_empty_database_is_told_to_upgrade(tmp_path: Path) -> None:
    (tmp_path / "empty.db").write_bytes(b"")
    done = gate(f"sqlite:///{tmp_path / 'empty.db'}", "audit", "--json")
    assert done.returncode == 2 and "run `mlflow-gate db upgrade`" in done.stderr
