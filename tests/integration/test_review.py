"""Human review with real identities: a real `mlflow server --app-name basic-auth` with users and
a role the test creates, the gate's own MLflow account an admin; requests and reviews through the
`mlflow-gate request` and `mlflow-gate review` commands (clients of the receiver's /api/v1), each
run with one person's MLflow credentials."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import requests
from conftest import Stack
from test_notifications import SinkServer

from cli.devstack import gate_command, wait_until
from shared import tags

ADMIN_PASSWORD = "admin-password-for-tests"
PASSWORD = "a-long-enough-password"  # MLflow wants 12 characters or more
PEOPLE = ("alice", "bob", "carol", "dave", "erin", "mallory")
HOOK_SECRET = "whsec_" + base64.b64encode(b"the review tests' hook key").decode()
SINK = SinkServer(HOOK_SECRET)

POLICY = """
policies:
  - name: production-quality
    models: ["reviewed-*"]
    targets: [champion]
    rules:
      - metric: validation_accuracy
        min: 0.90
    review:
      approvals: 2
      reviewers: [alice, bob]
      role: model-reviewers
      expires_after: 3d
  - name: quick-expiry
    models: ["expiring-*"]
    targets: [champion]
    rules:
      - metric: validation_accuracy
        min: 0.90
    review:
      approvals: 1
      reviewers: [alice]
      expires_after: 3s
notify:
  - webhook: {hook}
    secret_env: REVIEW_HOOK_SECRET
