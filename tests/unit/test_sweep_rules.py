"""worker.registries.mlflow.undecided: which versions the sweep owes a decision (tags alone)."""

from __future__ import annotations

import pytest

from shared import tags
from worker.registries.mlflow import undecided


def decided(request: str, target: str, status: str = tags.APPROVED) -> dict[str, str]:
    return {tags.REQUEST: request, tags.STATUS: status, tags.TARGET: target}


def test_a_version_without_a_request_is_not_owed_a_decision() -> None:
    assert undecided({}) is False
    # not even when it carries an old decision
    assert undecided({tags.STATUS: tags.APPROVED, tags.TARGET: "champion"}) is False


def test_a_request_without_a_status_is_undecided() -> None:
    assert undecided({tags.REQUEST: "champion"}) is True


def test_a_request_with_a_target_but_no_status_is_undecided() -> None:
    # The gate writes governance.status last: without it the decision is not complete
    assert undecided({tags.REQUEST: "champion", tags.TARGET: "champion"}) is True


@pytest.mark.parametrize("status", [tags.APPROVED, tags.REJECTED])
def test_a_request_decided_for_the_same_target_is_decided(status: str) -> None:
    assert undecided(decided("champion", "champion", status)) is False


@pytest.mark.parametrize(
    "request_spelling", ["production", "PRODUCTION", "Production", " production "]
)
def test_a_stage_request_in_any_spelling_matches_its_canonical_target(
    request_spelling: str,
) -> None:
    # Given a request spelled "production" decided as the canonical stage "Production"
    # When the sweep looks at it, Then it is decided
    assert undecided(decided(request_spelling, "Production")) is False


def test_aliases_are_case_sensitive() -> None:
    # An alias "Champion" is not the alias "champion": a decision for one does not answer the other
    assert undecided(decided("Champion", "champion")) is True


@pytest.mark.parametrize(
    ("requested", "decided_target"),
    [("challenger", "champion"), ("Production", "Staging"), ("champion", "Production")],
)
def test_a_request_changed_to_another_target_after_a_decision_is_undecided(
    requested: str, decided_target: str
) -> None:
    # Given a decision for one target, When the engineer asks for another, Then it is owed
    assert undecided(decided(requested, decided_target)) is True
