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

from shared.errors import ConfigError

STAGES = ("None", "Staging", "Production", "Archived")


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

    def covers(self, model: str, target: Target) -> bool:
        return target in self.targets and any(
            fnmatch.fnmatchcase(model, pattern) for pattern in self.models
        )


@dataclass(frozen=True)
class PolicySet:
    policies: tuple[Policy, ...]
    source: str = "built-in"

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
        top = self.mapping(root, "the file", required=("policies",), optional=())
        items = top["policies"]
        if not isinstance(items, yaml.SequenceNode) or not items.value:
            raise self.fail(items, "'policies' must be a non-empty list of policies")
        policies = tuple(self.policy(node) for node in items.value)
        seen: set[str] = set()
        for policy, node in zip(policies, items.value, strict=True):
            if policy.name in seen:
                raise self.fail(node, f"policy name '{policy.name}' is used twice")
            seen.add(policy.name)
        return PolicySet(policies=policies, source=self.source)

    def policy(self, node: yaml.Node) -> Policy:
        fields = self.mapping(
            node,
            "a policy",
            required=("name", "targets", "rules"),
            optional=("models", "mode", "on_violation", "archive_existing_versions"),
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
        return Policy(
            name=name,
            models=models,
            targets=targets,
            rules=rules,
            mode="audit" if mode == "audit" else "enforce",
            on_violation="revert" if on_violation == "revert" else "report",
            archive_existing_versions=archive,
        )

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
