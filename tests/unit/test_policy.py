"""shared.policy: the YAML policy file, the built-in gate, targets, and errors with their line."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from shared.errors import ConfigError
from shared.policy import (
    BUILTIN,
    CompareRule,
    DescriptionRule,
    MetricRule,
    Policy,
    PolicySet,
    TagsRule,
    Target,
    load_policies,
    parse_policies,
)

README_EXAMPLE = """\
policies:
  - name: production-quality
    models: ["*"]
    targets: [champion, Production]
    mode: enforce
    rules:
      - metric: validation_accuracy
        min: 0.90
      - tags: [data_version, git_commit]
      - description: required
      - compare_to: champion
        metric: val_auc
        min_delta: 0.0
"""

CHAMPION = Target("champion", is_stage=False)
PRODUCTION = Target("Production", is_stage=True)


def parse(text: str) -> PolicySet:
    return parse_policies(textwrap.dedent(text), source="policy.yaml")


def config_error(text: str) -> str:
    with pytest.raises(ConfigError) as excinfo:
        parse(text)
    return str(excinfo.value)


# --- a valid file ------------------------------------------------------------------------------


def test_the_readme_example_parses_into_the_right_objects() -> None:
    # Given the README's example policy file
    # When it is parsed
    policy_set = parse_policies(README_EXAMPLE, source="policy.yaml")
    # Then every part of it is in the objects, in order
    assert policy_set == PolicySet(
        policies=(
            Policy(
                name="production-quality",
                models=("*",),
                targets=(CHAMPION, PRODUCTION),
                rules=(
                    MetricRule("validation_accuracy", min=0.90, max=None),
                    TagsRule(("data_version", "git_commit")),
                    DescriptionRule(),
                    CompareRule(CHAMPION, "val_auc", min_delta=0.0, greater_is_better=True),
                ),
                mode="enforce",
            ),
        ),
        source="policy.yaml",
    )


def test_optional_fields_take_their_defaults() -> None:
    # Given a policy without models or mode, and a compare_to rule without min_delta
    policy_set = parse(
        """
        policies:
          - name: minimal
            targets: Staging
            rules:
              - compare_to: production
                metric: rmse
                greater_is_better: false
        """
    )
    # Then it covers every model, is enforced, and a scalar target is a one-item list
    (policy,) = policy_set.policies
    assert policy.models == ("*",)
    assert policy.mode == "enforce"
    assert policy.targets == (Target("Staging", True),)
    assert policy.rules == (CompareRule(PRODUCTION, "rmse", 0.0, greater_is_better=False),)


def test_an_audit_policy_and_a_max_only_metric_rule() -> None:
    policy_set = parse(
        """
        policies:
          - name: latency-watch
            models: [fraud-*, churn]
            targets: [challenger]
            mode: audit
            rules:
              - metric: p95_latency_ms
                max: 250
              - metric: accuracy
                min: 0.5
                max: 0.5
        """
    )
    (policy,) = policy_set.policies
    assert policy.mode == "audit"
    assert policy.models == ("fraud-*", "churn")
    assert policy.rules == (
        MetricRule("p95_latency_ms", min=None, max=250.0),
        MetricRule("accuracy", min=0.5, max=0.5),
    )


@pytest.mark.parametrize(("written", "value"), [("1e-3", 0.001), ("5", 5.0), ("-0.5", -0.5)])
def test_numbers_in_any_yaml_spelling(written: str, value: float) -> None:
    # YAML 1.1 reads 1e-3 (no dot) as a string: it still counts as a number here.
    policy_set = parse(
        f"""
        policies:
          - name: p
            targets: [champion]
            rules:
              - metric: loss
                max: {written}
        """
    )
    assert policy_set.policies[0].rules == (MetricRule("loss", max=value),)


def test_without_a_file_the_builtin_classic_gate_is_in_force() -> None:
    # Given no policy file, When policies are loaded, Then the built-in gate is returned
    policy_set = load_policies(None)
    assert policy_set is BUILTIN
    assert policy_set.source == "built-in"
    # And it is: every model, champion or Production, validation_accuracy >= 0.90, enforced
    (policy,) = policy_set.policies
    assert policy.models == ("*",)
    assert policy.targets == (CHAMPION, PRODUCTION)
    assert policy.rules == (MetricRule("validation_accuracy", min=0.90),)
    assert policy.mode == "enforce"


def test_load_policies_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(README_EXAMPLE, encoding="utf-8")
    policy_set = load_policies(path)
    assert policy_set.source == str(path)
    assert [p.name for p in policy_set.policies] == ["production-quality"]


# --- targets and coverage ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Production", Target("Production", True)),
        ("production", Target("Production", True)),
        (" STAGING ", Target("Staging", True)),
        ("archived", Target("Archived", True)),
        ("none", Target("None", True)),
        ("champion", Target("champion", False)),
        ("Champion", Target("Champion", False)),
        ("  challenger-B ", Target("challenger-B", False)),
        ("prod", Target("prod", False)),
    ],
)
def test_target_parse_recognises_stages_case_insensitively(text: str, expected: Target) -> None:
    # Stages are normalised to MLflow's spelling; aliases are kept as written (trimmed)
    assert Target.parse(text) == expected


def test_a_target_says_what_it_is() -> None:
    assert (str(PRODUCTION), PRODUCTION.kind) == ("Production", "stage")
    assert (str(CHAMPION), CHAMPION.kind) == ("champion", "alias")


def _policy(name: str, models: tuple[str, ...], targets: tuple[Target, ...]) -> Policy:
    return Policy(name, models, targets, rules=(DescriptionRule(),))


@pytest.mark.parametrize(
    ("pattern", "model", "covered"),
    [
        ("*", "anything-at-all", True),
        ("fraud-*", "fraud-detector", True),
        ("fraud-*", "churn", False),
        ("fraud-*", "Fraud-detector", False),
        ("fraud-?", "fraud-a", True),
        ("fraud-?", "fraud-ab", False),
        ("[ab]*", "beta", True),
        ("[ab]*", "gamma", False),
        ("exact", "exact", True),
        ("exact", "exactly", False),
    ],
)
def test_models_are_glob_patterns_matched_case_sensitively(
    pattern: str, model: str, covered: bool
) -> None:
    policy = _policy("p", (pattern,), (CHAMPION,))
    assert policy.covers(model, CHAMPION) is covered


def test_a_policy_covers_only_its_own_targets() -> None:
    policy = _policy("p", ("*",), (CHAMPION, PRODUCTION))
    assert policy.covers("m", Target.parse("production"))
    assert not policy.covers("m", Target.parse("Staging"))
    assert not policy.covers("m", Target.parse("Champion"))  # aliases are case-sensitive


def test_covering_lists_every_policy_that_covers_in_file_order() -> None:
    # Given three policies, two of which cover fraud-detector for champion
    everyone = _policy("everyone", ("*",), (CHAMPION,))
    fraud = _policy("fraud", ("fraud-*",), (CHAMPION, PRODUCTION))
    staging = _policy("staging-only", ("*",), (Target("Staging", True),))
    policy_set = PolicySet((everyone, fraud, staging))
    # When asked which cover it
    # Then exactly those two, in order; and the target is governed
    assert policy_set.covering("fraud-detector", CHAMPION) == [everyone, fraud]
    assert policy_set.covering("churn", PRODUCTION) == []
    assert policy_set.governs("fraud-detector", PRODUCTION)
    assert not policy_set.governs("churn", PRODUCTION)


# --- errors, each with its line ----------------------------------------------------------------


def test_an_unknown_key_is_reported_at_its_line() -> None:
    message = config_error(
        """\
        policies:
          - name: p
            modles: ["*"]
            targets: [champion]
            rules:
              - description: required
        """
    )
    assert message.startswith("policy.yaml:3:")
    assert "unknown key 'modles'" in message


def test_missing_targets_is_reported_at_the_policy() -> None:
    message = config_error(
        """\
        policies:
          - name: first
            targets: [champion]
            rules: [{description: required}]
          - name: second
            rules: [{description: required}]
        """
    )
    assert message.startswith("policy.yaml:5:")
    assert "missing 'targets'" in message


def test_min_above_max_is_reported_at_the_rule() -> None:
    message = config_error(
        """\
        policies:
          - name: p
            targets: [champion]
            rules:
              - description: required
              - metric: accuracy
                min: 0.95
                max: 0.9
        """
    )
    assert message.startswith("policy.yaml:6:")
    assert "min 0.95 is above max 0.9" in message


def test_a_non_numeric_min_is_reported_at_its_value() -> None:
    message = config_error(
        """\
        policies:
          - name: p
            targets: [champion]
            rules:
              - metric: accuracy
                min: high
        """
    )
    assert message.startswith("policy.yaml:6:")
    assert "'min' must be a number, not 'high'" in message


@pytest.mark.parametrize("value", ["true", "[0.9]"])
def test_a_min_that_is_a_boolean_or_a_list_is_not_a_number(value: str) -> None:
    message = config_error(
        f"""\
        policies:
          - name: p
            targets: [champion]
            rules:
              - metric: accuracy
                min: {value}
        """
    )
    assert message.startswith("policy.yaml:6:")
    assert "'min' must be" in message


def test_a_rule_of_no_known_kind_is_reported_at_the_rule() -> None:
    message = config_error(
        """\
        policies:
          - name: p
            targets: [champion]
            rules:
              - description: required
              - threshold: 0.9
        """
    )
    assert message.startswith("policy.yaml:6:")
    assert "unknown rule with keys ['threshold']" in message


def test_a_duplicate_policy_name_is_reported_at_the_second_one() -> None:
    message = config_error(
        """\
        policies:
          - name: gate
            targets: [champion]
            rules: [{description: required}]
          - name: other
            targets: [champion]
            rules: [{description: required}]
          - name: gate
            targets: [Production]
            rules: [{description: required}]
        """
    )
    assert message.startswith("policy.yaml:8:")
    assert "policy name 'gate' is used twice" in message


def test_a_mode_other_than_enforce_or_audit_is_reported_at_its_line() -> None:
    message = config_error(
        """\
        policies:
          - name: p
            targets: [champion]
            mode: shadow
            rules: [{description: required}]
        """
    )
    assert message.startswith("policy.yaml:4:")
    assert "mode must be enforce or audit" in message


def test_a_yaml_syntax_error_is_reported_at_its_line() -> None:
    message = config_error(
        """\
        policies:
          - name: p
            targets: [champion]
            rules:
              - description: required
             - tags: [git_commit]
        """
    )
    assert message.startswith("policy.yaml:6:")
    assert "not valid YAML" in message


@pytest.mark.parametrize("empty", ["[]", "", "null"])
def test_empty_policies_are_reported(empty: str) -> None:
    message = config_error(f"policies: {empty}\n")
    assert message.startswith("policy.yaml:1:")
    assert "'policies' must be a non-empty list" in message


@pytest.mark.parametrize(
    ("rule", "problem"),
    [
        ("{metric: accuracy}", "a metric rule needs min, max or both"),
        ("{description: optional}", "write 'description: required'"),
        ("{tags: []}", "'tags' must be a non-empty list of strings"),
        ("{compare_to: champion}", "missing 'metric'"),
        ("{compare_to: champion, metric: auc, min: 1}", "unknown key 'min'"),
        ("{compare_to: champion, metric: auc, greater_is_better: maybe}", "true or false"),
        ("{metric: accuracy, min: 0.9, min: 0.8}", "key 'min' appears twice"),
        ("just-a-string", "each rule must be a mapping"),
    ],
)
def test_a_malformed_rule_is_reported_at_its_line(rule: str, problem: str) -> None:
    message = config_error(
        f"""\
        policies:
          - name: p
            targets: [champion]
            rules:
              - {rule}
        """
    )
    assert message.startswith("policy.yaml:5:")
    assert problem in message


@pytest.mark.parametrize(
    ("text", "line", "problem"),
    [
        ("- name: p\n", 1, "the file must be a mapping"),
        ("policies: []\nextra: 1\n", 2, "unknown key 'extra'"),
        ("policies:\n  - name: p\n    targets: [champion]\n    rules: []\n", 4, "'rules'"),
        ("policies:\n  - name: ''\n    targets: [a]\n    rules: [{tags: x}]\n", 2, "'name'"),
        ("policies:\n  - name: p\n    targets: [1]\n    rules: [{tags: x}]\n", 3, "'targets'"),
    ],
)
def test_other_structural_mistakes_name_their_line(text: str, line: int, problem: str) -> None:
    message = config_error(text)
    assert message.startswith(f"policy.yaml:{line}:")
    assert problem in message


def test_an_unreadable_file_is_a_config_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as excinfo:
        load_policies(missing)
    assert str(missing) in str(excinfo.value)
    assert "cannot read it" in str(excinfo.value)


def test_a_directory_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read it"):
        load_policies(tmp_path)


def test_a_file_error_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "gate.yaml"
    path.write_text("policies:\n  - name: p\n    targets: [a]\n    rules: [{x: 1}]\n")
    with pytest.raises(ConfigError) as excinfo:
        load_policies(path)
    assert str(excinfo.value).startswith(f"{path}:4:")


@pytest.mark.parametrize("written", [".nan", "nan", "NaN"])
def test_a_nan_bound_is_rejected(written: str) -> None:
    message = config_error(
        f"""\
        policies:
          - name: p
            targets: [champion]
            rules:
              - metric: accuracy
                min: {written}
        """
    )
    assert message.startswith("policy.yaml:6:")


@pytest.mark.parametrize(
    ("field", "value"), [("name", "!env GATE_NAME"), ("min", "!!float abc")], ids=str
)
def test_a_bad_yaml_tag_is_a_config_error_with_its_line(field: str, value: str) -> None:
    name = value if field == "name" else "p"
    low = value if field == "min" else "0.9"
    message = config_error(
        f"""\
        policies:
          - name: {name}
            targets: [champion]
            rules:
              - metric: accuracy
                min: {low}
        """
    )
    assert message.startswith(f"policy.yaml:{2 if field == 'name' else 6}:")


def test_a_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("policies:  # propriété de l'équipe\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=re.escape(str(path))):
        load_policies(path)
