"""Policies: which models and targets they govern, and the rules a version must pass.

Loaded once at start from GATE_POLICY_FILE (YAML), or the built-in classic gate. Every mistake in
a file is reported with its line, so that a bad file stops the process before it takes work.
"""

from __future__ import annotations

import contextlib
import fnmatch
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from shared import durations
from shared.errors import ConfigError

STAGES = ("None", "Staging", "Production", "Archived")

# What the gate notifies sinks of (`notify: ... events:`); a sink without `events` gets them all.
NOTICE_TYPES = (
    "review.requested",  # the automated checks passed; the policy asks for human review
    "review.approved",  # one reviewer approved (more may be needed)
    "review.expired",  # nobody completed the review in time: rejected
    "decision.approved",  # a version was promoted
    "decision.rejected",  # a request was rejected (by the checks, a reviewer or expiry)
    "guard.reverted",  # a move made outside the gate was undone
)


@dataclass(frozen=True)
class Target:
    """Where a version is promoted to: an alias (`champion`) or a stage (`Production`)."""

    name: str
    is_stage: bool

    @classmethod
    def parse(cls, text: str) -> Target:
        cleaned = text.strip()
        for stage in STAGES:
            if cleaned.lower() == stage.lower():
                return cls(stage, True)
        return cls(cleaned, False)

    def __str__(self) -> str:
        return self.name

    @property
    def kind(self) -> str:
        return "stage" if self.is_stage else "alias"


@dataclass(frozen=True)
class MetricRule:
    metric: str
    min: float | None = None
    max: float | None = None


@dataclass(frozen=True)
class TagsRule:
    tags: tuple[str, ...]


@dataclass(frozen=True)
class DescriptionRule:
    pass


@dataclass(frozen=True)
class CompareRule:
    compare_to: Target
    metric: str
    min_delta: float = 0.0
    greater_is_better: bool = True


@dataclass(frozen=True)
class FourEyesRule:
    """The person who requested the promotion must not be the one who created the version."""


@dataclass(frozen=True)
class MaxAgeRule:
    """The version's run must have started at most this many days ago."""

    max_age_days: float


Rule = MetricRule | TagsRule | DescriptionRule | CompareRule | FourEyesRule | MaxAgeRule


@dataclass(frozen=True)
class Review:
    """Human review a promotion needs once the automated checks pass: `approvals` distinct
    reviewers, each a named reviewer or a member of the MLflow role (anyone signed in when the
    policy names neither), none of them the requester or the version's creator."""

    approvals: int
    reviewers: tuple[str, ...] = ()
    role: str | None = None
    expires_after_seconds: float | None = None  # None: a pending review never expires

    @property
    def restricted(self) -> bool:
        """Whether the policy says who may review (names, a role or both)."""
        return bool(self.reviewers) or self.role is not None


@dataclass(frozen=True)
class Sink:
    """Where notifications go: a generic webhook signed per Standard Webhooks, or Slack."""

    kind: Literal["webhook", "slack"]
    # webhook: its URL; slack: the environment variable holding the incoming-webhook URL.
    address: str
    secret_env: str | None = None  # webhook: the variable holding its whsec_... secret
    events: tuple[str, ...] = ()  # empty: every notice type

    @property
    def key(self) -> str:
        """A stable name for the sink, part of each delivery's id and shown in dead letters."""
        return f"{self.kind}:{self.address}"

    def wants(self, notice_type: str) -> bool:
        return not self.events or notice_type in self.events


