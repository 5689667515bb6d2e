"""Hardening, against real processes: a real `mlflow server`, Redis, the receiver and workers.

- compare_to a stage finds the stage's holder whatever the model is called (quotes, backslashes).
- compare_to fails closed when the holder's run is gone (deleted, then garbage-collected by
  `mlflow gc`: MLflow answers 404) or its metric is not a finite number (NaN logged).

Models here are named `hardening-*`: the shared stack's policy `hardening-compare` makes them
compare a candidate for Production with the version holding it (conftest.POLICY).
"""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest
from conftest import Stack
from mlflow.exceptions import MlflowException

pytestmark = pytest.mark.integration

REQUEST = "governance.request"


def named_model(stack: Stack, name: str) -> str:
    model = f"hardening-{uuid.uuid4().hex[:6]}-{name}"
    stack.client.create_registered_model(model)
    return model


def request(stack: Stack, model: str, version: str, target: str = "Production") -> dict[str, str]:
    """Ask for the target; the version's tags once the gate has decided."""
    stack.client.set_model_version_tag(model, version, REQUEST, target)
    return stack.wait_for_decision(model, version)


def holder_in_production(stack: Stack, model: str, accuracy: float) -> str:
    """A version promoted to Production through the gate (nobody held it: nothing to compare)."""
    version = str(stack.new_version(model, {"validation_accuracy": accuracy}).version)
    tags = request(stack, model, version)
    assert tags["governance.status"] == "approved", tags["governance.reason"]
    return version


def test_compare_to_finds_the_holder_of_a_model_named_with_quotes(stack: Stack) -> None:
    # Given a model named with a quote, a backslash and double quotes, Production held by a
    # version with validation_accuracy 0.95
    model = named_model(stack, 'o\'brien\\model "x"')
    holder = holder_in_production(stack, model, 0.95)
    # When a version that passes the minimum (0.90) but is worse than the holder asks for it
    worse = str(stack.new_version(model, {"validation_accuracy": 0.92}).version)
    tags = request(stack, model, worse)
    # Then it is compared with the holder, and rejected
    assert tags["governance.status"] == "rejected", tags["governance.reason"]
    assert (
        f"validation_accuracy is 0.92, below current Production (version {holder}: 0.95)"
        in tags["governance.reason"]
    )
    assert stack.client.get_model_version(model, holder).current_stage == "Production"
    assert stack.client.get_model_version(model, worse).current_stage == "None"


def test_compare_to_fails_closed_when_the_holders_run_is_gone(stack: Stack) -> None:
    # Given Production held by a version whose run was deleted and garbage-collected since
    model = named_model(stack, "gone")
    holder = holder_in_production(stack, model, 0.95)
    run_id = stack.client.get_model_version(model, holder).run_id
    stack.client.delete_run(run_id)
    gc = subprocess.run(
        [sys.executable, "-m", "mlflow", "gc", "--run-ids", run_id,
         "--backend-store-uri", f"sqlite:///{stack.workdir / 'mlflow' / 'mlflow.db'}",
         "--tracking-uri", stack.mlflow_uri],
        env=stack.env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert gc.returncode == 0, gc.stderr
    with pytest.raises(MlflowException, match="not found"):
        stack.client.get_run(run_id)  # MLflow answers 404 for it now
    # When a better version asks for Production
    better = str(stack.new_version(model, {"validation_accuracy": 0.99}).version)
    tags = request(stack, model, better)
    # Then it is rejected: the comparison cannot be made, and the reason says why and what to do
    assert tags["governance.status"] == "rejected", tags["governance.reason"]
    reason = tags["governance.reason"]
    assert (
        f"cannot compare with current Production (version {holder}): run {run_id} of version "
        f"{holder}: the run does not exist (deleted?)"
    ) in reason
    assert "put Production on a version whose run has a finite validation_accuracy" in reason
    assert stack.client.get_model_version(model, holder).current_stage == "Production"
    assert stack.client.get_model_version(model, better).current_stage == "None"


def test_compare_to_fails_closed_when_the_holders_metric_is_nan(stack: Stack) -> None:
    # Given Production held by a version whose run's latest validation_accuracy is NaN
    model = named_model(stack, "nan")
    holder = holder_in_production(stack, model, 0.95)
    run_id = stack.client.get_model_version(model, holder).run_id
    stack.client.log_metric(run_id, "validation_accuracy", float("nan"), step=1)
    # When a better version asks for Production
    better = str(stack.new_version(model, {"validation_accuracy": 0.99}).version)
    tags = request(stack, model, better)
    # Then it is rejected, naming the holder's unusable value
    assert tags["governance.status"] == "rejected", tags["governance.reason"]
    assert (
        f"cannot compare with current Production (version {holder}): validation_accuracy is nan "
        f"in run {run_id}, not a usable number"
    ) in tags["governance.reason"]
    assert stack.client.get_model_version(model, better).current_stage == "None"
