"""Governance rules beyond thresholds: four_eyes and max_age_days in evaluate(), their policy
syntax, the policy-level on_violation and archive_existing_versions."""

from __future__ import annotations

import pytest

from shared.errors import ConfigError
from shared.evaluation import DAY_MS, Facts, RunFacts, VersionFacts, evaluate
from shared.policy import (
    CompareRule,
    FourEyesRule,
    MaxAgeRule,
    MetricRule,
    Policy,
    Rule,
    Target,
    archive_existing,
    parse_policies,
    reverts_violations,
)
from worker.registries.databricks import approval_comment, open_request, rejection_comment

PRODUCTION = Target("Production", is_stage=True)
STAGING = Target("Staging", is_stage=True)
NOW = 1_800_000_000_000


def candidate(
    *,
    created_by: str | None = "alice",
    started_days_ago: float | None = 1.0,
    run: bool = True,
    metrics: dict[str, float] | None = None,
) -> VersionFacts:
    start = None if started_days_ago is None else int(NOW - started_days_ago * DAY_MS)
    facts = RunFacts("run-1", metrics or {"accuracy": 0.95}, {}, start_time_ms=start)
    return VersionFacts(
        model="fraud",
        version="4",
        description="d",
        tags={},
        run_id="run-1" if run else None,
        run=facts if run else None,
        created_by=created_by,
    )


def policy(*rules: Rule, **options: object) -> Policy:
    return Policy("governance", ("*",), (PRODUCTION,), rules, **options)  # type: ignore[arg-type]


def decide(
    version: VersionFacts,
    *rules: Rule,
    requested_by: str | None = "bob",
    now_ms: int | None = NOW,
    holders: dict[Target, VersionFacts | None] | None = None,
) -> tuple[bool, str]:
    facts = Facts(version, PRODUCTION, holders or {}, requested_by=requested_by, now_ms=now_ms)
    decision = evaluate(facts, [policy(*rules)])
    return decision.approved, decision.reason


# --- four_eyes -----------------------------------------------------------------------------


def test_four_eyes_passes_when_someone_else_requests() -> None:
    approved, reason = decide(candidate(), FourEyesRule())
    assert approved, reason


@pytest.mark.parametrize("requester", ["alice", "ALICE", " alice "])
def test_four_eyes_fails_when_the_creator_requests(requester: str) -> None:
    approved, reason = decide(candidate(), FourEyesRule(), requested_by=requester)
    assert not approved
    assert "who also created it" in reason


def test_four_eyes_fails_closed_on_an_unknown_requester() -> None:
    approved, reason = decide(candidate(), FourEyesRule(), requested_by=None)
    assert not approved
    assert "who requested the promotion of version 4 is unknown" in reason


def test_four_eyes_fails_closed_on_an_unknown_creator() -> None:
    approved, reason = decide(candidate(created_by=None), FourEyesRule())
    assert not approved
    assert "who created version 4 is unknown" in reason


# --- max_age_days --------------------------------------------------------------------------


def test_a_recent_run_passes() -> None:
    approved, reason = decide(candidate(started_days_ago=29.5), MaxAgeRule(30))
    assert approved, reason


def test_an_old_run_fails_with_its_age_and_the_maximum() -> None:
    approved, reason = decide(candidate(started_days_ago=45.25), MaxAgeRule(30))
    assert not approved
    assert "is 45.25 days old, above the maximum 30 days" in reason


@pytest.mark.parametrize(
    ("version", "now", "fragment"),
    [
        (candidate(), None, "time of the decision is unknown"),
        (candidate(run=False), NOW, "has no run"),
        (candidate(started_days_ago=None), NOW, "has no start time"),
    ],
)
def test_max_age_fails_closed(version: VersionFacts, now: int | None, fragment: str) -> None:
    approved, reason = decide(version, MaxAgeRule(30), now_ms=now)
    assert not approved
    assert fragment in reason


# --- compare_to a stage --------------------------------------------------------------------


def test_compare_to_a_stage_uses_its_holder() -> None:
    holder = VersionFacts("fraud", "2", "", {}, "run-2", RunFacts("run-2", {"accuracy": 0.97}, {}))
    rule = CompareRule(PRODUCTION, "accuracy")
    approved, reason = decide(candidate(), rule, holders={PRODUCTION: holder})
    assert not approved
    assert "below current Production (version 2: 0.97)" in reason
    approved, _ = decide(candidate(metrics={"accuracy": 0.98}), rule, holders={PRODUCTION: holder})
    assert approved


