"""Governance beyond thresholds on open-source MLflow, with the shared real stack: `mlflow-gate
rollback` of an alias and of a stage, and compare_to a stage, four_eyes and max_age_days through
`mlflow-gate explain` (the worker's policy file is the stack's; explain reads its own)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import Stack, gate_command

pytestmark = pytest.mark.integration

REQUEST = "governance.request"

RULES = """
policies:
  - name: rules
    targets: [Production]
    rules:
      - compare_to: Production
        metric: validation_accuracy
      - four_eyes: true
      - max_age_days: 30
"""


def promote(stack: Stack, model: str, version: str, target: str, count: int = 1) -> None:
    stack.client.set_model_version_tag(model, version, REQUEST, target)
    tags = stack.wait_for_decision(model, version, count=count)
    assert tags["governance.status"] == "approved", tags


def version_by(stack: Stack, model: str, accuracy: float, user: str = "alice") -> str:
    run = stack.client.create_run(experiment_id="0", tags={"mlflow.user": user})
    stack.client.log_metric(run.info.run_id, "validation_accuracy", accuracy)
    stack.client.set_terminated(run.info.run_id)
    mv = stack.client.create_model_version(
        model, source=f"runs:/{run.info.run_id}/model", run_id=run.info.run_id, description="d"
    )
    return str(mv.version)


def explain(
    stack: Stack, policy: Path, model: str, version: str
) -> subprocess.CompletedProcess[str]:
    env = {**stack.env, "GATE_POLICY_FILE": str(policy)}
    return subprocess.run(
        [*gate_command(), "explain", model, version, "--target", "Production"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_rollback_puts_an_alias_back_on_the_previous_approved_version(stack: Stack) -> None:
    model = stack.new_model()
    first = stack.new_version(model, {"validation_accuracy": 0.95}).version
    second = stack.new_version(model, {"validation_accuracy": 0.97}).version
    promote(stack, model, first, "champion")
    promote(stack, model, second, "champion")
    assert stack.alias_version(model, "champion") == second
    stack.idle()

    result = stack.gate("rollback", model, "--target", "champion", "--reason", "bad canary")
    assert f"version {second} -> version {first}" in result.stdout
    assert stack.alias_version(model, "champion") == first
    tags = stack.version_tags(model, first)
    assert tags["governance.status"] == "approved"
    assert tags["governance.reason"].startswith("rollback by operator: bad canary.")
    assert tags["governance.policy"] == "operator-rollback"
    pointer = stack.client.get_registered_model(model).tags["governance.approved.champion"]
    assert pointer == first
    outcomes = [(d["version"], d["outcome"]) for d in stack.decisions(model)][:2]
    assert outcomes == [(second, "rolled_back"), (first, "approved")]
    # The alias's own webhook finds the version approved: the alias stays.
    stack.idle()
    assert stack.alias_version(model, "champion") == first

    # The version rolled back from does not count as approved: nothing left to roll back to.
    again = stack.gate("rollback", model, "--target", "champion", "--reason", "again", check=False)
    assert again.returncode == 1
    assert "cannot roll back alias 'champion'" in again.stdout + again.stderr
    assert stack.alias_version(model, "champion") == first


def test_rollback_of_a_stage_and_without_history(stack: Stack) -> None:
    model = stack.new_model()
    first = stack.new_version(model, {"validation_accuracy": 0.95}).version
    second = stack.new_version(model, {"validation_accuracy": 0.97}).version
    nothing = stack.gate("rollback", model, "--target", "Production", "--reason", "x", check=False)
    assert nothing.returncode == 1
    assert "the gate approved no other version" in nothing.stdout + nothing.stderr
    promote(stack, model, first, "Production")
    promote(stack, model, second, "Production")
    stages = {
        v.version: v.current_stage for v in stack.client.search_model_versions(f"name='{model}'")
    }
    assert stages == {first: "Archived", second: "Production"}

    stack.gate("rollback", model, "--target", "production", "--reason", "drift")
    stages = {
        v.version: v.current_stage for v in stack.client.search_model_versions(f"name='{model}'")
    }
    assert stages == {first: "Production", second: "Archived"}
    assert stack.version_tags(model, first)["governance.reason"].startswith(
        "rollback by operator: drift."
    )


def test_compare_to_a_stage_four_eyes_and_max_age(stack: Stack, tmp_path: Path) -> None:
    policy = tmp_path / "rules.yaml"
    policy.write_text(RULES)
    model = stack.new_model()
    holder = version_by(stack, model, 0.90)
    promote(stack, model, holder, "Production")  # through the gate (stages are deprecated)
    worse = version_by(stack, model, 0.85)
    better = version_by(stack, model, 0.93)

    # Nobody says who requests it: four_eyes fails closed, and says why.
    out = explain(stack, policy, model, better)
    assert out.returncode == 1, out.stderr
    assert "who requested the promotion" in out.stdout and "is unknown" in out.stdout
    assert "compare_to Production on validation_accuracy" in out.stdout

    # The creator (the run's mlflow.user, as MLflow records no user on versions) asks: refused.
    stack.client.set_model_version_tag(model, better, "governance.requested_by", "alice")
    out = explain(stack, policy, model, better)
    assert out.returncode == 1
    assert "requested by alice, who also created it" in out.stdout

    # Someone else asks: the version beats the holder of Production and its run is fresh.
    stack.client.set_model_version_tag(model, better, "governance.requested_by", "bob")
    out = explain(stack, policy, model, better)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"required >= 0.9 (version {holder} has 0.9)" in out.stdout
    assert "required run started at most 30 days ago" in out.stdout
    assert "3 of 3 checks passed" in out.stdout

    stack.client.set_model_version_tag(model, worse, "governance.requested_by", "bob")
    out = explain(stack, policy, model, worse)
    assert out.returncode == 1
    assert f"validation_accuracy is 0.85, below current Production (version {holder}: 0.9)" in (
        out.stdout
    )
