"""Notifications end to end: notices published through the outbox to a real Redis, delivered by
a real `mlflow-gate worker` process to real HTTP sinks in this process, which verify the Standard
Webhooks signature with their own code (hmac and base64 here, not shared.notify).

The stack is small (Redis and one worker: delivering needs neither MLflow nor the receiver).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.server
import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import redis
from harness import LOOPBACK, ManagedProcess, free_port, start_redis, wait_until

from cli.devstack import gate_command
from shared.deadletter import DeadLetterStore
from shared.notices import Notice, Notify
from shared.notify.outbox import deliveries, outbox
from shared.policy import PolicySet, parse_policies
from shared.queue import create_celery, publisher
from shared.settings import Settings

pytestmark = pytest.mark.integration

HOOK_SECRET = "whsec_" + base64.b64encode(b"integration: the ci hook's key!!").decode()
OUTAGE_SECRET = "whsec_" + base64.b64encode(b"integration: the outage hook key").decode()


@dataclass
class Received:
    path: str
    msg_id: str
    verified: bool
    status: int  # what the sink answered
    body: bytes


@dataclass
class SinkServer:
    """A webhook receiver on a fixed loopback port: refusing connections until started, then
    answering `status`; it checks each request's signature with `secret` (when given)."""

    secret: str | None
    status: int = 200
    port: int = field(default_factory=free_port)
    received: list[Received] = field(default_factory=list)
    _httpd: http.server.ThreadingHTTPServer | None = None

    def url(self, path: str = "/hook") -> str:
        return f"http://{LOOPBACK}:{self.port}{path}"

    def start(self) -> SinkServer:
        sink = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status = sink.status
                sink.received.append(
                    Received(self.path, self.headers.get("webhook-id") or "",
                             sink.verifies(body, self.headers), status, body)
                )  # fmt: skip
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._httpd = http.server.ThreadingHTTPServer((LOOPBACK, self.port), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def verifies(self, body: bytes, headers: Any) -> bool:
        """The Standard Webhooks check, written here from the specification."""
        if self.secret is None:
            return False
        msg_id, sent_at = headers.get("webhook-id"), headers.get("webhook-timestamp")
        signatures = (headers.get("webhook-signature") or "").split(" ")
        if not msg_id or not sent_at or abs(time.time() - int(sent_at)) > 300:
            return False
        key = base64.b64decode(self.secret.removeprefix("whsec_"))
        mac = hmac.new(key, f"{msg_id}.{sent_at}.".encode() + body, hashlib.sha256).digest()
        expected = "v1," + base64.b64encode(mac).decode()
        return any(hmac.compare_digest(expected, s) for s in signatures)

    def delivered(self, msg_id: str) -> list[Received]:
        return [r for r in self.received if r.msg_id == msg_id and r.status == 200]

    def attempts(self, msg_id: str) -> list[Received]:
        return [r for r in self.received if r.msg_id == msg_id]


@dataclass
class Notifications:
    policies: PolicySet
    notify: Notify
    hook: SinkServer  # top level: every notice, and Slack's messages on /slack
    outage: SinkServer  # the "outage" policy's webhook: down, then 503, then back
    picky: SinkServer  # the "picky" policy's webhook: decision.approved only
    env: dict[str, str]
    redis: redis.Redis
    worker: ManagedProcess

    def gate(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*gate_command(), *args], env=self.env, capture_output=True,
                              text=True, timeout=60)  # fmt: skip


def policy_text(hook: SinkServer, outage: SinkServer, picky: SinkServer) -> str:
    return f"""
notify:
  - webhook: {hook.url()}
    secret_env: HOOK_SECRET
  - slack_env: SLACK_URL
policies:
  - name: outage
    targets: [champion]
    rules: [{{metric: auc, min: 0.5}}]
    notify:
      - webhook: {outage.url()}
        secret_env: OUTAGE_SECRET
  - name: picky
    targets: [Production]
    rules: [{{metric: auc, min: 0.5}}]
    notify:
      - webhook: {picky.url()}
        secret_env: HOOK_SECRET
        events: [decision.approved]
"""


