"""The Databricks registry and the decision pipeline against the fake workspace
(tests/fake_databricks.py) over real HTTP; the fake refuses what the real API refuses. Redis is
fakeredis."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import requests
from fake_databricks import FakeDatabricks
from harness import recent

from shared.errors import MlflowNotFound, MlflowRequestError, MlflowUnavailable
from shared.events import GateEvent, Kind, Origin, RegistryKind
from shared.ledger import Ledger
from shared.policy import parse_policies
from shared.settings import DatabricksSettings, Settings
from worker.pipeline import Pipeline
from worker.registries import Registries, workspace
from worker.registries.databricks import REQUESTS_APPROVE, TRANSITION_STAGE, DatabricksRegistry

TOKEN = "dapi-unit-token"
POLICY = """
policies:
  - name: prod
    targets: [Production]
    rules:
      - metric: accuracy
        min: 0.9
      - four_eyes: true
      - max_age_days: 30
      - compare_to: Production
        metric: accuracy
  - name: staging
    targets: [Staging]
    on_violation: revert
    rules:
      - metric: accuracy
        min: 0.5
"""


@pytest.fixture
def fake() -> Iterator[FakeDatabricks]:
    server = FakeDatabricks(TOKEN)
    try:
        yield server
    finally:
        server.close()


def settings(fake: FakeDatabricks, token: str = TOKEN) -> Settings:
    return Settings(
        databricks=DatabricksSettings(host=fake.url, token=token), mlflow_timeout_seconds=2
    )


def registry(fake: FakeDatabricks, token: str = TOKEN) -> DatabricksRegistry:
    return workspace(settings(fake, token))


@pytest.fixture
def flow(fake: FakeDatabricks, sqlite_ledger: Ledger) -> tuple[Pipeline, Ledger]:
    log = sqlite_ledger
    registries = Registries({RegistryKind.DATABRICKS: workspace(settings(fake))})
    return Pipeline(registries, parse_policies(POLICY), log), log


def event(kind: Kind, model: str, version: str, stage: str, from_stage: str = "None") -> GateEvent:
    return GateEvent(
        event_id=f"dbx-{model}-{version}-{kind.value}",
        registry=RegistryKind.DATABRICKS,
        origin=Origin.WEBHOOK,
        kind=kind,
        model=model,
        version=version,
        target=stage,
        received_at=0.0,
        webhook_event="TEST",
        from_stage=from_stage,
    )


# --- the fake is strict, and the client says what to fix -----------------------------------


def test_a_wrong_or_missing_token_is_refused(fake: FakeDatabricks) -> None:
    fake.add_version("m", "1", creator="alice")
    with pytest.raises(MlflowRequestError, match="GATE_DATABRICKS_TOKEN") as caught:
        registry(fake, token="wrong").version("m", "1")
    assert caught.value.status == 401
    answer = requests.get(
        f"{fake.url}/api/2.0/mlflow/model-versions/get", params={"name": "m", "version": "1"}
    )
    assert answer.status_code == 401


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"name": "m", "version": "1", "stage": "Production"}, "archive_existing_versions"),
        (
            {"name": "m", "version": 1, "stage": "Production", "archive_existing_versions": True},
            "'version': expected a string",
        ),
        (
            {
                "name": "m",
                "version": "1",
                "stage": "Production",
                "archive_existing_versions": "true",
            },
            "expected a boolean",
        ),
        (
            {"name": "m", "version": "1", "stage": "prod", "archive_existing_versions": True},
            "Invalid stage",
        ),
    ],
)
def test_the_fake_refuses_what_the_api_refuses(
    fake: FakeDatabricks, body: dict[str, object], fragment: str
) -> None:
    fake.add_version("m", "1", creator="alice")
    fake.request_transition("m", "1", "Production", user="bob")
    rest = registry(fake).rest
    for path in (REQUESTS_APPROVE, TRANSITION_STAGE):
        with pytest.raises(MlflowRequestError, match=fragment) as caught:
            rest.call("POST", path, json=body)
        assert caught.value.status == 400
    assert fake.stage_of("m", "1") == "None"


def test_an_outage_is_transient_and_a_missing_version_permanent(fake: FakeDatabricks) -> None:
    databricks = registry(fake)
    with pytest.raises(MlflowNotFound, match="Databricks answered 404"):
        databricks.version("nope", "1")
    fake.down = True
    with pytest.raises(MlflowUnavailable, match="Databricks answered 503"):
        databricks.version("nope", "1")
    assert not databricks.healthy()


# --- the flow ------------------------------------------------------------------------------


def test_a_passing_request_is_approved_with_archive_and_a_comment(
    fake: FakeDatabricks, flow: tuple[Pipeline, Ledger]
) -> None:
    pipeline, log = flow
    fake.add_version("m", "1", creator="alice", metrics={"accuracy": 0.91}, stage="Production")
    fake.add_version("m", "2", creator="alice", metrics={"accuracy": 0.95})
    fake.request_transition("m", "2", "Production", user="bob")
    outcome = pipeline.handle(event(Kind.REQUEST, "m", "2", "Production"))
    assert "approved" in outcome
    (call,) = fake.calls_to("transition-requests/approve")
    assert call.body is not None
    assert call.body["archive_existing_versions"] is True
    assert call.body["stage"] == "Production" and call.body["version"] == "2"
    assert "Checks passed: accuracy is 0.95 (required >= 0.9)" in call.body["comment"]
    assert "four eyes: requested by bob, created by alice" in call.body["comment"]
    assert (fake.stage_of("m", "2"), fake.stage_of("m", "1")) == ("Production", "Archived")
    (entry,) = recent(log, "m")
    assert entry["outcome"] == "approved" and entry["target"] == "Production"
    assert entry["registry"] == "databricks" and entry["origin"] == "webhook"
    assert {
        "time", "registry", "model", "version", "target", "outcome", "reason", "policies",
        "checks", "event_id", "origin", "requested_by", "facts",
    } <= set(entry)  # fmt: skip
    assert entry["requested_by"] == "bob" and entry["action_state"] == "done"
    # Its own transition webhook is no violation.
    again = pipeline.handle(event(Kind.STAGE_TRANSITIONED, "m", "2", "Production"))
    assert "with the gate's approval" in again
    assert len(recent(log, "m")) == 1


def test_a_failing_request_is_rejected_naming_each_check(
    fake: FakeDatabricks, flow: tuple[Pipeline, Ledger]
) -> None:
    pipeline, log = flow
    fake.add_version("m", "1", creator="alice", metrics={"accuracy": 0.85}, run_started_days_ago=40)
    fake.request_transition("m", "1", "Production", user="alice")
    pipeline.handle(event(Kind.REQUEST, "m", "1", "Production"))
    assert not fake.calls_to("transition-requests/approve")
    (call,) = fake.calls_to("transition-requests/reject")
    assert call.body is not None
    comment = call.body["comment"]
    assert "accuracy is 0.85, below the minimum 0.9" in comment
    assert "requested by alice, who also created it" in comment
    assert "is 40 days old, above the maximum 30 days" in comment
    assert fake.stage_of("m", "1") == "None" and not fake.open_requests("m", "1")
    assert recent(log, "m")[0]["outcome"] == "rejected"


def test_a_request_no_longer_open_is_recorded_and_left_alone(
    fake: FakeDatabricks, flow: tuple[Pipeline, Ledger]
) -> None:
    pipeline, log = flow
    fake.add_version("m", "1", creator="alice", metrics={"accuracy": 0.95})
    outcome = pipeline.handle(event(Kind.REQUEST, "m", "1", "Production"))
    assert "nothing done" in outcome
    assert not fake.calls_to("approve") and not fake.calls_to("reject")
    (entry,) = recent(log, "m")
    assert entry["outcome"] == "skipped" and "no longer open" in entry["reason"]


def test_a_version_moved_outside_the_gate_is_a_violation(
    fake: FakeDatabricks, flow: tuple[Pipeline, Ledger]
) -> None:
    pipeline, log = flow
    fake.add_version("m", "1", creator="alice", metrics={"accuracy": 0.95})
    fake.move_outside("m", "1", "Production")
    pipeline.handle(event(Kind.STAGE_TRANSITIONED, "m", "1", "Production"))
    assert fake.stage_of("m", "1") == "Production"  # reported, not moved back
    (entry,) = recent(log, "m")
    assert entry["outcome"] == "violation" and "outside the gate" in entry["reason"]
    # Staging's policy says on_violation: revert.
    fake.add_version("m", "2", creator="alice", metrics={"accuracy": 0.95})
    fake.move_outside("m", "2", "Staging")
    pipeline.handle(event(Kind.STAGE_TRANSITIONED, "m", "2", "Staging"))
    assert fake.stage_of("m", "2") == "None"
    (call,) = fake.calls_to("databricks/model-versions/transition-stage")
    assert call.body is not None and call.body["archive_existing_versions"] is False
    assert "moved back to stage None" in recent(log, "m")[0]["reason"]


def test_an_ungoverned_stage_is_not_guarded(
    fake: FakeDatabricks, flow: tuple[Pipeline, Ledger]
) -> None:
    pipeline, log = flow
    fake.add_version("m", "1", creator="alice")
    fake.move_outside("m", "1", "Archived")
    assert "not governed" in pipeline.handle(event(Kind.STAGE_TRANSITIONED, "m", "1", "Archived"))
    assert not recent(log, "m")


def test_payload_round_trip_of_what_the_fake_sends(fake: FakeDatabricks) -> None:
    from shared.databricks import parse_webhook

    fake.add_version("m", "3", creator="alice")
    raw = fake.request_transition("m", "3", "Staging", user="bob")
    parsed = parse_webhook(raw, received_at=0.0)
    assert parsed is not None and parsed.target == "Staging"
    assert json.loads(raw)["event"] == "TRANSITION_REQUEST_CREATED"
