"""Hardening, against real processes: a real `mlflow server`, Redis, the receiver and workers.

- compare_to a stage finds the stage's holder whatever the model is called (quotes, backslashes).
- compare_to fails closed when the holder's run is gone (deleted, then garbage-collected by
  `mlflow gc`: MLflow answers 404) or its metric is not a finite number (NaN logged).
- A run the gate may not read (403) is not decided on but dead-lettered, the candidate's or the
  holder's, with what to fix; replayed with `mlflow-gate dlq replay` once fixed, it is decided.
  (Against the fake Databricks workspace of tests/fake_databricks.py: MLflow's own basic-auth
  app needs Flask-WTF, which the test environment does not have.)
- Credentials in MLFLOW_TRACKING_URI are used, and shown nowhere: not in the processes' logs,
  the CLI's output, dead letters (`mlflow-gate dlq`, /admin/dlq) or `mlflow-gate status`.

Models here are named `hardening-*`: the shared stack's policy `hardening-compare` makes them
compare a candidate for Production with the version holding it (conftest.POLICY).
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import Stack, signed_headers
from fake_databricks import FakeDatabricks
from harness import wait_until
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


# --- 403 on a run: dead-lettered, then replayed ---------------------------------------------------

DBX_TOKEN = "dapi-hardening-token"
DBX_SECRET = "dbx-hardening-secret"
DBX_POLICY = """
policies:
  - name: production
    targets: [Production]
    rules:
      - metric: validation_accuracy
        min: 0.90
      - compare_to: Production
        metric: validation_accuracy
