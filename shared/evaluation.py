"""Policy evaluation: facts in, decision out. No I/O, no clock, no MLflow.

A missing or non-finite metric, a version without a run, or a run that could not be read is a
failed check with its own reason, never a pass: the candidate's, and for compare_to the current
holder's (a comparison that cannot be made fails closed).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from shared.policy import (
    CompareRule,
    DescriptionRule,
    FourEyesRule,
    MaxAgeRule,
    MetricRule,
    Policy,
    Rule,
    TagsRule,
    Target,
)

DAY_MS = 86_400_000


@dataclass(frozen=True)
class RunFacts:
    run_id: str
    metrics: Mapping[str, float]
    tags: Mapping[str, str]
    start_time_ms: int | None = None  # when the run started (Unix milliseconds)


@dataclass(frozen=True)
class VersionFacts:
    model: str
    version: str
    description: str
    tags: Mapping[str, str]
    run_id: str | None
    run: RunFacts | None
    run_problem: str | None = None  # why the run could not be read
    created_by: str | None = None  # who created the version, if the registry says
    # Where created_by comes from: "registry" (the version's user) or "run" (its mlflow.user).
    created_by_source: str | None = None
    stage: str | None = None  # the version's current stage (None, Staging, Production, Archived)


@dataclass(frozen=True)
class Facts:
    candidate: VersionFacts
    target: Target
    # The current holder of each target a compare_to rule names (None: nobody holds it).
    holders: Mapping[Target, VersionFacts | None]
    # Who asked for the promotion (None: unknown), for four_eyes rules.
    requested_by: str | None = None
    # The time of the decision (Unix milliseconds), for max_age_days rules; None: unknown.
    now_ms: int | None = None


@dataclass(frozen=True)
class Check:
    policy: str
    check: str
    passed: bool
    actual: Any
    required: str
    message: str
    enforced: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Decision:
    approved: bool
    target: Target
    policies: tuple[str, ...]
    checks: tuple[Check, ...]
    reason: str

    @classmethod
    def without_checks(cls, target: Target, policies: Sequence[str], reason: str) -> Decision:
        """A refusal (or a record) made without evaluating any rule."""
        return cls(
            approved=False, target=target, policies=tuple(policies), checks=(), reason=reason
        )

    @property
    def failed(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if not c.passed)


def evaluate(facts: Facts, policies: Sequence[Policy]) -> Decision:
    """Decide whether `facts.candidate` may hold `facts.target` under every covering policy."""
    target = facts.target
    if not target.name:
        return Decision.without_checks(
            target,
            (),
            "Rejected: the request names no target; set governance.request to an alias "
            "(e.g. champion) or a stage (Staging, Production).",
        )
    if not policies:
        return Decision.without_checks(
            target,
            (),
            f"Rejected for {target.kind} '{target}': no policy covers it for model "
            f"'{facts.candidate.model}', so the gate refuses it (fail closed); add a policy "
            "for this target to the policy file to allow promotions to it.",
        )
    checks = tuple(_check(rule, facts, policy) for policy in policies for rule in policy.rules)
    names = ", ".join(p.name for p in policies)
    blocking = [c for c in checks if c.enforced and not c.passed]
    audited = [c for c in checks if not c.enforced and not c.passed]
    if blocking:
        reason = (
            f"Rejected for {target.kind} '{target}': "
            + "; ".join(c.message for c in blocking)
            + f" (policy {names})."
        )
    else:
        reason = f"Approved for {target.kind} '{target}': {len(checks) - len(audited)} of " + (
            f"{len(checks)} checks passed (policy {names})."
        )
        if audited:
            reason += " Audit only, not enforced: " + "; ".join(c.message for c in audited) + "."
    return Decision(
        approved=not blocking,
        target=target,
        policies=tuple(p.name for p in policies),
        checks=checks,
        reason=reason,
    )


def _check(rule: Rule, facts: Facts, policy: Policy) -> Check:
    enforced = policy.mode == "enforce"
    if isinstance(rule, MetricRule):
        return _metric_check(rule, facts.candidate, policy.name, enforced)
    if isinstance(rule, TagsRule):
        return _tags_check(rule, facts.candidate, policy.name, enforced)
    if isinstance(rule, DescriptionRule):
        text = facts.candidate.description.strip()
        return Check(
            policy=policy.name,
            check="description",
            passed=bool(text),
            actual="present" if text else "missing",
            required="a non-empty description",
            message="the version has a description" if text else "the version has no description",
            enforced=enforced,
        )
    if isinstance(rule, FourEyesRule):
        return _four_eyes_check(facts, policy.name, enforced)
    if isinstance(rule, MaxAgeRule):
        return _max_age_check(rule, facts, policy.name, enforced)
    if isinstance(rule, CompareRule):
        return _compare_check(rule, facts, policy.name, enforced)
    # A rule type added to the policy format without its check here: a bug, never a pass.
    raise TypeError(f"policy {policy.name!r}: no check for rule {rule!r}")


def _four_eyes_check(facts: Facts, policy: str, enforced: bool) -> Check:
    required = "requested by someone other than the version's creator"
    version = facts.candidate.version
    requester, creator = facts.requested_by, facts.candidate.created_by
    if not requester:
        message = (
            f"four eyes: who requested the promotion of version {version} is unknown, so it "
            "cannot be told apart from the creator (fail closed)"
        )
        return Check(policy, "four_eyes", False, None, required, message, enforced)
    if not creator:
        message = (
            f"four eyes: who created version {version} is unknown (the registry recorded no "
            f"user), so requester {requester} cannot be told apart from it (fail closed)"
        )
        actual = {"requested_by": requester, "created_by": None}
        return Check(policy, "four_eyes", False, actual, required, message, enforced)
    actual = {"requested_by": requester, "created_by": creator}
    if requester.strip().lower() == creator.strip().lower():
        message = (
            f"four eyes: version {version} was requested by {requester}, who also created it; "
            "someone else must request the promotion"
        )
        return Check(policy, "four_eyes", False, actual, required, message, enforced)
    message = f"four eyes: requested by {requester}, created by {creator}"
    return Check(policy, "four_eyes", True, actual, required, message, enforced)


def _max_age_check(rule: MaxAgeRule, facts: Facts, policy: str, enforced: bool) -> Check:
    name = "max_age_days"
    required = f"run started at most {_num(rule.max_age_days)} days ago"
    candidate, now = facts.candidate, facts.now_ms
    start = candidate.run.start_time_ms if candidate.run is not None else None
    problem = ""
    if now is None:
        problem = "the time of the decision is unknown"
    elif candidate.run_id is None:
        problem = f"version {candidate.version} has no run, so its age is unknown"
    elif candidate.run is None:
        problem = (
            f"run {candidate.run_id} of version {candidate.version}: "
            f"{candidate.run_problem or 'it could not be read'}"
        )
    elif start is None:
        problem = f"run {candidate.run_id} of version {candidate.version} has no start time"
    if problem or now is None or start is None:
        return Check(policy, name, False, None, required, f"{problem} ({required})", enforced)
    age = max(now - start, 0) / DAY_MS
    actual = round(age, 2)
    if age > rule.max_age_days:
        message = (
            f"run {candidate.run_id} of version {candidate.version} is {actual:g} days old, "
            f"above the maximum {_num(rule.max_age_days)} days"
        )
        return Check(policy, name, False, actual, required, message, enforced)
    message = f"run {candidate.run_id} is {actual:g} days old ({required})"
    return Check(policy, name, True, actual, required, message, enforced)


def _metric_value(version: VersionFacts, metric: str) -> tuple[float | None, str]:
    """The metric's value, or None and the reason it is not available."""
    if version.run_id is None:
        return None, f"version {version.version} has no run, so {metric} is unknown"
    if version.run is None:
        problem = version.run_problem or "it could not be read"
        return None, f"run {version.run_id} of version {version.version}: {problem}"
    if metric not in version.run.metrics:
        return None, f"{metric} is not logged in run {version.run_id} of version {version.version}"
    value = version.run.metrics[metric]
    if not math.isfinite(value):
        return None, f"{metric} is {value} in run {version.run_id}, not a usable number"
    return value, ""


