"""The gate end to end, with real processes: MLflow sends the webhooks, the receiver queues
them, the worker decides, and the decision is read back from MLflow."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest
import requests
from conftest import Stack, signed_headers
from harness import wait_until

from shared.evaluation import Decision
from shared.policy import Target
from shared.settings import Settings
from worker.registries import mlflow
from worker.registry import Request
from worker.rest import RestClient

pytestmark = pytest.mark.integration

REQUEST = "governance.request"


def test_a_version_that_passes_gets_the_alias_and_approved(stack: Stack) -> None:
    # Given a version whose run meets the policy
    model = stack.new_model()
    mv = stack.new_version(model, {"validation_accuracy": 0.95})
    # When an engineer requests the champion alias for it
    stack.client.set_model_version_tag(model, mv.version, REQUEST, "champion")
    # Then the gate approves it and points the alias at it
    tags = stack.wait_for_decision(model, mv.version)
    assert tags["governance.status"] == "approved"
    assert tags["governance.target"] == "champion"
    assert tags["governance.policy"] == "production-quality"
    assert tags["governance.decided_at"].endswith("Z")
    checks = json.loads(tags["governance.checks"])
    assert {c["check"] for c in checks} == {"metric validation_accuracy", "description"}
    assert all(c["passed"] for c in checks)
    assert stack.alias_version(model, "champion") == mv.version
    # And its own tag and alias writes, which come back as webhooks, cause no second decision
    stack.idle()
    time.sleep(1.0)
    stack.idle()
    assert len(stack.decisions(model, mv.version)) == 1


def test_a_version_that_fails_keeps_no_alias_and_gets_the_reason(stack: Stack) -> None:
    model = stack.new_model()
    mv = stack.new_version(model, {"validation_accuracy": 0.85})
    stack.client.set_model_version_tag(model, mv.version, REQUEST, "champion")
    tags = stack.wait_for_decision(model, mv.version)
    assert tags["governance.status"] == "rejected"
    reason = tags["governance.reason"]
    assert "validation_accuracy" in reason and "0.85" in reason and "0.9" in reason
    assert stack.alias_version(model, "champion") is None


def test_a_stage_request_moves_the_version_and_archives_the_previous_one(stack: Stack) -> None:
    model = stack.new_model()
    first = stack.new_version(model, {"validation_accuracy": 0.93})
    second = stack.new_version(model, {"validation_accuracy": 0.96})
    stack.client.set_model_version_tag(model, first.version, REQUEST, "Production")
    assert stack.wait_for_decision(model, first.version)["governance.status"] == "approved"
    assert stack.client.get_model_version(model, first.version).current_stage == "Production"

    stack.client.set_model_version_tag(model, second.version, REQUEST, "production")
    tags = stack.wait_for_decision(model, second.version)
    assert tags["governance.status"] == "approved"
    assert tags["governance.target"] == "Production"
    assert stack.client.get_model_version(model, second.version).current_stage == "Production"
    assert stack.client.get_model_version(model, first.version).current_stage == "Archived"


def test_a_failing_stage_request_leaves_the_stage_alone(stack: Stack) -> None:
    model = stack.new_model()
    mv = stack.new_version(model, {"validation_accuracy": 0.95}, description="")
    stack.client.set_model_version_tag(model, mv.version, REQUEST, "Production")
    tags = stack.wait_for_decision(model, mv.version)
    assert tags["governance.status"] == "rejected"
    assert "description" in tags["governance.reason"]
    assert stack.client.get_model_version(model, mv.version).current_stage == "None"


def test_a_target_no_policy_covers_is_refused(stack: Stack) -> None:
    model = stack.new_model()
    mv = stack.new_version(model, {"validation_accuracy": 0.99})
    stack.client.set_model_version_tag(model, mv.version, REQUEST, "challenger")
    tags = stack.wait_for_decision(model, mv.version)
    assert tags["governance.status"] == "rejected"
    assert "no policy covers" in tags["governance.reason"]
    assert stack.alias_version(model, "challenger") is None


def test_a_version_without_a_run_is_rejected_with_its_own_reason(stack: Stack) -> None:
    model = stack.new_model()
    mv = stack.new_version(model, with_run=False)
    stack.client.set_model_version_tag(model, mv.version, REQUEST, "champion")
    tags = stack.wait_for_decision(model, mv.version)
    assert tags["governance.status"] == "rejected"
    assert "has no run" in tags["governance.reason"]


def test_a_direct_alias_set_that_fails_is_put_back_on_the_approved_version(stack: Stack) -> None:
    # Given a champion approved by the gate
    model = stack.new_model()
    good = stack.new_version(model, {"validation_accuracy": 0.95})
    stack.client.set_model_version_tag(model, good.version, REQUEST, "champion")
    stack.wait_for_decision(model, good.version)
    bad = stack.new_version(model, {"validation_accuracy": 0.40})
    # When someone moves the alias to a failing version directly, not through a request
    stack.client.set_registered_model_alias(model, "champion", bad.version)
    # Then the gate puts it back and records why on the failing version
    tags = stack.wait_for_decision(model, bad.version)
    assert tags["governance.status"] == "rejected"
    assert "outside the gate" in tags["governance.reason"]
    assert f"put back on version {good.version}" in tags["governance.reason"]
    assert stack.alias_version(model, "champion") == good.version


def test_a_direct_alias_set_that_fails_with_no_approved_version_is_removed(stack: Stack) -> None:
    model = stack.new_model()
    bad = stack.new_version(model, {"validation_accuracy": 0.40})
    stack.client.set_registered_model_alias(model, "champion", bad.version)
    tags = stack.wait_for_decision(model, bad.version)
    assert tags["governance.status"] == "rejected"
    wait_until(lambda: stack.alias_version(model, "champion") is None, 10, what="alias removed")


def test_a_direct_alias_set_that_passes_is_kept_and_approved(stack: Stack) -> None:
    model = stack.new_model()
    mv = stack.new_version(model, {"validation_accuracy": 0.97})
    stack.client.set_registered_model_alias(model, "champion", mv.version)
    tags = stack.wait_for_decision(model, mv.version)
    assert tags["governance.status"] == "approved"
    assert "outside the gate" in tags["governance.reason"]
    assert stack.alias_version(model, "champion") == mv.version


def test_an_unprotected_alias_is_left_alone(stack: Stack) -> None:
    model = stack.new_model()
    mv = stack.new_version(model, {"validation_accuracy": 0.10})
    stack.client.set_registered_model_alias(model, "experiment", mv.version)
    time.sleep(1.0)
    stack.idle()
    assert stack.decisions(model) == []
    assert stack.alias_version(model, "experiment") == mv.version


def test_the_same_delivery_twice_gives_one_decision(stack: Stack) -> None:
    # Given a version with a request tag, whose webhook we deliver ourselves
    model = stack.new_model()
    mv = stack.new_version(model, {"validation_accuracy": 0.70})
    stack.client.set_model_version_tag(model, mv.version, "governance.note", "no webhook for this")
    stack.client.set_model_version_tag(model, mv.version, REQUEST, "champion")
    stack.wait_for_decision(model, mv.version)
    body = json.dumps(
        {
            "entity": "model_version_tag",
            "action": "set",
            "timestamp": "2026-01-01T00:00:00+00:00",
            "data": {"name": model, "version": mv.version, "key": REQUEST, "value": "champion"},
        }
    ).encode()
    delivery = str(uuid.uuid4())
    # When the same delivery arrives twice (MLflow's retry resends the delivery id)
    first = requests.post(
        f"{stack.receiver_url}/webhooks/mlflow",
        data=body,
        headers=signed_headers(body, delivery),
        timeout=5,
    )
    second = requests.post(
        f"{stack.receiver_url}/webhooks/mlflow",
        data=body,
        headers=signed_headers(body, delivery),
        timeout=5,
    )
    # Then it is queued once and decided once
    assert (first.status_code, second.status_code) == (202, 200)
    assert second.json()["status"] == "duplicate"
    stack.wait_for_decision(model, mv.version, count=2)
    stack.idle()
    ids = [d["event_id"] for d in stack.decisions(model, mv.version)]
    assert ids.count(delivery) == 1
    # And the receiver's log has one access line per copy, each with the answer and why, and
    # the event's fields (found by its id, like the worker's lines about it)
    lines = [
        json.loads(line)
        for line in stack.processes["receiver"].log_tail(200_000).splitlines()
        if line.startswith("{") and delivery in line
    ]
    access = [line for line in lines if line["logger"] == "mlflow_gate.access"]
    assert [line["message"].split('"POST /webhooks/mlflow" ')[1][:3] for line in access] == [
        "202",
        "200",
    ]
    assert "'accepted: model_version_tag.set queued'" in access[0]["message"]
    assert "'duplicate: this delivery was already accepted'" in access[1]["message"]
    assert all(
        (line["event_id"], line["model"], line["version"], line["target"])
        == (delivery, model, mv.version, "champion")
        for line in access
    )


def test_a_forged_webhook_is_refused(stack: Stack) -> None:
    body = b'{"entity": "model_version_tag", "action": "set", "data": {}}'
    headers = signed_headers(body, "forged")
    headers["X-MLflow-Signature"] = "v1,AAAA"
    response = requests.post(
        f"{stack.receiver_url}/webhooks/mlflow", data=body, headers=headers, timeout=5
    )
    assert response.status_code == 401
    # And the access line says why, for the operator
    wait_until(
        lambda: (
            "401" in stack.processes["receiver"].log_tail(20_000)
            and "unauthorized: X-MLflow-Signature does not match"
            in stack.processes["receiver"].log_tail(20_000)
        ),
        10,
        what="the refusal's access line",
    )


def test_webhook_register_updates_the_existing_webhook(stack: Stack) -> None:
    result = stack.gate("webhook", "register", "--url", f"{stack.receiver_url}/webhooks/mlflow")
    assert result.stdout.startswith("updated webhook 'mlflow-gate'")
    hooks = [h for h in stack.client.list_webhooks() if h.name == "mlflow-gate"]
    assert len(hooks) == 1
    assert {str(e) for e in hooks[0].events} == {
        "model_version_tag.set",
        "model_version_alias.created",
        "model_version_alias.deleted",
        "model_version.created",
    }


def test_explain_prints_each_check_and_exits_by_outcome(stack: Stack) -> None:
    model = stack.new_model()
    good = stack.new_version(model, {"validation_accuracy": 0.95})
    bad = stack.new_version(model, {"validation_accuracy": 0.42})
    passed = stack.gate("explain", model, good.version, "--target", "champion", check=False)
    failed = stack.gate("explain", model, bad.version, "--target", "champion", check=False)
    assert passed.returncode == 0, passed.stderr
    assert "PASS" in passed.stdout and "APPROVED" in passed.stdout
    assert failed.returncode == 1, failed.stderr
    assert "FAIL" in failed.stdout and "0.42" in failed.stdout and ">= 0.9" in failed.stdout
    # And nothing was acted on
    assert stack.alias_version(model, "champion") is None


def test_a_request_set_again_after_a_fix_is_decided_again(stack: Stack) -> None:
    # Given a version rejected for want of a description
    model = stack.new_model()
    mv = stack.new_version(model, {"validation_accuracy": 0.95}, description="")
    stack.client.set_model_version_tag(model, mv.version, REQUEST, "champion")
    assert stack.wait_for_decision(model, mv.version)["governance.status"] == "rejected"
    # When the engineer adds one and sets the same request again
    stack.client.update_model_version(model, mv.version, description="trained on data v7")
    stack.client.set_model_version_tag(model, mv.version, REQUEST, "champion")
    # Then the gate decides again, on the version as it is now
    tags = stack.wait_for_decision(model, mv.version, count=2)
    assert tags["governance.status"] == "approved"
    assert stack.alias_version(model, "champion") == mv.version


def test_a_version_created_with_a_request_tag_is_decided(stack: Stack) -> None:
    # Given a version registered with governance.request among its tags (MLflow sends no tag.set)
    model = stack.new_model()
    run = stack.client.create_run(experiment_id="0")
    stack.client.log_metric(run.info.run_id, "validation_accuracy", 0.96)
    mv = stack.client.create_model_version(
        model, source=f"runs:/{run.info.run_id}/model", run_id=run.info.run_id,
        description="registered with its request", tags={REQUEST: "champion"},
    )  # fmt: skip
    # Then its model_version.created webhook is enough for a decision
    assert stack.wait_for_decision(model, mv.version)["governance.status"] == "approved"
    assert stack.alias_version(model, "champion") == mv.version


class _CountingRest(RestClient):
    """The gate's REST client, logging each call's method and path."""

    def __init__(self, uri: str) -> None:
        super().__init__(mlflow.service(Settings(mlflow_tracking_uri=uri)))
        self.log: list[tuple[str, str]] = []

    def call(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        self.log.append((str(args[0]), str(args[1])))
        return super().call(*args, **kwargs)


def test_mlflow_lists_a_versions_aliases_so_an_alias_already_there_is_not_set_again(
    stack: Stack,
) -> None:
    # Given a version holding an alias (one no policy governs: the gate leaves it alone)
    model = stack.new_model()
    mv = stack.new_version(model, {"validation_accuracy": 0.95})
    stack.client.set_registered_model_alias(model, "scratch", mv.version)
    rest = _CountingRest(stack.mlflow_uri)
    registry = mlflow.MlflowRegistry(rest)
    registry.forget()
    candidate = registry.version(model, mv.version)  # the decision's own read
    decision = Decision.without_checks(Target("scratch", is_stage=False), (), "test")
    # When it is approved for that alias, and for one it does not hold
    rest.log.clear()
    registry.approve(Request(candidate, Target("scratch", is_stage=False), None), decision, False)
    assert rest.log == []  # MLflow's version read showed the alias on it: nothing to set
    registry.approve(Request(candidate, Target("other", is_stage=False), None), decision, False)
    # Then only the alias it did not hold is set
    assert rest.log == [("POST", "/api/2.0/mlflow/registered-models/alias")]
    assert stack.alias_version(model, "other") == mv.version
