"""Hardening, against real processes: a real `mlflow server`, Redis, the receiver and workers.

- compare_to a stage finds the stage's holder whatever the model is called (quotes, backslashes).

Models here are named `hardening-*`: the shared stack's policy `hardening-compare` makes them
compare a candidate for Production with the version holding it (conftest.POLICY).
"""

from __future__ import annotations

import uuid

import pytest
from conftest import Stack

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