@pytest.fixture(scope="module")
def notifications(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Notifications]:
    workdir = tmp_path_factory.mktemp("notifications")
    hook = SinkServer(HOOK_SECRET).start()
    outage = SinkServer(OUTAGE_SECRET)  # not started: refuses connections
    picky = SinkServer(HOOK_SECRET).start()
    text = policy_text(hook, outage, picky)
    (workdir / "policy.yaml").write_text(text)
    redis_process, redis_url = start_redis(workdir / "redis")
    env = {
        **os.environ,
        "GATE_REDIS_URL": redis_url,
        "GATE_POLICY_FILE": str(workdir / "policy.yaml"),
        "GATE_DATABASE_URL": f"sqlite:///{workdir / 'ledger.db'}",
        "MLFLOW_TRACKING_URI": f"http://{LOOPBACK}:{free_port()}",  # never called
        "GATE_RETRY_MAX_ATTEMPTS": "40",
        "GATE_RETRY_BACKOFF_SECONDS": "0.2",
        "GATE_RETRY_BACKOFF_MAX_SECONDS": "0.5",
        "GATE_WORKER_METRICS_PORT": "0",
        "GATE_LOG_FORMAT": "json",
        "HOOK_SECRET": HOOK_SECRET,
        "OUTAGE_SECRET": OUTAGE_SECRET,
        "SLACK_URL": hook.url("/slack"),
    }
    log = workdir / "worker.log"
    worker = ManagedProcess.start([*gate_command(), "worker", "--concurrency", "2"], env, log)
    try:
        worker.wait_ready(lambda: "ready." in worker.log_tail(20000), 60, "the worker")
        policies = parse_policies(text)
        settings = Settings.from_env(env)
        yield Notifications(
            policies=policies,
            notify=outbox(policies, publisher(create_celery(settings))),
            hook=hook, outage=outage, picky=picky, env=env,
            redis=redis.Redis.from_url(redis_url), worker=worker,
        )  # fmt: skip
    finally:
        worker.stop()
        redis_process.stop()
        for server in (hook, outage, picky):
            server.stop()


def notice(kind: str, key: str, policy: str) -> Notice:
    data = {
        "model": "fraud-detector",
        "version": "3",
        "target": "champion",
        "outcome": "approved" if kind == "decision.approved" else "rejected",
        "reason": "validation_accuracy 0.95 is at least 0.9",
        "links": {"mlflow": "http://mlflow.example.com/#/models/fraud-detector/versions/3"},
    }
    return Notice(kind, key, datetime.now(timezone.utc), (policy,), data)


def ids_by_sink(n: Notifications, each: Notice) -> dict[str, str]:
    return {d.sink: d.delivery_id for d in deliveries(n.policies, each)}


def test_a_notice_is_delivered_signed_to_each_sink_that_wants_it(n: Notifications) -> None:
    approved = notice("decision.approved", "test-delivered-1", "picky")
    ids = ids_by_sink(n, approved)
    assert len(ids) == 3  # the top-level webhook and Slack, the policy's webhook
    n.notify(approved)
    hook_id, picky_id = ids[f"webhook:{n.hook.url()}"], ids[f"webhook:{n.picky.url()}"]
    assert "slack:SLACK_URL" in ids
    wait_until(
        lambda: bool(n.hook.delivered(hook_id) and n.picky.delivered(picky_id)),
        30, what=f"both webhooks\n{n.worker.log_tail()}",
    )  # fmt: skip
    for server, msg_id in ((n.hook, hook_id), (n.picky, picky_id)):
        [got] = server.delivered(msg_id)
        assert got.verified, "the signature does not verify"
        body = json.loads(got.body)
        assert body["type"] == "decision.approved"
        assert body["data"]["model"] == "fraud-detector" and body["data"]["policies"] == ["picky"]
        assert body["data"]["links"]["mlflow"].endswith("/versions/3")

    def approvals_in_slack() -> list[dict[str, Any]]:
        messages = [json.loads(r.body) for r in n.hook.received if r.path == "/slack"]
        return [m for m in messages if m["text"].startswith("mlflow-gate: Approved")]

    wait_until(lambda: bool(approvals_in_slack()), 30, what="the Slack message")
    message = approvals_in_slack()[0]
    assert message["text"].startswith("mlflow-gate: Approved: fraud-detector v3 -&gt; champion")
    assert message["blocks"][0]["text"]["text"] == "Approved: fraud-detector v3 -> champion"
    assert any(b["type"] == "actions" for b in message["blocks"])  # the MLflow button
    # A rejection is not for the picky sink.
    rejected = notice("decision.rejected", "test-delivered-2", "picky")
    assert f"webhook:{n.picky.url()}" not in ids_by_sink(n, rejected)