def _metric_check(rule: MetricRule, candidate: VersionFacts, policy: str, enforced: bool) -> Check:
    bounds = []
    if rule.min is not None:
        bounds.append(f">= {_num(rule.min)}")
    if rule.max is not None:
        bounds.append(f"<= {_num(rule.max)}")
    required = " and ".join(bounds)
    name = f"metric {rule.metric}"
    value, problem = _metric_value(candidate, rule.metric)
    if value is None:
        message = f"{problem} (required {required})"
        return Check(policy, name, False, None, required, message, enforced)
    if rule.min is not None and value < rule.min and not _same(value, rule.min):
        message = f"{rule.metric} is {_num(value)}, below the minimum {_num(rule.min)}"
        return Check(policy, name, False, value, required, message, enforced)
    if rule.max is not None and value > rule.max and not _same(value, rule.max):
        message = f"{rule.metric} is {_num(value)}, above the maximum {_num(rule.max)}"
        return Check(policy, name, False, value, required, message, enforced)
    message = f"{rule.metric} is {_num(value)} (required {required})"
    return Check(policy, name, True, value, required, message, enforced)


def _tags_check(rule: TagsRule, candidate: VersionFacts, policy: str, enforced: bool) -> Check:
    run_tags = candidate.run.tags if candidate.run is not None else {}
    missing = [t for t in rule.tags if t not in candidate.tags and t not in run_tags]
    required = ", ".join(rule.tags)
    if missing:
        plural = "tags" if len(missing) > 1 else "tag"
        where = "the version and its run" if candidate.run is not None else "the version"
        if candidate.run is None and candidate.run_id is not None:
            where += f" (run {candidate.run_id} could not be read)"
        message = f"required {plural} {', '.join(missing)} missing on {where}"
        return Check(policy, "tags", False, {"missing": missing}, required, message, enforced)
    return Check(
        policy, "tags", True, {"missing": []}, required, f"tags {required} present", enforced
    )