@dataclass(frozen=True)
class Policy:
    name: str
    models: tuple[str, ...]
    targets: tuple[Target, ...]
    rules: tuple[Rule, ...]
    mode: Literal["enforce", "audit"] = "enforce"
    # What to do about a version moved into a governed stage outside the registry's approval
    # process (a registry whose moves outside it are violations):
    # report it as a violation, or also move it back to the stage it came from.
    on_violation: Literal["report", "revert"] = "report"
    # Whether approving a stage transition archives the versions already in that stage;
    # None: the default, true for Production only.
    archive_existing_versions: bool | None = None
    review: Review | None = None
    notify: tuple[Sink, ...] = ()

    def covers(self, model: str, target: Target) -> bool:
        return target in self.targets and any(
            fnmatch.fnmatchcase(model, pattern) for pattern in self.models
        )


@dataclass(frozen=True)
class PolicySet:
    policies: tuple[Policy, ...]
    source: str = "built-in"
    notify: tuple[Sink, ...] = ()  # the top-level sinks: notified for every policy

    def covering(self, model: str, target: Target) -> list[Policy]:
        return [p for p in self.policies if p.covers(model, target)]

    def governs(self, model: str, target: Target) -> bool:
        """A target that a policy covers is protected: only the gate may move it."""
        return any(p.covers(model, target) for p in self.policies)


def archive_existing(policies: Sequence[Policy], target: Target) -> bool:
    """Whether a transition to `target` archives the versions already there: what the covering
    policies say (true wins if they disagree), else true for Production only."""
    said = [
        p.archive_existing_versions for p in policies if p.archive_existing_versions is not None
    ]
    if said:
        return any(said)
    return target.is_stage and target.name == "Production"


@dataclass(frozen=True)
class ReviewNeed:
    """What the covering policies ask of human review, taken together: the largest `approvals`;
    a reviewer must be allowed by each policy that says who may review; the earliest expiry."""

    approvals: int
    gates: tuple[tuple[str, tuple[str, ...], str | None], ...]  # (policy, reviewers, role)
    expires_after_seconds: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "approvals": self.approvals,
            "gates": [
                {"policy": name, "reviewers": list(names), "role": role}
                for name, names, role in self.gates
            ],
            "expires_after_seconds": self.expires_after_seconds,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReviewNeed:
        expires = data.get("expires_after_seconds")
        return cls(
            approvals=int(data["approvals"]),
            gates=tuple(
                (str(g["policy"]), tuple(str(n) for n in g.get("reviewers") or ()), g.get("role"))
                for g in data.get("gates") or ()
            ),
            expires_after_seconds=float(expires) if expires is not None else None,
        )


def review_need(policies: Sequence[Policy]) -> ReviewNeed | None:
    """The human review the covering policies ask for; None when none asks. Audit-mode policies
    do not hold a promotion back, so their review is not asked for."""
    asking = [p for p in policies if p.review is not None and p.mode == "enforce"]
    if not asking:
        return None
    reviews = [p.review for p in asking if p.review is not None]
    expiries = [r.expires_after_seconds for r in reviews if r.expires_after_seconds is not None]
    return ReviewNeed(
        approvals=max(r.approvals for r in reviews),
        gates=tuple(
            (p.name, p.review.reviewers, p.review.role)
            for p in asking
            if p.review is not None and p.review.restricted
        ),
        expires_after_seconds=min(expiries) if expiries else None,
    )


def reverts_violations(policies: Sequence[Policy]) -> bool:
    """Whether a covering policy asks to move back a version promoted outside the gate."""
    return any(p.on_violation == "revert" for p in policies)


BUILTIN = PolicySet(
    policies=(
        Policy(
            name="builtin-classic-gate",
            models=("*",),
            targets=(Target("champion", False), Target("Production", True)),
            rules=(MetricRule("validation_accuracy", min=0.90),),
        ),
    ),
)


def load_policies(path: Path | None) -> PolicySet:
    """The policies in force: the file's, or the built-in classic gate when there is none."""
    if path is None:
        return BUILTIN
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"GATE_POLICY_FILE={path}: cannot read it ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    return parse_policies(text, source=str(path))


def parse_policies(text: str, *, source: str = "<policy>") -> PolicySet:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: not valid YAML: {problem}") from None
    return _Reader(source).policy_set(root)


