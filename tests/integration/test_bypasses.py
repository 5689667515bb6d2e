"""No way around the gate, on real processes: MLflow (its webhooks), Redis, the receiver, a worker
running the sweep every second, the ledger on SQLite, and on PostgreSQL at the end.

Someone with write access to the registry forges the gate's approval tag, sets an alias or a
stage directly, or gets an older decision retried after a newer one; each is undone or refused.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Stack
from harness import DelayProxy, wait_until
from postgres import start_postgres

from shared.events import GateEvent, Kind, Origin, RegistryKind
from shared.queue import create_celery, publisher
from shared.settings import Settings

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore:.*transition_model_version_stage.*:FutureWarning"),
]

REQUEST = "governance.request"
POLICY = """
policies:
  - name: production-quality
    models: ["*"]
    targets: [champion, Production]
    rules:
      - metric: validation_accuracy
        min: 0.90
  - name: no-regression
    models: ["strict-*"]
    targets: [champion]
    rules:
      - compare_to: champion
        metric: validation_accuracy
        min_delta: 0.0
"""


class Gate(Stack):
    """The stack, its worker talking to MLflow through a proxy that can refuse some calls."""

    proxy: DelayProxy

    def model(self, prefix: str = "plain") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        self.client.create_registered_model(name)
        return name

    def version(self, model: str, accuracy: float) -> str:
        return str(self.new_version(model, {"validation_accuracy": accuracy}).version)

    def request(self, model: str, version: str, target: str) -> None:
        self.client.set_model_version_tag(model, version, REQUEST, target)

    def stage(self, model: str, version: str) -> str:
        return str(self.client.get_model_version(model, version).current_stage)


@pytest.fixture(scope="module")
def gate(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gate]:
    stack = Gate(tmp_path_factory.mktemp("bypasses"), policy=POLICY)
    try:
        stack.start_redis()
        stack.start_mlflow()
        stack.proxy = DelayProxy(stack.mlflow_uri)
        stack.start_receiver()
        stack.start_worker(beat=True, env={"MLFLOW_TRACKING_URI": stack.proxy.url})
        stack.gate("webhook", "register", "--url", f"{stack.receiver_url}/webhooks/mlflow")
        wait_until(lambda: stack.gate("status", check=False).returncode == 0, 30, what="status")
        yield stack
    finally:
        stack.close()


def test_a_forged_approval_tag_and_a_direct_alias_move_are_undone(gate: Gate) -> None:
    model = gate.model()
    good, bad = gate.version(model, 0.95), gate.version(model, 0.60)
    gate.request(model, good, "champion")
    wait_until(lambda: gate.alias_version(model, "champion") == good, 60, what="the approval")
    # The gate's old memory, forged; then the alias moved to the failing version.
    gate.client.set_registered_model_tag(model, "governance.approved.champion", bad)
    gate.client.set_registered_model_alias(model, "champion", bad)
    wait_until(lambda: gate.alias_version(model, "champion") == good, 30, what="the undo")
    assert gate.ledger.approved_version(RegistryKind.MLFLOW, model, "champion") == good
    (undo,) = [d for d in gate.decisions(model, bad) if d["outcome"] == "rejected"]
    assert "put back on version" in undo["reason"]


def test_a_version_set_directly_is_compared_with_the_approved_one(gate: Gate) -> None:
    model = gate.model("strict")
    champion, worse = gate.version(model, 0.95), gate.version(model, 0.92)
    gate.request(model, champion, "champion")
    wait_until(lambda: gate.alias_version(model, "champion") == champion, 60, what="approval")
    gate.client.set_registered_model_alias(model, "champion", worse)
    wait_until(lambda: gate.decisions(model, worse), 30, what="the guard's decision")
    wait_until(lambda: gate.alias_version(model, "champion") == champion, 30, what="the undo")
    reason = gate.decisions(model, worse)[0]["reason"]
    assert f"below current champion (version {champion}" in reason


def test_a_failing_version_moved_straight_to_production_is_moved_out(gate: Gate) -> None:
    model = gate.model()
    approved, bad, good = (gate.version(model, a) for a in (0.95, 0.60, 0.97))
    gate.request(model, approved, "Production")
    wait_until(lambda: gate.stage(model, approved) == "Production", 60, what="the approval")
    # MLflow sends no webhook for this: the sweep (every second here) must find it.
    gate.client.transition_model_version_stage(model, bad, "Production", True)
    wait_until(lambda: gate.stage(model, bad) == "None", 30, what="the bad version moved out")
    wait_until(lambda: gate.stage(model, approved) == "Production", 30, what="the put back")
    # A passing version moved there directly is kept, and from then on counts as approved.
    gate.client.transition_model_version_stage(model, good, "Production", False)
    wait_until(lambda: gate.decisions(model, good), 30, what="the sweep's decision on it")
    assert gate.decisions(model, good)[0]["outcome"] == "approved"
    assert gate.stage(model, good) == "Production"
    assert {approved, good} <= gate.ledger.standing(RegistryKind.MLFLOW, model, "Production")


def test_an_older_decision_retried_after_a_newer_one_changes_nothing(gate: Gate) -> None:
    model = gate.model()
    v2, v3 = gate.version(model, 0.95), gate.version(model, 0.97)

    def refuse(path: str, body: bytes) -> bool:  # v2's decision cannot be recorded on it
        if not path.endswith("/model-versions/set-tag"):
            return False
        sent = json.loads(body or b"{}")
        return bool(sent.get("name") == model and str(sent.get("version")) == v2)

    gate.proxy.refuse = refuse
    try:
        gate.request(model, v2, "champion")
        wait_until(lambda: gate.alias_version(model, "champion") == v2, 60, what="v2 moved")
        gate.request(model, v3, "champion")
        wait_until(lambda: gate.alias_version(model, "champion") == v3, 60, what="v3 approved")

        def fenced_or_dead() -> bool:  # its retries: fenced off by v3's decision, or exhausted
            superseded = gate.decisions(model, v2)[-1]["superseded_by"] is not None
            return superseded or gate.redis.zcard("gate:deadletter:index") > 0

        wait_until(fenced_or_dead, 60, what="v2's retries")
    finally:
        gate.proxy.refuse = None
    gate.gate("dlq", "replay", "--all")  # whatever is left, retried once more
    gate.idle()
    wait_until(
        lambda: gate.decisions(model, v2)[-1]["superseded_by"] is not None, 30, what="fenced"
    )
    time.sleep(2)  # two sweeps: v2's request, undecided on its tags, stays decided
    gate.idle()
    assert gate.alias_version(model, "champion") == v3
    assert gate.ledger.approved_version(RegistryKind.MLFLOW, model, "champion") == v3


def test_a_redelivered_event_after_redis_forgot_it_is_not_decided_again(gate: Gate) -> None:
    model = gate.model()
    v1, v2 = gate.version(model, 0.93), gate.version(model, 0.96)
    gate.request(model, v1, "champion")
    wait_until(lambda: gate.alias_version(model, "champion") == v1, 60, what="v1 approved")
    first = gate.decisions(model, v1)[0]
    gate.request(model, v2, "champion")
    wait_until(lambda: gate.alias_version(model, "champion") == v2, 60, what="v2 approved")
    gate.idle()
    # v1's message comes back (a redelivery after the visibility timeout), and Redis no longer
    # remembers it was done.
    gate.redis.delete(f"gate:done:{first['event_id']}")
    again = GateEvent(
        event_id=first["event_id"], registry=RegistryKind.MLFLOW, origin=Origin.WEBHOOK,
        kind=Kind.REQUEST, model=model, version=v1, target="champion", received_at=0.0,
        webhook_event="model_version_tag.set",
    )  # fmt: skip
    publisher(create_celery(Settings(redis_url=gate.redis_url)))(again.to_dict())
    gate.idle()
    wait_until(lambda: gate.redis.exists(f"gate:done:{first['event_id']}"), 30, what="handled")
    assert gate.alias_version(model, "champion") == v2
    assert len(gate.decisions(model, v1)) == 1


def test_an_event_whose_dead_letter_cannot_be_written_is_not_lost(gate: Gate) -> None:
    """Redis refuses the dead letter (here: its key holds a string): the worker gives the
    message back to the queue instead of acknowledging it, and writes the dead letter once it
    can."""
    event_id = f"poison-{uuid.uuid4().hex[:8]}"
    gate.redis.rename("gate:deadletter", "gate:deadletter:kept") if gate.redis.exists(
        "gate:deadletter"
    ) else None
    gate.redis.set("gate:deadletter", "not a hash")
    try:
        # An event no worker can decide (no model): it must be dead-lettered.
        publisher(create_celery(Settings(redis_url=gate.redis_url)))({"event_id": event_id})
        wait_until(
            lambda: gate.processes["worker"].log_tail(20000).count("goes back to the queue") >= 2,
            30,
            what="the message given back to the queue, twice",
        )
    finally:
        gate.redis.delete("gate:deadletter")
        if gate.redis.exists("gate:deadletter:kept"):
            gate.redis.rename("gate:deadletter:kept", "gate:deadletter")
    wait_until(lambda: gate.redis.hexists("gate:deadletter", event_id), 30, what="dead letter")
    assert json.loads(gate.gate("dlq", "show", event_id).stdout)["error_class"] == "EventError"


def test_the_decision_history_survives_a_redis_flush(gate: Gate) -> None:
    """Last in this module: it empties Redis under the running worker."""
    model = gate.model()
    v1 = gate.version(model, 0.95)
    gate.request(model, v1, "champion")
    wait_until(
        lambda: [d["action_state"] for d in gate.decisions(model, v1)] == ["done"],
        60,
        what="the decision, carried out",
    )
    gate.redis.flushall()
    listed = json.loads(gate.gate("audit", "--model", model, "--json").stdout)
    assert [(d["version"], d["outcome"]) for d in listed] == [(v1, "approved")]
    assert {"time", "policies", "checks", "event_id", "reason", "target"} <= set(listed[0])
    history = json.loads(
        gate.gate("audit", "history", model, "--target", "champion", "--json").stdout
    )
    assert [(t["version"], t["current"]) for t in history] == [(v1, True)]


def test_audit_answers_from_a_postgresql_ledger(tmp_path: Path) -> None:
    server = start_postgres()
    stack = Stack(tmp_path, database_url=server.url("postgres"))
    try:
        stack.up()
        model = stack.new_model()
        good = stack.new_version(model, {"validation_accuracy": 0.95}).version
        stack.client.set_model_version_tag(model, good, REQUEST, "champion")
        stack.wait_for_decision(model, good)
        listed = json.loads(stack.gate("audit", "--model", model, "--json").stdout)
        assert [(d["version"], d["outcome"]) for d in listed] == [(good, "approved")]
        history = stack.gate("audit", "history", model, "--target", "champion").stdout
        assert f"champion of {model}, newest first:" in history and "now" in history
        assert (
            stack.gate("audit", "history", model, "--target", "nope", check=False).returncode == 1
        )
    finally:
        stack.close()
        server.stop()