def test_a_sink_down_then_back_gets_every_notification_once_with_stable_ids(
    n: Notifications,
) -> None:
    sent = [notice("decision.rejected", f"test-outage-{i}", "outage") for i in range(5)]
    expected = {ids_by_sink(n, each)[f"webhook:{n.outage.url()}"] for each in sent}
    for each in sent:
        n.notify(each)
    # Down: the port refuses connections while the workers retry, each notification 5 times
    # (more than Celery's default of 3 retries: the gate's budget is the one in charge).
    refused = f"attempt 5 failed (webhook {n.outage.url()} could not be reached"
    wait_until(lambda: n.worker.log_tail(100_000).count(refused) >= len(sent), 30,
               what=f"retries against a refusing sink\n{n.worker.log_tail()}")  # fmt: skip
    # Up, but answering 503 until every notification was tried again.
    n.outage.status = 503
    n.outage.start()
    try:
        wait_until(
            lambda: {r.msg_id for r in n.outage.received} >= expected,
            30, what=f"an attempt of each at the 503 sink\n{n.worker.log_tail()}",
        )  # fmt: skip
        n.outage.status = 200
        wait_until(lambda: all(n.outage.delivered(i) for i in expected), 30,
                   what=f"every notification delivered\n{n.worker.log_tail()}")  # fmt: skip
        time.sleep(1)  # any late duplicate would show now
    finally:
        n.outage.stop()
    assert {r.msg_id for r in n.outage.received} == expected  # no other id ever appeared
    for msg_id in expected:
        attempts = n.outage.attempts(msg_id)
        # Refused 5 times, then at least one 503, then delivered: always under the same id.
        assert len(attempts) >= 2 and attempts[0].status == 503
        assert all(r.verified for r in attempts)
        assert len(n.outage.delivered(msg_id)) == 1  # delivered once
    store = DeadLetterStore(n.redis)
    assert not [i for i in expected if store.get(i) is not None]  # none lost, none parked


def test_a_refusing_sink_is_dead_lettered_then_replayed_once_fixed(n: Notifications) -> None:
    approved = notice("decision.approved", "test-refused-1", "picky")
    msg_id = ids_by_sink(n, approved)[f"webhook:{n.picky.url()}"]
    n.picky.status = 400
    try:
        n.notify(approved)
        store = DeadLetterStore(n.redis)
        wait_until(lambda: store.get(msg_id) is not None, 30,
                   what=f"a dead letter\n{n.worker.log_tail()}")  # fmt: skip
        entry = store.get(msg_id)
        assert entry is not None and entry.error_class == "SinkRefused" and not entry.transient
        assert entry.attempts == 1  # a 400 is not retried
        listed = n.gate("dlq", "list")
        assert listed.returncode == 0, listed.stderr
        line = next(row for row in listed.stdout.splitlines() if row.startswith(msg_id))
        assert f"notify decision.approved -> webhook {n.picky.url()}" in line
        assert "fraud-detector" in line and "SinkRefused" in line
        as_json = json.loads(n.gate("dlq", "list", "--json").stdout)
        assert any(e["id"] == msg_id and e["event"]["sink"] for e in as_json)
    finally:
        n.picky.status = 200
    replayed = n.gate("dlq", "replay", msg_id)
    assert replayed.returncode == 0, replayed.stderr
    assert "replayed 1, failed 0" in replayed.stdout
    wait_until(lambda: bool(n.picky.delivered(msg_id)), 30,
               what=f"the replayed delivery\n{n.worker.log_tail()}")  # fmt: skip
    attempts = n.picky.attempts(msg_id)
    assert [r.status for r in attempts] == [400, 200] and all(r.verified for r in attempts)
    assert DeadLetterStore(n.redis).get(msg_id) is None


def test_the_worker_refuses_to_start_without_a_sinks_secret(
    notifications: Notifications, tmp_path: Path
) -> None:
    env = {k: v for k, v in notifications.env.items() if k != "OUTAGE_SECRET"}
    started = subprocess.run([*gate_command(), "worker"], env=env, capture_output=True,
                             text=True, timeout=60)  # fmt: skip
    assert started.returncode == 2
    assert "OUTAGE_SECRET is not set" in started.stderr
    env["OUTAGE_SECRET"] = "not-a-whsec-secret"
    started = subprocess.run([*gate_command(), "worker"], env=env, capture_output=True,
                             text=True, timeout=60)  # fmt: skip
    assert started.returncode == 2
    assert "OUTAGE_SECRET does not start with 'whsec_'" in started.stderr
    assert "not-a-whsec-secret" not in started.stderr


@pytest.fixture
def n(notifications: Notifications) -> Notifications:
    return notifications
