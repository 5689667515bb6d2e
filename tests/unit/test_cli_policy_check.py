"""`mlflow-gate policy check FILE`: exit 0 with a summary, or exit 1 with the line at fault."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from cli.main import main

VALID = """\
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
  - name: staging-audit
    models: [fraud-*]
    targets: staging
    mode: audit
    rules:
      - metric: latency_ms
        max: 200
"""


def _check(path: Path) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["policy", "check", str(path)])
    return result.exit_code, result.stdout, result.stderr


def test_a_valid_file_exits_0_with_a_summary(tmp_path: Path) -> None:
    # Given a valid policy file with two policies
    path = tmp_path / "policy.yaml"
    path.write_text(VALID, encoding="utf-8")
    # When it is checked
    code, out, err = _check(path)
    # Then exit 0, and a line per policy with its mode, models, targets and rule count
    assert code == 0, err
    assert out.splitlines() == [
        f"ok: {path}: 2 policies",
        "  production-quality [enforce]: models * -> champion (alias), Production (stage); 4 rules",
        "  staging-audit [audit]: models fraud-* -> Staging (stage); 1 rules",
    ]
    assert err == ""


def test_an_invalid_file_exits_1_with_the_line(tmp_path: Path) -> None:
    # Given a file whose second policy has min above max (its rule starts on line 19)
    path = tmp_path / "policy.yaml"
    path.write_text(VALID.replace("max: 200", "max: 200\n        min: 300"), encoding="utf-8")
    # When it is checked
    code, out, err = _check(path)
    # Then exit 1, and stderr names the file, the line and the problem
    assert code == 1
    assert out == ""
    assert err.startswith(f"invalid: {path}:19: ")
    assert "min 300 is above max 200" in err


def test_a_yaml_syntax_error_exits_1_with_the_line(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("policies:\n  - name: p\n    targets: [champion\n    rules: []\n")
    code, _, err = _check(path)
    assert code == 1
    assert err.startswith(f"invalid: {path}:4: not valid YAML")


def test_a_missing_file_exits_1(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    code, _, err = _check(path)
    assert code == 1
    assert f"invalid: GATE_POLICY_FILE={path}: cannot read it" in err


def test_the_policy_file_shipped_with_the_project_is_valid() -> None:
    shipped = Path(__file__).resolve().parents[2] / "policy.yaml"
    code, out, err = _check(shipped)
    assert code == 0, err
    assert out.startswith(f"ok: {shipped}: 1 policies")