"""


@contextlib.contextmanager
def basic_auth_stack(workdir: Path, policy: str, env: dict[str, str]) -> Iterator[Stack]:
    """The stack with `mlflow server --app-name basic-auth`, the gate's account (and the test's
    MlflowClient) its admin, GATE_URL at the receiver."""
    (workdir / "mlflow").mkdir()
    config = workdir / "mlflow" / "basic_auth.ini"
    config.write_text(
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = sqlite:///{workdir / 'mlflow' / 'auth.db'}\n"
        "admin_username = admin\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        # Without it every request pays a PBKDF2 check (~0.3 s here): the gate's dozen calls
        # per decision would outlast the tests' short model lock.
        "auth_cache_ttl_seconds = 60\n"
    )
    admin = {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": ADMIN_PASSWORD}
    saved = {key: os.environ.get(key) for key in admin}
    os.environ.update(admin)  # the test's MlflowClient is the admin too
    stack = Stack(
        workdir,
        policy=policy,
        mlflow_app="basic-auth",
        mlflow_env={
            "MLFLOW_AUTH_CONFIG_PATH": str(config),
            "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD,
            "MLFLOW_FLASK_SERVER_SECRET_KEY": "a-secret-key-for-the-tests",
        },
        env={**admin, "GATE_URL": "", "GATE_MODEL_LOCK_SECONDS": "20", **env},
    )
    try:
        stack.up()
        stack.env["GATE_URL"] = stack.receiver_url
        yield stack
    finally:
        stack.close()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def add_people(stack: Stack, names: Sequence[str], role: str, members: Sequence[str]) -> None:
    """MLflow users `names` (password PASSWORD), and `role` with `members` assigned."""
    admin = ("admin", ADMIN_PASSWORD)
    base = stack.mlflow_uri

    def post(path: str, body: dict[str, object]) -> requests.Response:
        reply = requests.post(f"{base}{path}", json=body, auth=admin, timeout=10)
        assert reply.status_code == 200, reply.text
        return reply

    for name in names:
        post("/api/2.0/mlflow/users/create", {"username": name, "password": PASSWORD})
    role_id = post("/api/3.0/mlflow/roles/create", {"name": role, "workspace": "default"}).json()
    for member in members:
        post("/api/3.0/mlflow/roles/assign",
             {"username": member, "role_id": role_id["role"]["id"]})  # fmt: skip


@pytest.fixture(scope="module")
def authed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    SINK.start()
    try:
        with basic_auth_stack(
            tmp_path_factory.mktemp("review-stack"),
            POLICY.replace("{hook}", SINK.url()),
            {"REVIEW_HOOK_SECRET": HOOK_SECRET},
        ) as stack:
            stack.start_worker("beat", beat=True)  # the sweep: reviews due, expiry
            add_people(stack, PEOPLE, "model-reviewers", ["carol"])
            yield stack
    finally:
        SINK.stop()


def as_person(
    stack: Stack, who: str, *args: str, password: str = PASSWORD
) -> subprocess.CompletedProcess[str]:
    """`mlflow-gate ARGS` on `who`'s laptop: their MLflow credentials and GATE_URL, nothing
    else (no Redis, no database)."""
    env = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", "/tmp"),
        "GATE_URL": stack.receiver_url,
        "MLFLOW_TRACKING_USERNAME": who,
        "MLFLOW_TRACKING_PASSWORD": password,
        "GATE_REDIS_URL": "redis://127.0.0.1:1/0",  # unreachable: must not be needed
        "GATE_DATABASE_URL": "sqlite:////nonexistent/ledger.db",
    }
    return subprocess.run(
        [*gate_command(), *args], env=env, capture_output=True, text=True, timeout=60
    )


def new_version(stack: Stack, model: str, accuracy: float, creator: str = "dave") -> str:
    if model not in {m.name for m in stack.client.search_registered_models()}:
        stack.client.create_registered_model(model)
    run = stack.client.create_run(experiment_id="0", tags={tags.RUN_USER: creator})
    stack.client.log_metric(run.info.run_id, "validation_accuracy", accuracy)
    stack.client.set_terminated(run.info.run_id)
    mv = stack.client.create_model_version(
        model, source=f"runs:/{run.info.run_id}/model", run_id=run.info.run_id, description="ok"
    )
    return str(mv.version)


def wait_status(stack: Stack, model: str, version: str, status: str, timeout: float = 60) -> None:
    wait_until(
        lambda: stack.version_tags(model, version).get(tags.STATUS) == status,
        timeout,
        what=f"{model} v{version} {status}\n{stack.logs()}",
    )


def test_two_of_three_reviewers_promote_only_at_the_second(authed: Stack) -> None:
    model = "reviewed-fraud"
    v1 = new_version(authed, model, 0.95)
    asked = as_person(authed, "erin", "request", model, v1, "--target", "champion")
    assert asked.returncode == 0, asked.stderr
    assert "requested" in asked.stdout and "erin" in asked.stdout
    wait_status(authed, model, v1, "pending_review")
    assert authed.alias_version(model, "champion") is None
    reason = authed.version_tags(model, v1)[tags.REASON]
    assert "Requested by erin (authenticated by the gate" in reason
    assert "created by dave" in reason

    # Refused: the requester, the creator, someone no policy names, bad credentials.
    for who, expected in (
        ("erin", "you requested this promotion"),
        ("dave", "you created this version"),
        ("mallory", "not a reviewer for policy 'production-quality'"),
    ):
        refused = as_person(authed, who, "review", "approve", model, v1, "--target", "champion")
        assert refused.returncode == 1, refused.stdout
        assert expected in refused.stderr
    bad = as_person(
        authed, "alice", "review", "approve", model, v1, "--target", "champion", password="wrong"
    )
    assert bad.returncode == 1 and "refused the credentials" in bad.stderr

    mine = as_person(authed, "carol", "review", "list", "--mine", "--json")
    assert mine.returncode == 0, mine.stderr
    [listed] = [r for r in json.loads(mine.stdout) if r["model"] == model]
    assert listed["approvals_needed"] == 2 and listed["requester"]["name"] == "erin"
    assert listed["requester"]["verified"] is True
    not_mallory = as_person(authed, "mallory", "review", "list", "--mine", "--json")
    assert [r for r in json.loads(not_mallory.stdout) if r["model"] == model] == []

    first = as_person(authed, "alice", "review", "approve", model, v1, "--target", "champion")
    assert first.returncode == 0, first.stderr
    assert "1 of 2 approvals" in first.stdout
    time.sleep(2)  # the vote's event handled: still nothing moves
    assert authed.alias_version(model, "champion") is None
    again = as_person(authed, "alice", "review", "approve", model, v1, "--target", "champion")
    assert again.returncode == 0 and "had already approved" in again.stdout

    second = as_person(
        authed, "carol", "review", "approve", model, v1, "--target", "champion", "--comment", "ok"
    )
    assert second.returncode == 0, second.stderr
    wait_status(authed, model, v1, "approved")
    assert authed.alias_version(model, "champion") == v1
    audit = authed.gate("audit", "--model", model, "--json")
    decisions = json.loads(audit.stdout)
    approved = [d for d in decisions if d["outcome"] == "approved"]
    assert approved and "Approved by reviewers alice, carol" in approved[0]["reason"]
    assert approved[0]["requested_by"] == "erin"
    late = as_person(authed, "bob", "review", "approve", model, v1, "--target", "champion")
    assert late.returncode == 1 and "already decided" in late.stderr

    # Each step was notified, signed (the sink checks the Standard Webhooks signature itself).
    def notified() -> list[tuple[str, dict[str, object]]]:
        found = []
        for r in SINK.received:
            body = json.loads(r.body)
            if body["data"].get("model") == model and r.verified and r.status == 200:
                found.append((body["type"], body["data"]))
        return found

    wait_until(lambda: len(notified()) >= 4, 30, what=f"4 notifications\n{authed.logs()}")
    assert [kind for kind, _ in notified()] == [
        "review.requested",
        "review.approved",
        "review.approved",
        "decision.approved",
    ]
    _, approved_data = notified()[-1]
    assert approved_data["reviewers"] == ["alice", "carol"] and approved_data["version"] == v1
    assert str(approved_data["links"]["mlflow"]).endswith(f"/versions/{v1}")  # type: ignore[index]


def test_a_rejection_with_a_comment(authed: Stack) -> None:
    model = "reviewed-churn"
    v1 = new_version(authed, model, 0.97)
    authed.client.set_model_version_tag(model, v1, tags.REQUEST, "champion")  # by tag
    wait_status(authed, model, v1, "pending_review")
    listed = as_person(authed, "bob", "review", "list", "--json")
    [review] = [r for r in json.loads(listed.stdout) if r["model"] == model]
    assert review["requester"]["name"] is None and "unknown" in review["requester"]["says"]
    no_comment = as_person(authed, "bob", "review", "reject", model, v1, "--target", "champion")
    assert no_comment.returncode == 2  # usage: --comment is required
    rejected = as_person(
        authed, "bob", "review", "reject", model, v1, "--target", "champion",
        "--comment", "no fairness report",
    )  # fmt: skip
    assert rejected.returncode == 0, rejected.stderr
    wait_status(authed, model, v1, "rejected")
    reason = authed.version_tags(model, v1)[tags.REASON]
    assert reason.startswith("Rejected by reviewer bob: no fairness report")
    assert authed.alias_version(model, "champion") is None


def test_a_new_request_supersedes_the_pending_review(authed: Stack) -> None:
    model = "reviewed-ranker"
    v1 = new_version(authed, model, 0.95)
    v2 = new_version(authed, model, 0.96)
    assert as_person(authed, "erin", "request", model, v1, "--target", "champion").returncode == 0
    wait_status(authed, model, v1, "pending_review")
    assert as_person(authed, "alice", "review", "approve", model, v1, "--target", "champion")
    assert as_person(authed, "erin", "request", model, v2, "--target", "champion").returncode == 0
    wait_status(authed, model, v2, "pending_review")
    wait_status(authed, model, v1, "superseded")
    stale = as_person(authed, "bob", "review", "approve", model, v1, "--target", "champion")
    assert stale.returncode == 1 and "superseded" in stale.stderr


def test_expiry_rejects(authed: Stack) -> None:
    model = "expiring-model"
    v1 = new_version(authed, model, 0.95)
    assert as_person(authed, "erin", "request", model, v1, "--target", "champion").returncode == 0
    wait_status(authed, model, v1, "pending_review")
    wait_status(authed, model, v1, "rejected", timeout=30)  # the sweep, every second
    assert "the review expired" in authed.version_tags(model, v1)[tags.REASON]
    late = as_person(authed, "alice", "review", "approve", model, v1, "--target", "champion")
    assert late.returncode == 1


def test_the_api_needs_a_verified_identity(authed: Stack) -> None:
    url = f"{authed.receiver_url}/api/v1/reviews"
    assert requests.get(url, timeout=10).status_code == 401
    forged = requests.get(url, headers={"X-Forwarded-User": "alice"}, timeout=10)
    assert forged.status_code == 401  # no trusted proxy configured: the header means nothing
    who = requests.get(f"{authed.receiver_url}/api/v1/whoami", auth=("alice", PASSWORD), timeout=10)
    assert who.status_code == 200 and who.json()["user"] == "alice"
    vote = requests.post(
        url,
        json={"model": "reviewed-x", "version": "1", "target": "champion", "verdict": "approve",
              "reviewer": "bob"},
        auth=("mallory", PASSWORD),
        timeout=10,
    )  # fmt: skip
    assert vote.status_code == 404  # no review there; and `reviewer` in a body is never read


def test_the_commands_need_only_mlflow_credentials_and_gate_url(tmp_path: Path) -> None:
    """Usage errors exit 2 before anything is sent."""
    env = {"PATH": os.environ["PATH"], "GATE_URL": "http://127.0.0.1:1"}
    usage = subprocess.run(
        [*gate_command(), "review", "approve", "m", "1"], env=env, capture_output=True, text=True
    )
    assert usage.returncode == 2
    down = subprocess.run(
        [*gate_command(), "review", "list"], env=env, capture_output=True, text=True
    )
    assert down.returncode == 1 and "did not answer" in down.stderr
