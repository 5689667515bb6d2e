"""`mlflow-gate policy test FILE [--last N] [--model GLOB] [--json]` through click's CliRunner,
against a SQLite ledger file filled through `Ledger.record` with facts stored as the pipeline
stores them. Exit 0 nothing would flip, 1 something would, 2 bad file or no ledger."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from cli.main import main
from shared.evaluation import Facts, RunFacts, VersionFacts
from shared.events import Origin, RegistryKind
from shared.ledger import DecisionRow, Ledger, TargetKind
from shared.outcomes import Outcome
from shared.policy import Target
from worker.decisions import evaluated
from worker.steps import Do, Step, plan_facts

NOW = datetime.now(timezone.utc).replace(microsecond=0)
POLICY = """\
policies:
  - name: production-quality
    targets: [champion, Production]
    rules:
      - metric: validation_accuracy
        min: {threshold}
"""


def decision(
    minutes_ago: int,
    model: str,
    version: str,
    outcome: Outcome,
    accuracy: float | None = None,
    *,
    target: str = "champion",
    policies: tuple[str, ...] = ("production-quality",),
) -> DecisionRow:
    """A decision as the pipeline records it: with its facts when a rule was evaluated."""
    goal = Target.parse(target)
    facts: dict[str, object] = {"plan": []}
    if accuracy is not None:
        run = RunFacts(f"run-{version}", {"validation_accuracy": accuracy}, {}, 0)
        candidate = VersionFacts(model, version, "described", {}, run.run_id, run)
        do = Do.APPROVE if outcome is Outcome.APPROVED else Do.REJECT
        stored = evaluated(Facts(candidate, goal, {}, "erin", 0))
        facts = plan_facts(stored, [Step(do, version)])
    return DecisionRow(
        decided_at=NOW - timedelta(minutes=minutes_ago),
        registry=RegistryKind.MLFLOW,
        model=model,
        version=version,
        target=goal.name,
        target_kind=TargetKind.STAGE if goal.is_stage else TargetKind.ALIAS,
        outcome=outcome,
        reason=f"{outcome.value} as recorded",
        event_id=f"evt-{model}-{version}-{minutes_ago}",
        origin=Origin.WEBHOOK,
        policies=policies,
        facts=facts,
    )


@pytest.fixture
def url(tmp_path: Path) -> str:
    """Oldest first: fraud-detector v1 approved (0.95) and v2 rejected (0.85), a skipped
    request, churn_model v7 approved for Production (0.91), an operator's rollback."""
    ledger_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with Ledger(ledger_url) as ledger:
        ledger.upgrade()
        for row in (
            decision(50, "fraud-detector", "1", Outcome.APPROVED, 0.95),
            decision(40, "fraud-detector", "2", Outcome.REJECTED, 0.85),
            decision(30, "fraud-detector", "3", Outcome.SKIPPED),
            decision(20, "churn_model", "7", Outcome.APPROVED, 0.91, target="Production"),
            decision(10, "fraud-detector", "1", Outcome.APPROVED, policies=("operator-rollback",)),
        ):
            ledger.record(row)
    return ledger_url


def policy_file(tmp_path: Path, threshold: float) -> str:
    path = tmp_path / f"policy-{threshold}.yaml"
    path.write_text(POLICY.format(threshold=threshold))
    return str(path)


def run(url: str, *args: str) -> Result:
    env = {"GATE_DATABASE_URL": url, "GATE_LOG_FORMAT": "text"}
    return CliRunner().invoke(main, ["policy", "test", *args], env=env)


def test_the_policy_in_force_flips_nothing_exit_0(url: str, tmp_path: Path) -> None:
    result = run(url, policy_file(tmp_path, 0.90))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[1].split() == ["ID", "TIME", "MODEL", "VERSION", "TARGET", "WAS", "->", "WOULD"]
    rows = [line.split() for line in lines[2:5]]
    assert [(r[0], r[3], r[4], r[5], r[6], r[7], r[8]) for r in rows] == [
        ("4", "churn_model", "7", "Production", "approved", "->", "approved"),
        ("2", "fraud-detector", "2", "champion", "rejected", "->", "rejected"),
        ("1", "fraud-detector", "1", "champion", "approved", "->", "approved"),
    ]
    assert "FLIPS" not in result.stdout
    assert lines[-1] == "0 of 3 decisions would flip (the ledger has 3 that could be decided " + (
        "again, fewer than 100)."
    )


