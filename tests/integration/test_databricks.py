"""The Databricks flow end to end: the real receiver (gunicorn) and a real Celery worker on a
private Redis, against the fake Databricks workspace of tests/fake_databricks.py over HTTP.

The webhook is registered with `mlflow-gate webhook register --databricks`; the fake then
delivers signed registry webhooks to the receiver, as Databricks would. No MLflow server runs.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import Stack
from fake_databricks import Delivery, FakeDatabricks, sign
from harness import wait_until

pytestmark = pytest.mark.integration

TOKEN = "dapi-integration-token"
HOOK_SECRET = "dbx-integration-secret"

POLICY = """
policies:
  - name: production-quality
    targets: [Production]
    rules:
      - metric: validation_accuracy
        min: 0.90
      - four_eyes: true
      - max_age_days: 30
      - compare_to: Production
        metric: validation_accuracy
  - name: staging-smoke
    targets: [Staging]
    on_violation: revert
    rules:
      - metric: validation_accuracy
        min: 0.50
"""


class Workspace:
    def __init__(self, stack: Stack, fake: FakeDatabricks) -> None:
        self.stack, self.fake = stack, fake

    def model(self) -> str:
        return f"dbx-model-{uuid.uuid4().hex[:8]}"

    def wait_calls(self, suffix: str, model: str, count: int = 1, timeout: float = 60) -> None:
        wait_until(
            lambda: len(self.fake.calls_to(suffix, model)) >= count,
            timeout,
            what=f"{count} call(s) to {suffix} for {model}\n{self.stack.logs()}",
        )

    def wait_done(self, body: bytes, timeout: float = 60) -> None:
        """Until the worker has finished the event this body became."""
        key = "gate:done:dbx-" + hashlib.sha256(body).hexdigest()
        wait_until(
            lambda: bool(self.stack.redis.exists(key)),
            timeout,
            what=f"event {key}\n{self.stack.logs()}",
        )

    def decisions(self, model: str) -> list[dict[str, Any]]:
        return self.stack.decisions(model)

    def post(self, body: bytes, headers: dict[str, str]) -> requests.Response:
        return requests.post(
            f"{self.stack.receiver_url}/webhooks/databricks", data=body, headers=headers, timeout=5
        )


def transitions(fake: FakeDatabricks, model: str) -> list[Delivery]:
    return [
        d
        for d in list(fake.deliveries)
        if d.event == "MODEL_VERSION_TRANSITIONED_STAGE"
        and json.loads(d.body)["model_name"] == model
    ]


@pytest.fixture(scope="module")
def dbx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    fake = FakeDatabricks(TOKEN)
    workdir: Path = tmp_path_factory.mktemp("databricks")
    stack = Stack(workdir)
    policy = workdir / "databricks-policy.yaml"
    policy.write_text(POLICY)
    stack.env.update(
        {
            "GATE_DATABRICKS_HOST": fake.url,
            "GATE_DATABRICKS_TOKEN": TOKEN,
            "GATE_DATABRICKS_WEBHOOK_SECRET": HOOK_SECRET,
            "GATE_POLICY_FILE": str(policy),
            "GATE_REDRIVE_ENABLED": "false",
            "GATE_WORKER_METRICS_PORT": "0",
        }
    )
    try:
        stack.start_redis()
        stack.start_receiver()
        stack.start_worker()
        out = stack.gate(
            "webhook", "register", "--databricks",
            "--url", f"{stack.receiver_url}/webhooks/databricks",
        )  # fmt: skip
        assert "created registry webhook" in out.stdout
        again = stack.gate(
            "webhook", "register", "--databricks",
            "--url", f"{stack.receiver_url}/webhooks/databricks",
        )  # fmt: skip
        assert "already sends" in again.stdout
        (hook,) = fake.state.webhooks
        assert hook["http_url_spec"]["secret"] == HOOK_SECRET
        assert hook["events"] == ["TRANSITION_REQUEST_CREATED", "MODEL_VERSION_TRANSITIONED_STAGE"]
        yield Workspace(stack, fake)
    finally:
        stack.close()
        fake.close()


def test_a_passing_request_is_approved_and_its_transition_is_no_violation(dbx: Workspace) -> None:
    fake, model = dbx.fake, dbx.model()
    fake.add_version(model, "1", creator="alice", metrics={"validation_accuracy": 0.91})
    fake.add_version(model, "2", creator="alice", metrics={"validation_accuracy": 0.95})
    fake.state.versions[(model, "1")]["current_stage"] = "Production"
    fake.request_transition(model, "2", "Production", user="bob")
    dbx.wait_calls("transition-requests/approve", model)
    (call,) = fake.calls_to("transition-requests/approve", model)
    assert call.body is not None
    assert call.body["archive_existing_versions"] is True
    assert call.body["stage"] == "Production" and call.body["version"] == "2"
    comment = call.body["comment"]
    assert "Checks passed: validation_accuracy is 0.95 (required >= 0.9)" in comment
    assert "four eyes: requested by bob, created by alice" in comment
    assert "validation_accuracy is 0.95, not below current Production (version 1: 0.91)" in comment
    assert fake.stage_of(model, "2") == "Production"
    assert fake.stage_of(model, "1") == "Archived"
    # The approval's own MODEL_VERSION_TRANSITIONED_STAGE webhook reaches the gate: no violation.
    wait_until(lambda: bool(transitions(fake, model)), 30, what="the transition webhook")
    (transition,) = transitions(fake, model)
    assert transition.status == 202
    dbx.wait_done(transition.body)
    outcomes = [d["outcome"] for d in dbx.decisions(model)]
    assert outcomes == ["approved"]


def test_a_failing_request_is_rejected_with_reasons(dbx: Workspace) -> None:
    fake, model = dbx.fake, dbx.model()
    fake.add_version(
        model, "1", creator="carol", metrics={"validation_accuracy": 0.85}, run_started_days_ago=45
    )
    fake.request_transition(model, "1", "Production", user="carol")
    dbx.wait_calls("transition-requests/reject", model)
    (call,) = fake.calls_to("transition-requests/reject", model)
    assert call.body is not None
    comment = call.body["comment"]
    assert "validation_accuracy is 0.85, below the minimum 0.9" in comment
    assert "requested by carol, who also created it" in comment
    assert "is 45 days old, above the maximum 30 days" in comment
    assert not fake.calls_to("transition-requests/approve", model)
    assert fake.stage_of(model, "1") == "None"
    wait_until(lambda: bool(dbx.decisions(model)), 30, what="the decision")
    assert dbx.decisions(model)[0]["outcome"] == "rejected"


def test_a_request_no_longer_open_is_recorded_and_nothing_is_called(dbx: Workspace) -> None:
    fake, model = dbx.fake, dbx.model()
    fake.add_version(model, "1", creator="alice", metrics={"validation_accuracy": 0.95})
    # The webhook arrives after someone else already acted: no request is open.
    body = fake.payload("TRANSITION_REQUEST_CREATED", model, "1", "Production", "None")
    response = dbx.post(body, {"X-Databricks-Signature": sign(HOOK_SECRET, body)})
    assert response.status_code == 202, response.text
    dbx.wait_done(body)
    assert not fake.calls_to("transition-requests/approve", model)
    assert not fake.calls_to("transition-requests/reject", model)
    (entry,) = dbx.decisions(model)
    assert entry["outcome"] == "skipped" and "no longer open" in entry["reason"]
    # The same body again is a duplicate delivery.
    again = dbx.post(body, {"X-Databricks-Signature": sign(HOOK_SECRET, body)})
    assert (again.status_code, again.json()["status"]) == (200, "duplicate")


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-Databricks-Signature": "0" * 64},
        {"X-Databricks-Signature": sign("not-the-secret", b"x")},
    ],
)
def test_unsigned_and_forged_webhooks_are_refused(dbx: Workspace, headers: dict[str, str]) -> None:
    model = dbx.model()
    body = dbx.fake.payload("TRANSITION_REQUEST_CREATED", model, "1", "Production", "None")
    response = dbx.post(body, headers)
    assert response.status_code == 401
    assert not dbx.stack.redis.exists(
        "gate:delivery:databricks:dbx-" + hashlib.sha256(body).hexdigest()
    )


def test_a_version_moved_outside_the_gate_is_a_violation_reverted_if_asked(
    dbx: Workspace,
) -> None:
    fake, model = dbx.fake, dbx.model()
    fake.add_version(model, "1", creator="alice", metrics={"validation_accuracy": 0.95})
    fake.add_version(model, "2", creator="alice", metrics={"validation_accuracy": 0.95})
    dbx.wait_done(fake.move_outside(model, "1", "Production"))
    assert fake.stage_of(model, "1") == "Production"  # production-quality only reports
    dbx.wait_done(fake.move_outside(model, "2", "Staging"))
    wait_until(lambda: fake.stage_of(model, "2") == "None", 30, what="the revert")
    outcomes = sorted((d["version"], d["outcome"]) for d in dbx.decisions(model))
    assert outcomes == [("1", "violation"), ("2", "violation")]


def test_databricks_down_dead_letters_after_the_budget_then_replays(dbx: Workspace) -> None:
    fake, stack, model = dbx.fake, dbx.stack, dbx.model()
    fake.add_version(model, "1", creator="alice", metrics={"validation_accuracy": 0.95})
    fake.down = True
    try:
        body = fake.request_transition(model, "1", "Production", user="bob")
        entry_id = "dbx-" + hashlib.sha256(body).hexdigest()
        wait_until(
            lambda: bool(stack.redis.hexists("gate:deadletter", entry_id)),
            90,
            what=f"the dead letter\n{stack.logs()}",
        )
    finally:
        fake.down = False
    letter = json.loads(stack.redis.hget("gate:deadletter", entry_id) or "{}")
    assert letter["error_class"] == "MlflowUnavailable"
    assert "Databricks answered 503" in letter["error"]
    assert letter["attempts"] == 3 and letter["transient"] is True
    assert not fake.calls_to("transition-requests/approve", model)
    # The same replay as the open-source flow.
    stack.gate("dlq", "replay", entry_id)
    dbx.wait_calls("transition-requests/approve", model)
    assert fake.stage_of(model, "1") == "Production"


def test_rollback_puts_the_stage_back_on_the_previous_approved_version(dbx: Workspace) -> None:
    fake, stack, model = dbx.fake, dbx.stack, dbx.model()
    for version, accuracy in (("1", 0.92), ("2", 0.96)):
        fake.add_version(model, version, creator="alice", metrics={"validation_accuracy": accuracy})
        fake.request_transition(model, version, "Production", user="bob")
        dbx.wait_calls("transition-requests/approve", model, count=int(version))
    assert (fake.stage_of(model, "1"), fake.stage_of(model, "2")) == ("Archived", "Production")
    stack.idle()
    result = stack.gate(
        "rollback", model, "--target", "Production", "--reason", "latency spike", "--databricks"
    )
    assert "version 2 -> version 1" in result.stdout
    (call,) = fake.calls_to("databricks/model-versions/transition-stage", model)
    assert call.body is not None
    assert call.body["version"] == "1" and call.body["archive_existing_versions"] is True
    assert "rollback by operator: latency spike" in call.body["comment"]
    assert (fake.stage_of(model, "1"), fake.stage_of(model, "2")) == ("Production", "Archived")
    latest = stack.decisions(model, "1")[0]
    assert latest["outcome"] == "approved"
    assert latest["reason"].startswith("rollback by operator: latency spike.")
    # Its transition webhook is the gate's own: no violation, even after a moment.
    time.sleep(2)
    stack.idle()
    assert all(d["outcome"] != "violation" for d in stack.decisions(model))


def test_a_request_whose_webhook_was_lost_is_decided_once_by_the_sweep(dbx: Workspace) -> None:
    fake, stack, model = dbx.fake, dbx.stack, dbx.model()
    fake.add_version(model, "1", creator="alice", metrics={"validation_accuracy": 0.95})
    # The request opens in the workspace, but its webhook never reaches the gate.
    fake.request_transition(model, "1", "Production", user="bob", deliver=False)
    assert not [d for d in list(fake.deliveries) if json.loads(d.body)["model_name"] == model]
    time.sleep(2)
    assert not fake.calls_to("transition-requests/approve", model)  # no sweep runs yet
    stack.start_worker("beat-worker", beat=True)  # GATE_SWEEP_INTERVAL_SECONDS=1
    try:
        dbx.wait_calls("transition-requests/approve", model)
        assert fake.stage_of(model, "1") == "Production" and not fake.open_requests(model, "1")
        # Later sweeps find nothing open: decided once, and nothing else in the audit trail.
        sweeps = len(fake.calls_to("registered-models/list"))
        wait_until(
            lambda: len(fake.calls_to("registered-models/list")) >= sweeps + 2,
            30,
            what=f"two more sweeps\n{stack.logs()}",
        )
        stack.idle()
        assert len(fake.calls_to("transition-requests/approve", model)) == 1
        assert [d["outcome"] for d in dbx.decisions(model)] == ["approved"]
    finally:
        stack.stop("beat-worker")