def _compare_check(rule: CompareRule, facts: Facts, policy: str, enforced: bool) -> Check:
    name = f"compare_to {rule.compare_to} on {rule.metric}"
    sign = ">=" if rule.greater_is_better else "<="
    delta = rule.min_delta if rule.greater_is_better else -rule.min_delta
    if rule.compare_to not in facts.holders:  # fail closed: the facts are incomplete
        message = f"the current holder of {rule.compare_to} is unknown"
        return Check(policy, name, False, None, f"{rule.metric} compared", message, enforced)
    holder = facts.holders[rule.compare_to]
    candidate = facts.candidate
    value, problem = _metric_value(candidate, rule.metric)
    if holder is None or holder.version == candidate.version:
        who = "nobody" if holder is None else "this version"
        if value is None:
            required = f"{rule.metric} logged"
            return Check(policy, name, False, None, required, problem, enforced)
        message = f"{who} holds {rule.compare_to} yet, nothing to compare {rule.metric} against"
        return Check(policy, name, True, value, "no current holder", message, enforced)
    held, held_problem = _metric_value(holder, rule.metric)
    if held is None:  # fail closed: what cannot be compared is not approved
        message = (
            f"cannot compare with current {rule.compare_to} (version {holder.version}): "
            f"{held_problem}; {_measure_holder(holder, rule)}, then request again"
        )
        if value is None:
            message = f"{problem}; and {message}"
        required = f"{rule.metric} on both versions"
        return Check(policy, name, False, value, required, message, enforced)
    bound = held + delta
    required = f"{sign} {_num(bound)} (version {holder.version} has {_num(held)})"
    if value is None:
        return Check(
            policy, name, False, None, required, f"{problem} (required {required})", enforced
        )
    # Tolerant at the boundary: 0.8 + 0.05 is 0.8500000000000001 in binary floats.
    passed = _same(value, bound) or (value >= bound if rule.greater_is_better else value <= bound)
    worse = "below" if rule.greater_is_better else "above"
    message = (
        f"{rule.metric} is {_num(value)}, {'not ' if passed else ''}{worse} current "
        f"{rule.compare_to} (version {holder.version}: {_num(held)}"
        + (f", min_delta {_num(rule.min_delta)}" if rule.min_delta else "")
        + ")"
    )
    return Check(policy, name, passed, value, required, message, enforced)


def _measure_holder(holder: VersionFacts, rule: CompareRule) -> str:
    """What makes the holder of a compared target measurable again."""
    elsewhere = f"or put {rule.compare_to} on a version whose run has it"
    if holder.run_id is None or holder.run is None:
        return f"put {rule.compare_to} on a version whose run has a finite {rule.metric}"
    return (
        f"log a finite {rule.metric} on run {holder.run_id} of version {holder.version} {elsewhere}"
    )


def _num(value: float) -> str:
    return f"{value:.10g}"


def _same(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