def test_a_stricter_policy_shows_the_flip_with_its_failed_check_exit_1(
    url: str, tmp_path: Path
) -> None:
    result = run(url, policy_file(tmp_path, 0.93))
    assert result.exit_code == 1, result.output
    lines = result.stdout.splitlines()
    flip = lines.index(next(line for line in lines if line.endswith("FLIPS")))
    assert lines[flip].split()[0] == "4" and "approved -> rejected" in lines[flip]
    assert lines[flip + 1].strip() == (
        "FAIL [production-quality] metric validation_accuracy: actual 0.91; required >= 0.93"
    )
    assert lines[-1].startswith("1 of 3 decisions would flip")


def test_decisions_that_cannot_be_decided_again_are_counted_and_said(
    url: str, tmp_path: Path
) -> None:
    result = run(url, policy_file(tmp_path, 0.90))
    text = result.stdout
    assert "Not decided again: 2 decisions in the same span:" in text
    assert (
        "#5 fraud-detector v1 -> champion (approved): an operator's rollback: no rule was "
        "evaluated" in text
    )
    assert "1 skipped: no rule was evaluated for them" in text


def test_last_takes_the_newest_decisions_that_could_be_decided_again(
    url: str, tmp_path: Path
) -> None:
    result = run(url, policy_file(tmp_path, 0.99), "--last", "1")
    assert result.exit_code == 1, result.output
    assert "for the last decision the gate evaluated" in result.stdout
    lines = result.stdout.splitlines()
    rows = [line.split()[0] for line in lines if re.match(r"\d+ +\d{4}-\d\d-\d\d ", line)]
    assert rows == ["4"]  # churn_model v7; the rollback after it is said, not counted
    assert "Not decided again: 1 decision in the same span:" in result.stdout
    assert result.stdout.splitlines()[-1] == "1 of 1 decision would flip."


def test_model_narrows_to_matching_models(url: str, tmp_path: Path) -> None:
    result = run(url, policy_file(tmp_path, 0.93), "--model", "fraud-*")
    assert result.exit_code == 0, result.output
    assert "churn_model" not in result.stdout
    assert "on models matching fraud-*" in result.stdout
    assert result.stdout.splitlines()[-1].startswith("0 of 2 decisions would flip")


def test_json_lists_every_trial(url: str, tmp_path: Path) -> None:
    result = run(url, policy_file(tmp_path, 0.93), "--json", "--last", "2")
    assert result.exit_code == 1, result.output
    data = json.loads(result.stdout)
    assert (data["last"], data["evaluated"], data["flipped"], data["not_evaluable"]) == (2, 2, 1, 2)
    assert data["policy_source"].endswith("policy-0.93.yaml")
    trials = [(t["decision"]["id"], t["was"], t["would"], t["flips"]) for t in data["trials"]]
    assert trials == [
        (5, "approved", None, False),
        (4, "approved", "rejected", True),
        (3, "skipped", None, False),
        (2, "rejected", "rejected", False),
    ]
    failed = [c for c in data["trials"][1]["checks"] if not c["passed"]]
    assert (failed[0]["actual"], failed[0]["required"]) == (0.91, ">= 0.93")


def test_an_invalid_policy_file_says_what_and_where_exit_2(url: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "policies:\n  - name: p\n    targets: [champion]\n    rules:\n      - metric: acc\n"
    )
    result = run(url, str(path))
    assert result.exit_code == 2
    assert result.stderr.strip() == f"invalid: {path}:5: policy 'p': a metric rule needs min, " + (
        "max or both"
    )
    assert result.stdout == ""


def test_a_missing_policy_file_exit_2(url: str, tmp_path: Path) -> None:
    result = run(url, str(tmp_path / "nope.yaml"))
    assert result.exit_code == 2
    assert "cannot read" in result.stderr and "No such file or directory" in result.stderr


def test_no_ledger_exit_2(tmp_path: Path) -> None:
    missing = f"sqlite:///{tmp_path / 'missing.db'}"
    result = run(missing, policy_file(tmp_path, 0.90))
    assert result.exit_code == 2
    assert "no ledger at" in result.stderr
    assert not (tmp_path / "missing.db").exists()  # read-only: nothing created


def test_an_empty_ledger_flips_nothing(tmp_path: Path) -> None:
    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    with Ledger(empty) as ledger:
        ledger.upgrade()
    result = run(empty, policy_file(tmp_path, 0.90))
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == (
        "No decision in the ledger could be decided again: nothing to compare."
    )