"""


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, FakeDatabricks]]:
    """Redis, the receiver and a worker deciding for the fake workspace (no MLflow server)."""
    fake = FakeDatabricks(DBX_TOKEN)
    workdir: Path = tmp_path_factory.mktemp("hardening-databricks")
    stack = Stack(workdir)
    policy = workdir / "policy.yaml"
    policy.write_text(DBX_POLICY)
    stack.env.update(
        {
            "GATE_DATABRICKS_HOST": fake.url,
            "GATE_DATABRICKS_TOKEN": DBX_TOKEN,
            "GATE_DATABRICKS_WEBHOOK_SECRET": DBX_SECRET,
            "GATE_POLICY_FILE": str(policy),
            "GATE_REDRIVE_ENABLED": "false",
            "GATE_WORKER_METRICS_PORT": "0",
        }
    )
    try:
        stack.start_redis()
        stack.start_receiver()
        stack.start_worker()
        url = f"{stack.receiver_url}/webhooks/databricks"
        stack.gate("webhook", "register", "--databricks", "--url", url)
        yield stack, fake
    finally:
        stack.close()
        fake.close()


def dead_letters(stack: Stack, model: str) -> list[dict[str, Any]]:
    listed = json.loads(stack.gate("dlq", "list", "--json", "--model", model).stdout)
    return [dict(entry) for entry in listed]


def wait_dead_letter(stack: Stack, model: str, version: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = []

    def lettered() -> bool:
        found[:] = [e for e in dead_letters(stack, model) if e["version"] == version]
        return bool(found)

    wait_until(lettered, 60, interval=0.5, what=f"a dead letter for {model} v{version}")
    (entry,) = found
    return entry


def test_a_run_the_gate_may_not_read_is_dead_lettered_then_replayed(
    workspace: tuple[Stack, FakeDatabricks],
) -> None:
    stack, fake = workspace
    model = f"hardening-{uuid.uuid4().hex[:6]}"
    # Given a version whose run the gate's token may not read (403) asks for Production
    fake.add_version(model, "1", creator="alice", metrics={"validation_accuracy": 0.95})
    fake.forbidden_runs.add(fake.run_of(model, "1"))
    fake.request_transition(model, "1", "Production", user="bob")
    # Then it is dead-lettered, not decided: the request stays open, nothing is answered
    entry = wait_dead_letter(stack, model, "1")
    assert entry["error_class"] == "MlflowForbidden" and entry["transient"] is False
    error = entry["error"]
    assert f"cannot read run {fake.run_of(model, '1')} of version 1" in error
    assert "Databricks answered 403 PERMISSION_DENIED" in error
    assert "check GATE_DATABRICKS_TOKEN" in error and "mlflow-gate dlq replay <id>" in error
    assert fake.calls_to("transition-requests/reject", model) == []
    assert fake.calls_to("transition-requests/approve", model) == []
    assert len(fake.open_requests(model, "1")) == 1
    assert "MlflowForbidden" in stack.gate("dlq", "list", "--model", model).stdout
    # When the permission is granted and the dead letter replayed
    fake.forbidden_runs.clear()
    stack.gate("dlq", "replay", entry["id"])
    # Then the request is decided (approved: nobody held Production)
    wait_until(
        lambda: bool(fake.calls_to("transition-requests/approve", model)),
        60,
        what=f"the approval of {model} v1\n{stack.logs()}",
    )
    assert fake.stage_of(model, "1") == "Production"

    # Given Production's holder's run becomes unreadable, and a version asks to replace it
    fake.add_version(model, "2", creator="alice", metrics={"validation_accuracy": 0.97})
    fake.forbidden_runs.add(fake.run_of(model, "1"))
    fake.request_transition(model, "2", "Production", user="bob")
    # Then that is dead-lettered too (one rule for every run), naming the holder's run
    entry = wait_dead_letter(stack, model, "2")
    assert f"cannot read run {fake.run_of(model, '1')} of version 1" in entry["error"]
    assert fake.calls_to("transition-requests/reject", model) == []
    assert fake.stage_of(model, "1") == "Production"
    # When it is fixed and replayed, Then the comparison is made and the better version approved
    fake.forbidden_runs.clear()
    stack.gate("dlq", "replay", entry["id"])
    wait_until(
        lambda: fake.stage_of(model, "2") == "Production",
        60,
        what=f"the approval of {model} v2\n{stack.logs()}",
    )
    (approval,) = [c for c in fake.calls_to("transition-requests/approve", model)
                   if c.body and c.body["version"] == "2"]  # fmt: skip
    assert "not below current Production (version 1: 0.95)" in approval.body["comment"]


# --- credentials in MLFLOW_TRACKING_URI -----------------------------------------------------------

URI_SECRET = "uri-s3cret-Pa55"
ADMIN_TOKEN = "hardening-admin-token"


def test_credentials_in_the_tracking_uri_are_used_and_shown_nowhere(
    private_stack: Callable[..., Stack],
) -> None:
    # Given every gate process and command configured with the password inside the URL (the
    # MLflow server ignores it; the gate must send it as basic auth and show it nowhere)
    stack = private_stack()
    port = stack.mlflow_uri.rsplit(":", 1)[1]
    stack.env["MLFLOW_TRACKING_URI"] = f"http://gate:{URI_SECRET}@127.0.0.1:{port}"
    stack.env["GATE_ADMIN_TOKEN"] = ADMIN_TOKEN
    stack.start_redis()
    stack.start_mlflow()
    stack.start_receiver()
    stack.start_worker()
    shown: list[str] = []
    registered = stack.gate("webhook", "register", "--url", f"{stack.receiver_url}/webhooks/mlflow")
    shown.append(registered.stdout + registered.stderr)
    assert f"at http://127.0.0.1:{port}:" in registered.stdout
    # When a version is decided through them
    model = stack.new_model()
    version = str(stack.new_version(model, {"validation_accuracy": 0.95}).version)
    stack.client.set_model_version_tag(model, version, REQUEST, "champion")
    assert stack.wait_for_decision(model, version)["governance.status"] == "approved"
    # And, MLflow down, an event is dead-lettered after its retries
    stack.stop("mlflow")
    body = json.dumps(
        {"entity": "model_version_tag", "action": "set", "timestamp": "now",
         "data": {"name": model, "version": version, "key": REQUEST, "value": "champion"}}
    ).encode()  # fmt: skip
    delivery = str(uuid.uuid4())
    accepted = requests.post(
        f"{stack.receiver_url}/webhooks/mlflow", data=body, headers=signed_headers(body, delivery),
        timeout=10,
    )  # fmt: skip
    assert accepted.status_code == 202
    wait_until(
        lambda: bool(json.loads(stack.gate("dlq", "list", "--json").stdout)),
        60, interval=0.5, what=f"a dead letter\n{stack.logs()}",
    )  # fmt: skip
    (entry,) = json.loads(stack.gate("dlq", "list", "--json").stdout)
    assert entry["error_class"] == "MlflowUnavailable"
    assert f"MLflow at http://127.0.0.1:{port} did not answer" in entry["error"]
    # Then the password is in no output, dead letter, status or log
    shown.append(stack.gate("dlq", "list").stdout)
    shown.append(stack.gate("dlq", "show", entry["id"]).stdout)
    admin = requests.get(
        f"{stack.receiver_url}/admin/dlq",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        timeout=10,
    )
    assert admin.ok and admin.json()["dead_letters"]
    shown.append(admin.text)
    status = stack.gate("status", check=False)
    assert status.returncode == 1 and f"mlflow    DOWN  http://127.0.0.1:{port}" in status.stdout
    shown.append(status.stdout + status.stderr)
    shown.append(stack.gate("status", "--json", check=False).stdout)
    shown.extend(
        proc.log_path.read_text(errors="replace")
        for name, proc in stack.processes.items()
        if name in ("receiver", "worker")
    )
    assert all(text for text in shown)
    leaks = [text for text in shown if URI_SECRET in text]
    assert not leaks, leaks[0][:2000]

    # And with Redis down, the receiver's 503 says what to do without Redis' error text (which
    # names its host), and the admin API too; the receiver's log has the detail
    stack.stop("redis")
    redis_address = f"127.0.0.1:{stack.redis_port}"
    refused = requests.post(
        f"{stack.receiver_url}/webhooks/mlflow", data=body,
        headers=signed_headers(body, str(uuid.uuid4())), timeout=10,
    )  # fmt: skip
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "5"
    assert refused.json()["message"] == (
        "the gate's queue (Redis) did not answer; the event was not accepted, retry later"
    )
    listed = requests.get(
        f"{stack.receiver_url}/admin/dlq",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        timeout=10,
    )
    assert listed.status_code == 503 and "GATE_REDIS_URL" in listed.json()["message"]
    for answer in (refused, listed):
        assert redis_address not in answer.text and "Connection refused" not in answer.text
    wait_until(
        lambda: redis_address in stack.processes["receiver"].log_tail(20_000),
        10, what="the detail in the receiver's log",
    )  # fmt: skip
