"""shared.evaluation.evaluate: facts in, decision out; anything unknown is a failure, not a pass."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from shared.evaluation import Decision, Facts, RunFacts, VersionFacts, evaluate
from shared.policy import (
    CompareRule,
    DescriptionRule,
    MetricRule,
    Policy,
    Rule,
    TagsRule,
    Target,
)

CHAMPION = Target("champion", is_stage=False)
PRODUCTION = Target("Production", is_stage=True)


def version(
    number: str = "5",
    *,
    metrics: Mapping[str, float] | None = None,
    tags: Mapping[str, str] | None = None,
    run_tags: Mapping[str, str] | None = None,
    description: str = "A model.",
    run_id: str | None = "run-5",
    readable: bool = True,
    run_problem: str | None = None,
) -> VersionFacts:
    run = RunFacts(run_id or "", dict(metrics or {}), dict(run_tags or {}))
    return VersionFacts(
        model="fraud-detector",
        version=number,
        description=description,
        tags=dict(tags or {}),
        run_id=run_id,
        run=run if run_id is not None and readable else None,
        run_problem=run_problem,
    )


def policy(*rules: Rule, name: str = "quality", mode: str = "enforce") -> Policy:
    assert mode in ("enforce", "audit")
    return Policy(
        name=name,
        models=("*",),
        targets=(CHAMPION, PRODUCTION),
        rules=rules,
        mode="audit" if mode == "audit" else "enforce",
    )


def decide(
    candidate: VersionFacts,
    *policies: Policy,
    target: Target = CHAMPION,
    holders: Mapping[Target, VersionFacts | None] | None = None,
) -> Decision:
    return evaluate(Facts(candidate, target, dict(holders or {})), list(policies))


ACCURACY_MIN = policy(MetricRule("accuracy", min=0.9))
LATENCY_MAX = policy(MetricRule("latency_ms", max=200.0))


# --- metric bounds -----------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "approved"), [(0.9, True), (0.95, True), (0.899, False)])
def test_a_min_bound_is_inclusive(value: float, approved: bool) -> None:
    # Given a candidate whose accuracy is exactly at, above, or just below the minimum
    decision = decide(version(metrics={"accuracy": value}), ACCURACY_MIN)
    # Then exactly-at passes and just-below fails
    assert decision.approved is approved
    assert decision.checks[0].passed is approved
    assert decision.checks[0].actual == value


@pytest.mark.parametrize(("value", "approved"), [(200.0, True), (150.0, True), (200.001, False)])
def test_a_max_bound_is_inclusive(value: float, approved: bool) -> None:
    decision = decide(version(metrics={"latency_ms": value}), LATENCY_MAX)
    assert decision.approved is approved


def test_a_failed_min_names_the_metric_the_actual_and_the_required_value() -> None:
    decision = decide(version(metrics={"accuracy": 0.874}), ACCURACY_MIN)
    assert not decision.approved
    assert decision.reason.startswith("Rejected for alias 'champion': ")
    assert "accuracy is 0.874, below the minimum 0.9" in decision.reason
    assert "(policy quality)" in decision.reason
    assert decision.checks[0].required == ">= 0.9"


def test_a_failed_max_names_the_metric_the_actual_and_the_required_value() -> None:
    decision = decide(version(metrics={"latency_ms": 250.0}), LATENCY_MAX, target=PRODUCTION)
    assert not decision.approved
    assert decision.reason.startswith("Rejected for stage 'Production': ")
    assert "latency_ms is 250, above the maximum 200" in decision.reason


def test_a_min_and_max_rule_states_both_bounds() -> None:
    both = policy(MetricRule("accuracy", min=0.5, max=0.99))
    decision = decide(version(metrics={"accuracy": 0.995}), both)
    assert not decision.approved
    assert decision.checks[0].required == ">= 0.5 and <= 0.99"
    assert "above the maximum 0.99" in decision.reason


def test_a_passing_metric_approves_with_a_count() -> None:
    decision = decide(version(metrics={"accuracy": 0.93}), ACCURACY_MIN)
    assert decision.approved
    assert (
        decision.reason == "Approved for alias 'champion': 1 of 1 checks passed (policy quality)."
    )
    assert decision.policies == ("quality",)
    assert decision.failed == ()


# --- unknown is a failure ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("candidate", "reason_part"),
    [
        (version(metrics={"loss": 0.1}), "accuracy is not logged in run run-5 of version 5"),
        (version(run_id=None), "version 5 has no run, so accuracy is unknown"),
        (
            version(readable=False, run_problem="the run does not exist (deleted?)"),
            "run run-5 of version 5: the run does not exist (deleted?)",
        ),
        (version(readable=False), "run run-5 of version 5: it could not be read"),
    ],
    ids=["metric-missing", "no-run", "run-problem", "run-unreadable-no-detail"],
)
def test_an_unknown_metric_fails_with_its_own_reason(
    candidate: VersionFacts, reason_part: str
) -> None:
    # Given a metric rule the candidate cannot be measured against
    decision = decide(candidate, ACCURACY_MIN)
    # Then it is rejected (never approved) and the reason says why
    assert not decision.approved
    assert reason_part in decision.reason
    assert "(required >= 0.9)" in decision.reason
    assert decision.checks[0].actual is None


@pytest.mark.parametrize("rule", [MetricRule("accuracy", min=0.9), MetricRule("accuracy", max=1)])
def test_a_nan_metric_is_not_approved(rule: MetricRule) -> None:
    decision = decide(version(metrics={"accuracy": float("nan")}), policy(rule))
    assert not decision.approved


# --- tags and description ----------------------------------------------------------------------

NEEDS_TAGS = policy(TagsRule(("data_version", "git_commit")))


def test_tags_may_be_on_the_version_or_on_its_run() -> None:
    candidate = version(tags={"data_version": "v7"}, run_tags={"git_commit": "abc123"})
    decision = decide(candidate, NEEDS_TAGS)
    assert decision.approved
    assert decision.checks[0].actual == {"missing": []}


def test_a_missing_tag_is_named() -> None:
    decision = decide(version(tags={"data_version": "v7"}), NEEDS_TAGS)
    assert not decision.approved
    assert "required tag git_commit missing on the version and its run" in decision.reason
    assert decision.checks[0].actual == {"missing": ["git_commit"]}


def test_several_missing_tags_are_all_named() -> None:
    decision = decide(version(), NEEDS_TAGS)
    assert not decision.approved
    assert "required tags data_version, git_commit missing" in decision.reason


def test_tags_are_missing_when_the_run_cannot_be_read() -> None:
    candidate = version(tags={"data_version": "v7"}, readable=False, run_problem="gone")
    assert not decide(candidate, NEEDS_TAGS).approved


@pytest.mark.parametrize(("description", "approved"), [("Trained on Q3.", True), ("", False)])
def test_a_description_is_required(description: str, approved: bool) -> None:
    decision = decide(version(description=description), policy(DescriptionRule()))
    assert decision.approved is approved
    if not approved:
        assert "the version has no description" in decision.reason


def test_a_blank_description_does_not_count() -> None:
    decision = decide(version(description=" \n\t "), policy(DescriptionRule()))
    assert not decision.approved


# --- compare_to --------------------------------------------------------------------------------

BEAT_CHAMPION = policy(CompareRule(CHAMPION, "auc"))
BEAT_BY_A_MARGIN = policy(CompareRule(CHAMPION, "auc", min_delta=0.01))
LOWER_LOSS = policy(CompareRule(CHAMPION, "loss", min_delta=0.1, greater_is_better=False))


def holder(
    auc: float | None = 0.8,
    *,
    run_id: str | None = "run-2",
    readable: bool = True,
    run_problem: str | None = None,
) -> VersionFacts:
    """Version 2, the current champion."""
    metrics = {} if auc is None else {"auc": auc}
    return version("2", metrics=metrics, run_id=run_id, readable=readable, run_problem=run_problem)


def test_with_no_holder_there_is_nothing_to_compare_and_it_passes() -> None:
    decision = decide(version(metrics={"auc": 0.5}), BEAT_CHAMPION, holders={CHAMPION: None})
    assert decision.approved
    assert "nobody holds champion yet" in decision.checks[0].message


def test_when_the_candidate_already_holds_the_target_it_passes() -> None:
    candidate = version(metrics={"auc": 0.5})
    decision = decide(candidate, BEAT_CHAMPION, holders={CHAMPION: candidate})
    assert decision.approved
    assert "this version holds champion" in decision.checks[0].message


def test_with_no_holder_the_candidate_must_still_have_the_metric() -> None:
    decision = decide(version(metrics={}), BEAT_CHAMPION, holders={CHAMPION: None})
    assert not decision.approved
    assert "auc is not logged in run run-5" in decision.reason


@pytest.mark.parametrize(
    ("rule", "candidate_auc", "approved"),
    [
        (BEAT_CHAMPION, 0.85, True),  # better
        (BEAT_CHAMPION, 0.8, True),  # equal, min_delta 0
        (BEAT_CHAMPION, 0.79, False),  # worse
        (BEAT_BY_A_MARGIN, 0.8, False),  # equal, but a margin is required
        (BEAT_BY_A_MARGIN, 0.805, False),  # better, not by enough
        (BEAT_BY_A_MARGIN, 0.82, True),  # better by more than the margin
    ],
)
def test_compare_to_against_the_current_holder(
    rule: Policy, candidate_auc: float, approved: bool
) -> None:
    # Given champion is version 2 with auc 0.8
    decision = decide(version(metrics={"auc": candidate_auc}), rule, holders={CHAMPION: holder()})
    # Then the candidate must reach the holder's auc plus min_delta
    assert decision.approved is approved


def test_a_failed_comparison_names_both_values_and_the_holder() -> None:
    decision = decide(
        version(metrics={"auc": 0.805}), BEAT_BY_A_MARGIN, holders={CHAMPION: holder()}
    )
    assert not decision.approved
    assert (
        "auc is 0.805, below current champion (version 2: 0.8, min_delta 0.01)" in decision.reason
    )
    assert decision.checks[0].required == ">= 0.81 (version 2 has 0.8)"


@pytest.mark.parametrize(
    ("candidate_loss", "approved"), [(0.3, True), (0.4, True), (0.45, False), (0.6, False)]
)
def test_compare_to_with_lower_is_better(candidate_loss: float, approved: bool) -> None:
    # Given champion's loss is 0.5 and a candidate must be lower by at least 0.1
    champion = version("2", metrics={"loss": 0.5}, run_id="run-2")
    decision = decide(
        version(metrics={"loss": candidate_loss}), LOWER_LOSS, holders={CHAMPION: champion}
    )
    assert decision.approved is approved
    assert decision.checks[0].required == "<= 0.4 (version 2 has 0.5)"


def test_a_candidate_exactly_at_holder_plus_delta_passes() -> None:
    rule = policy(CompareRule(CHAMPION, "auc", min_delta=0.05))
    decision = decide(version(metrics={"auc": 0.85}), rule, holders={CHAMPION: holder(0.8)})
    assert decision.approved


@pytest.mark.parametrize(
    ("champion", "problem", "remedy"),
    [
        (
            holder(None),
            "auc is not logged in run run-2 of version 2",
            "log a finite auc on run run-2 of version 2 or put champion on a version whose "
            "run has it, then request again",
        ),
        (
            holder(float("nan")),
            "auc is nan in run run-2, not a usable number",
            "log a finite auc on run run-2 of version 2",
        ),
        (
            holder(float("inf")),
            "auc is inf in run run-2, not a usable number",
            "log a finite auc on run run-2 of version 2",
        ),
        (
            holder(float("-inf")),
            "auc is -inf in run run-2, not a usable number",
            "log a finite auc on run run-2 of version 2",
        ),
        (
            holder(run_id=None),
            "version 2 has no run, so auc is unknown",
            "put champion on a version whose run has a finite auc, then request again",
        ),
        (
            holder(readable=False, run_problem="the run does not exist (deleted?)"),
            "run run-2 of version 2: the run does not exist (deleted?)",
            "put champion on a version whose run has a finite auc, then request again",
        ),
    ],
    ids=["metric-missing", "nan", "inf", "minus-inf", "no-run", "run-deleted"],
)
def test_a_holder_without_a_usable_metric_fails_the_comparison_closed(
    champion: VersionFacts, problem: str, remedy: str
) -> None:
    # Given the current champion cannot be measured on auc
    decision = decide(version(metrics={"auc": 0.99}), BEAT_CHAMPION, holders={CHAMPION: champion})
    # Then even a well measured candidate is not approved, and the reason says what went wrong
    # and what to do
    assert not decision.approved
    (check,) = decision.checks
    assert not check.passed and check.actual == 0.99
    assert check.message.startswith(f"cannot compare with current champion (version 2): {problem}")
    assert remedy in check.message
    assert check.message in decision.reason


@pytest.mark.parametrize("auc", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("champion", [holder(0.8), None], ids=["measured-holder", "no-holder"])
def test_a_candidate_with_a_non_finite_metric_fails_the_comparison(
    auc: float, champion: VersionFacts | None
) -> None:
    decision = decide(version(metrics={"auc": auc}), BEAT_CHAMPION, holders={CHAMPION: champion})
    assert not decision.approved
    assert f"auc is {auc} in run run-5, not a usable number" in decision.reason


def test_an_unusable_candidate_and_holder_are_both_named() -> None:
    decision = decide(
        version(metrics={"auc": float("nan")}),
        BEAT_CHAMPION,
        holders={CHAMPION: holder(None)},
    )
    assert not decision.approved
    assert "auc is nan in run run-5, not a usable number; and cannot compare with current " in (
        decision.reason
    )
    assert "auc is not logged in run run-2 of version 2" in decision.reason


def test_a_holder_without_the_metric_and_a_candidate_without_it_fails() -> None:
    decision = decide(version(metrics={}), BEAT_CHAMPION, holders={CHAMPION: holder(None)})
    assert not decision.approved
    assert "auc is not logged in run run-5 of version 5" in decision.reason


def test_a_candidate_without_the_metric_fails_against_a_measured_holder() -> None:
    decision = decide(version(metrics={}), BEAT_CHAMPION, holders={CHAMPION: holder()})
    assert not decision.approved
    assert "(required >= 0.8 (version 2 has 0.8))" in decision.reason


# --- coverage, targets, modes ------------------------------------------------------------------


def test_no_covering_policy_is_a_rejection() -> None:
    # Given a target no policy covers, Then the gate fails closed
    decision = decide(version(metrics={"accuracy": 1.0}), target=Target("shadow", False))
    assert not decision.approved
    assert decision.checks == ()
    assert "no policy covers it for model 'fraud-detector'" in decision.reason
    assert "fail closed" in decision.reason


def test_an_empty_target_is_a_rejection() -> None:
    decision = decide(version(metrics={"accuracy": 1.0}), ACCURACY_MIN, target=Target.parse(""))
    assert not decision.approved
    assert "names no target" in decision.reason


def test_failures_of_an_audit_policy_do_not_block() -> None:
    # Given an enforced policy that passes and an audit policy that fails
    audit = policy(DescriptionRule(), name="docs-audit", mode="audit")
    decision = decide(version(metrics={"accuracy": 0.95}, description=""), ACCURACY_MIN, audit)
    # Then the version is approved, and the reason carries the audit finding
    assert decision.approved
    assert decision.policies == ("quality", "docs-audit")
    assert "1 of 2 checks passed" in decision.reason
    assert "Audit only, not enforced: the version has no description." in decision.reason
    (failed,) = decision.failed
    assert failed.enforced is False


def test_an_audit_only_policy_that_fails_approves() -> None:
    audit = policy(MetricRule("accuracy", min=0.9), name="audit", mode="audit")
    decision = decide(version(metrics={"accuracy": 0.1}), audit)
    assert decision.approved
    assert "Audit only, not enforced: accuracy is 0.1, below the minimum 0.9" in decision.reason


def test_every_enforced_policy_must_pass() -> None:
    # Given two enforced policies, one passing and one failing
    docs = policy(DescriptionRule(), name="docs")
    decision = decide(version(metrics={"accuracy": 0.95}, description=""), ACCURACY_MIN, docs)
    # Then the version is rejected for the failing one only
    assert not decision.approved
    assert decision.reason == (
        "Rejected for alias 'champion': the version has no description (policy quality, docs)."
    )
    assert [c.policy for c in decision.failed] == ["docs"]


def test_all_failures_of_all_enforced_policies_are_listed() -> None:
    docs = policy(DescriptionRule(), TagsRule(("git_commit",)), name="docs")
    decision = decide(version(metrics={"accuracy": 0.5}, description=""), ACCURACY_MIN, docs)
    assert not decision.approved
    assert len(decision.failed) == 3
    for message in (c.message for c in decision.failed):
        assert message in decision.reason


def test_when_every_enforced_policy_passes_the_version_is_approved() -> None:
    docs = policy(DescriptionRule(), name="docs")
    decision = decide(version(metrics={"accuracy": 0.95}), ACCURACY_MIN, docs)
    assert decision.approved
    assert "2 of 2 checks passed (policy quality, docs)" in decision.reason


def test_a_check_serialises_to_a_plain_dict() -> None:
    decision = decide(version(metrics={"accuracy": 0.95}), ACCURACY_MIN)
    assert decision.checks[0].to_dict() == {
        "policy": "quality",
        "check": "metric accuracy",
        "passed": True,
        "actual": 0.95,
        "required": ">= 0.9",
        "message": "accuracy is 0.95 (required >= 0.9)",
        "enforced": True,
    }


def test_a_rule_type_without_a_check_fails_loudly_and_never_passes() -> None:
    # A rule type added to the policy format but not to evaluate(): before, it fell through to
    # the compare_to check; now it is a bug that stops the decision (and dead-letters the event).
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class NewRule:
        threshold: float

    unknown = policy(NewRule(0.5))  # type: ignore[arg-type]
    facts = Facts(candidate=version(metrics={"accuracy": 0.9}), target=CHAMPION, holders={})
    with pytest.raises(TypeError, match="no check for rule"):
        evaluate(facts, [unknown])