def test_compare_to_an_unknown_holder_fails_closed() -> None:
    # Databricks' workspace registry has no aliases: their holder is left out of the facts.
    rule = CompareRule(Target("champion", False), "accuracy")
    approved, reason = decide(candidate(), rule, holders={})
    assert not approved
    assert "the current holder of champion is unknown" in reason


# --- policy syntax -------------------------------------------------------------------------

FILE = """
policies:
  - name: prod
    targets: [Production]
    on_violation: revert
    archive_existing_versions: false
    rules:
      - four_eyes: true
      - max_age_days: 30
      - compare_to: Production
        metric: accuracy
"""


def test_the_new_rules_and_options_parse() -> None:
    parsed = parse_policies(FILE).policies[0]
    assert parsed.rules == (
        FourEyesRule(),
        MaxAgeRule(30.0),
        CompareRule(PRODUCTION, "accuracy"),
    )
    assert parsed.on_violation == "revert"
    assert parsed.archive_existing_versions is False


def test_defaults_are_report_and_unset() -> None:
    parsed = parse_policies(
        FILE.replace("    on_violation: revert\n", "").replace(
            "    archive_existing_versions: false\n", ""
        )
    ).policies[0]
    assert parsed.on_violation == "report"
    assert parsed.archive_existing_versions is None


@pytest.mark.parametrize(
    ("old", "new", "fragment"),
    [
        ("four_eyes: true", "four_eyes: false", ":8: policy 'prod': write 'four_eyes: true'"),
        ("four_eyes: true", "four_eyes: yes please", "'four_eyes' must be true or false"),
        ("max_age_days: 30", "max_age_days: 0", ":9: policy 'prod': max_age_days must be above 0"),
        ("max_age_days: 30", "max_age_days: soon", "'max_age_days' must be a number"),
        ("on_violation: revert", "on_violation: shout", ":5: policy 'prod': on_violation must"),
        ("archive_existing_versions: false", "archive_existing_versions: 1", "true or false"),
        ("- four_eyes: true", "- four_eyes: true\n        min: 1", "unknown key 'min'"),
    ],
)
def test_mistakes_are_reported_with_their_line(old: str, new: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(")):
        parse_policies(FILE.replace(old, new))


def test_archive_existing_defaults_to_production_and_true_wins() -> None:
    plain = policy(MetricRule("a", min=0))
    assert archive_existing([plain], PRODUCTION) is True
    assert archive_existing([plain], STAGING) is False
    keep = policy(MetricRule("a", min=0), archive_existing_versions=False)
    assert archive_existing([keep], PRODUCTION) is False
    archive = policy(MetricRule("a", min=0), archive_existing_versions=True)
    assert archive_existing([archive], STAGING) is True
    assert archive_existing([keep, archive], PRODUCTION) is True


def test_reverts_violations_when_any_policy_says_so() -> None:
    assert not reverts_violations([policy(FourEyesRule())])
    assert reverts_violations(
        [policy(FourEyesRule()), policy(FourEyesRule(), on_violation="revert")]
    )


# --- Databricks comments, open requests; rollback history ----------------------------------


def test_comments_list_the_checks_passed_or_failed() -> None:
    facts = Facts(candidate(), PRODUCTION, {}, requested_by="bob", now_ms=NOW)
    good = evaluate(facts, [policy(MetricRule("accuracy", min=0.9), FourEyesRule())])
    text = approval_comment(good, archived=True)
    assert text.startswith("mlflow-gate: approved for stage Production (policy governance).")
    assert "accuracy is 0.95 (required >= 0.9)" in text
    assert "four eyes: requested by bob, created by alice" in text
    assert "archived" in text
    bad = evaluate(facts, [policy(MetricRule("accuracy", min=0.99))])
    assert rejection_comment(bad) == (
        "mlflow-gate: Rejected for stage 'Production': accuracy is 0.95, below the minimum 0.99 "
        "(policy governance)."
    )


def test_the_newest_open_request_to_the_stage_is_taken() -> None:
    requests = [
        {"to_stage": "Production", "user_id": "a", "creation_timestamp": 1},
        {"to_stage": "Staging", "user_id": "b", "creation_timestamp": 3},
        {"to_stage": "production", "user_id": "c", "creation_timestamp": 2},
    ]
    assert open_request(requests, "Production") == requests[2]
    assert open_request(requests, "Archived") is None