class _Reader:
    """Walks the YAML node tree, so that every error can name its line."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, node: yaml.Node | None, message: str) -> ConfigError:
        line = f":{node.start_mark.line + 1}" if node is not None else ""
        return ConfigError(f"{self.source}{line}: {message}")

    def policy_set(self, root: yaml.Node | None) -> PolicySet:
        top = self.mapping(root, "the file", required=("policies",), optional=("notify",))
        items = top["policies"]
        if not isinstance(items, yaml.SequenceNode) or not items.value:
            raise self.fail(items, "'policies' must be a non-empty list of policies")
        policies = tuple(self.policy(node) for node in items.value)
        seen: set[str] = set()
        for policy, node in zip(policies, items.value, strict=True):
            if policy.name in seen:
                raise self.fail(node, f"policy name '{policy.name}' is used twice")
            seen.add(policy.name)
        notify = self.sinks(top["notify"], "the top level") if "notify" in top else ()
        return PolicySet(policies=policies, source=self.source, notify=notify)

    def policy(self, node: yaml.Node) -> Policy:
        fields = self.mapping(
            node,
            "a policy",
            required=("name", "targets", "rules"),
            optional=(
                "models",
                "mode",
                "on_violation",
                "archive_existing_versions",
                "review",
                "notify",
            ),
        )
        name = self.string(fields["name"], "name")
        models = self.strings(fields["models"], "models") if "models" in fields else ("*",)
        targets = tuple(Target.parse(t) for t in self.strings(fields["targets"], "targets"))
        mode = self.string(fields["mode"], "mode") if "mode" in fields else "enforce"
        if mode not in ("enforce", "audit"):
            raise self.fail(fields["mode"], f"policy '{name}': mode must be enforce or audit")
        rules_node = fields["rules"]
        if not isinstance(rules_node, yaml.SequenceNode) or not rules_node.value:
            raise self.fail(rules_node, f"policy '{name}': 'rules' must be a non-empty list")
        rules = tuple(self.rule(r, name) for r in rules_node.value)
        on_violation = (
            self.string(fields["on_violation"], "on_violation")
            if "on_violation" in fields
            else "report"
        )
        if on_violation not in ("report", "revert"):
            raise self.fail(
                fields["on_violation"], f"policy '{name}': on_violation must be report or revert"
            )
        archive = (
            self.boolean(fields["archive_existing_versions"], "archive_existing_versions")
            if "archive_existing_versions" in fields
            else None
        )
        review = self.review(fields["review"], name) if "review" in fields else None
        notify = self.sinks(fields["notify"], f"policy '{name}'") if "notify" in fields else ()
        return Policy(
            name=name,
            models=models,
            targets=targets,
            rules=rules,
            mode="audit" if mode == "audit" else "enforce",
            on_violation="revert" if on_violation == "revert" else "report",
            archive_existing_versions=archive,
            review=review,
            notify=notify,
        )

    def review(self, node: yaml.Node, policy: str) -> Review:
        where = f"policy '{policy}': review"
        f = self.mapping(
            node,
            where,
            required=("approvals",),
            optional=("reviewers", "role", "expires_after"),
        )
        count = self.number(f["approvals"], "approvals")
        if count != int(count) or count < 1:
            raise self.fail(f["approvals"], f"{where}: approvals must be a whole number, 1 or more")
        approvals = int(count)
        reviewers = self.strings(f["reviewers"], "reviewers") if "reviewers" in f else ()
        if len(set(reviewers)) != len(reviewers):
            raise self.fail(f["reviewers"], f"{where}: a reviewer is named twice")
        role = self.string(f["role"], "role") if "role" in f else None
        if role is None and reviewers and approvals > len(reviewers):
            raise self.fail(
                f["approvals"],
                f"{where}: {approvals} approvals are needed but only {len(reviewers)} reviewers "
                "are named (and no role): name more reviewers, add a role or lower approvals",
            )
        expires: float | None = None
        if "expires_after" in f:
            text = str(self.scalar(f["expires_after"], "expires_after"))
            expires = durations.seconds(text)
            if expires is None or expires <= 0:
                raise self.fail(
                    f["expires_after"],
                    f"{where}: expires_after {text!r} is not a duration; write e.g. 12h or 3d",
                )
        return Review(approvals, reviewers, role, expires)

    def sinks(self, node: yaml.Node, where: str) -> tuple[Sink, ...]:
        if not isinstance(node, yaml.SequenceNode) or not node.value:
            raise self.fail(node, f"{where}: 'notify' must be a non-empty list of sinks")
        return tuple(self.sink(item, where) for item in node.value)

    def sink(self, node: yaml.Node, where: str) -> Sink:
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, f"{where}: each notify entry must be a mapping")
        keys = {k.value for k, _ in node.value if isinstance(k, yaml.ScalarNode)}
        if "webhook" in keys:
            f = self.mapping(
                node,
                f"{where}: a webhook sink",
                required=("webhook", "secret_env"),
                optional=("events",),
            )
            url = self.string(f["webhook"], "webhook")
            if not url.startswith(("http://", "https://")):
                raise self.fail(f["webhook"], f"{where}: webhook {url!r} is not an http(s) URL")
            secret_env = self.env_name(f["secret_env"], "secret_env")
            return Sink("webhook", url, secret_env, self.events(f))
        if "slack_env" in keys:
            f = self.mapping(
                node, f"{where}: a Slack sink", required=("slack_env",), optional=("events",)
            )
            return Sink("slack", self.env_name(f["slack_env"], "slack_env"), None, self.events(f))
        raise self.fail(
            node,
            f"{where}: unknown notify entry with keys {sorted(keys)}; an entry has "
            "webhook (with secret_env) or slack_env",
        )

    def events(self, fields: dict[str, yaml.Node]) -> tuple[str, ...]:
        if "events" not in fields:
            return ()
        names = self.strings(fields["events"], "events")
        for name in names:
            if name not in NOTICE_TYPES:
                raise self.fail(
                    fields["events"],
                    f"unknown event {name!r} in 'events'; known: {', '.join(NOTICE_TYPES)}",
                )
        return names

    def env_name(self, node: yaml.Node, key: str) -> str:
        name = self.string(node, key)
        if not name.replace("_", "A").isalnum() or name[0].isdigit():
            raise self.fail(
                node, f"'{key}' must name an environment variable (e.g. CI_WEBHOOK_SECRET)"
            )
        return name

    def rule(self, node: yaml.Node, policy: str) -> Rule:
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, f"policy '{policy}': each rule must be a mapping")
        keys = {k.value for k, _ in node.value if isinstance(k, yaml.ScalarNode)}
        where = f"policy '{policy}'"
        if "compare_to" in keys:
            f = self.mapping(
                node,
                f"{where}: a compare_to rule",
                required=("compare_to", "metric"),
                optional=("min_delta", "greater_is_better"),
            )
            return CompareRule(
                compare_to=Target.parse(self.string(f["compare_to"], "compare_to")),
                metric=self.string(f["metric"], "metric"),
                min_delta=self.number(f["min_delta"], "min_delta") if "min_delta" in f else 0.0,
                greater_is_better=(
                    self.boolean(f["greater_is_better"], "greater_is_better")
                    if "greater_is_better" in f
                    else True
                ),
            )
        if "metric" in keys:
            f = self.mapping(
                node, f"{where}: a metric rule", required=("metric",), optional=("min", "max")
            )
            low = self.number(f["min"], "min") if "min" in f else None
            high = self.number(f["max"], "max") if "max" in f else None
            if low is None and high is None:
                raise self.fail(node, f"{where}: a metric rule needs min, max or both")
            if low is not None and high is not None and low > high:
                raise self.fail(node, f"{where}: min {low:g} is above max {high:g}")
            return MetricRule(self.string(f["metric"], "metric"), min=low, max=high)
        if "tags" in keys:
            f = self.mapping(node, f"{where}: a tags rule", required=("tags",), optional=())
            return TagsRule(self.strings(f["tags"], "tags"))
        if "description" in keys:
            f = self.mapping(
                node, f"{where}: a description rule", required=("description",), optional=()
            )
            if self.string(f["description"], "description") != "required":
                raise self.fail(f["description"], f"{where}: write 'description: required'")
            return DescriptionRule()
        if "four_eyes" in keys:
            f = self.mapping(
                node, f"{where}: a four_eyes rule", required=("four_eyes",), optional=()
            )
            if self.boolean(f["four_eyes"], "four_eyes") is not True:
                raise self.fail(
                    f["four_eyes"], f"{where}: write 'four_eyes: true' or drop the rule"
                )
            return FourEyesRule()
        if "max_age_days" in keys:
            f = self.mapping(
                node, f"{where}: a max_age_days rule", required=("max_age_days",), optional=()
            )
            days = self.number(f["max_age_days"], "max_age_days")
            if days <= 0:
                raise self.fail(f["max_age_days"], f"{where}: max_age_days must be above 0")
            return MaxAgeRule(days)
        raise self.fail(
            node,
            f"{where}: unknown rule with keys {sorted(keys)}; a rule has one of "
            "metric, tags, description, compare_to, four_eyes, max_age_days",
        )

    def mapping(
        self,
        node: yaml.Node | None,
        what: str,
        *,
        required: Sequence[str],
        optional: Sequence[str],
    ) -> dict[str, yaml.Node]:
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, f"{what} must be a mapping")
        fields: dict[str, yaml.Node] = {}
        allowed = (*required, *optional)
        for key_node, value_node in node.value:
            key = key_node.value
            if key not in allowed:
                raise self.fail(
                    key_node, f"{what}: unknown key '{key}' (expected: {', '.join(allowed)})"
                )
            if key in fields:
                raise self.fail(key_node, f"{what}: key '{key}' appears twice")
            fields[key] = value_node
        missing = [k for k in required if k not in fields]
        if missing:
            raise self.fail(node, f"{what}: missing {', '.join(repr(k) for k in missing)}")
        return fields

    def scalar(self, node: yaml.Node, key: str) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            raise self.fail(node, f"'{key}' must be a single value")
        try:
            return yaml.SafeLoader("").construct_object(node)
        except (yaml.YAMLError, ValueError) as exc:
            raise self.fail(node, f"'{key}' has a value YAML cannot read: {exc}") from None

    def string(self, node: yaml.Node, key: str) -> str:
        value = self.scalar(node, key)
        if not isinstance(value, str) or not value.strip():
            raise self.fail(node, f"'{key}' must be a non-empty string, not {value!r}")
        return value.strip()

    def strings(self, node: yaml.Node, key: str) -> tuple[str, ...]:
        if isinstance(node, yaml.ScalarNode):
            return (self.string(node, key),)
        if not isinstance(node, yaml.SequenceNode) or not node.value:
            raise self.fail(node, f"'{key}' must be a non-empty list of strings")
        return tuple(self.string(item, key) for item in node.value)

    def number(self, node: yaml.Node, key: str) -> float:
        value = self.scalar(node, key)
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 as a string
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(node, f"'{key}' must be a number, not {value!r}")
        if not math.isfinite(value):
            raise self.fail(node, f"'{key}' must be a finite number, not {value!r}")
        return float(value)

    def boolean(self, node: yaml.Node, key: str) -> bool:
        value = self.scalar(node, key)
        if not isinstance(value, bool):
            raise self.fail(node, f"'{key}' must be true or false, not {value!r}")
        return value
