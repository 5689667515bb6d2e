"""The console's pages through Flask's test client: sign-in in front of every page, the
anti-forgery token on every form, who may vote, replay and purge, and what the pages show. The
ledger is a real SQLite ledger filled by the real decision pipeline (against the in-memory
MLflow); MLflow's answers about people are a small stand-in here. A real browser against the
real stack: tests/integration/test_console.py."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from io import BytesIO
from pathlib import Path
from typing import Any

import fakeredis
import pytest
from flask import Flask
from flask.testing import FlaskClient

from console.app import create_app
from console.services import Services
from shared import tags
from shared.deadletter import DeadLetterStore
from shared.errors import ConfigError
from shared.events import GateEvent, Kind, Origin, RegistryKind
from shared.identity import Identity, NotSignedIn
from shared.ledger import Ledger, Verdict
from shared.policy import parse_policies
from shared.settings import Settings
from worker.pipeline import Pipeline
from worker.registries import Registries
from worker.registries.memory import InMemoryMlflow, InMemoryRegistry

SECRET = "a-console-secret-of-at-least-32-characters"
POLICY = """
policies:
  - name: production-quality
    targets: [champion]
    rules:
      - metric: validation_accuracy
        min: 0.90
  - name: reviewed
    models: ["reviewed-*"]
    targets: [champion]
    rules:
      - metric: validation_accuracy
        min: 0.90
    review:
      approvals: 2
      reviewers: [alice, bob, carol]
"""
NOW = datetime(2026, 11, 24, 12, 0, tzinfo=timezone.utc)


@dataclass
class People:
    """MLflow's answers about people, as shared.identity.Identities gives them."""

    passwords: dict[str, str] = field(
        default_factory=lambda: {n: f"{n}-password-123" for n in ("alice", "bob", "carol", "ops")}
    )
    admins: set[str] = field(default_factory=lambda: {"ops"})
    roles: dict[str, set[str]] = field(default_factory=dict)

    def with_password(self, user: str, password: str) -> Identity:
        if self.passwords.get(user) != password:
            raise NotSignedIn(f"MLflow refused the credentials of user {user!r}")
        return Identity(user, user in self.admins, "mlflow")

    def of_request(self, headers: dict[str, str], peer: str | None) -> Identity:
        name = next(iter(headers.values()))
        if peer != "10.0.0.5":
            raise NotSignedIn("not signed in")
        return Identity(name, name in self.admins, "proxy")

    def roles_of(self, name: str) -> set[str]:
        return self.roles.get(name, set())

    def is_admin(self, name: str) -> bool:
        return name in self.admins


@dataclass
class Console:
    app: Flask
    ledger: Ledger
    mlflow: InMemoryMlflow
    pipeline: Pipeline
    store: DeadLetterStore
    published: list[dict[str, Any]]
    people: People

    def client(self, who: str | None = None) -> FlaskClient:
        client = self.app.test_client()
        if who is not None:
            page = client.get("/signin")
            reply = client.post(
                "/signin",
                data={"username": who, "password": f"{who}-password-123",
                      "csrf_token": token(page.text)},
            )  # fmt: skip
            assert reply.status_code == 302, reply.text
        return client

    def decide(self, model: str, accuracy: float, by: str | None = None) -> str:
        if model not in self.mlflow.models:
            self.mlflow.create_model(model)
        run_id = self.mlflow.create_run(
            metrics={"validation_accuracy": accuracy}, tags={tags.RUN_USER: "dave"}
        )
        version = self.mlflow.create_version(model, run_id=run_id, description="described")
        if by is not None:
            self.mlflow.set_version_tag(model, version, tags.REQUESTED_BY, by)
        self.mlflow.set_version_tag(model, version, tags.REQUEST, "champion")
        self.pipeline.handle(event(model, version))
        return version


def event(model: str, version: str, origin: Origin = Origin.WEBHOOK) -> GateEvent:
    return GateEvent(
        event_id=f"evt-{uuid.uuid4().hex[:8]}",
        registry=RegistryKind.MLFLOW,
        origin=origin,
        kind=Kind.REQUEST,
        model=model,
        version=version,
        target="champion",
        received_at=0.0,
        webhook_event="test",
    )


def token(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found, "no anti-forgery token on the page"
    return found.group(1)


@pytest.fixture
def console(sqlite_ledger: Ledger, tmp_path: Path) -> Iterator[Console]:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    settings = Settings.from_env(
        {
            "GATE_CONSOLE_SECRET": SECRET,
            "GATE_POLICY_FILE": str(policy),
            "MLFLOW_TRACKING_URI": "http://mlflow.example:5000",
            "GATE_TRUSTED_USER_HEADER": "X-Forwarded-User",
            "GATE_TRUSTED_PROXIES": "10.0.0.5",
            "GATE_CONSOLE_ADMIN_ROLE": "gate-operators",
        }
    )
    mlflow = InMemoryMlflow()
    pipeline = Pipeline(
        Registries({RegistryKind.MLFLOW: InMemoryRegistry(mlflow)}),
        parse_policies(POLICY),
        sqlite_ledger,
        lambda: NOW,
    )
    store = DeadLetterStore(fakeredis.FakeRedis())
    published: list[dict[str, Any]] = []
    people = People()
    services = Services(
        settings,
        people,  # type: ignore[arg-type]
        clock=lambda: NOW,
        status=lambda _settings: {
            "ok": True,
            "mlflow": {"url": "http://mlflow.example:5000", "reachable": True},
            "redis": {"url": "redis://r:6379/0", "reachable": True},
            "queue_depth": 0,
            "tasks_in_flight": 0,
            "dead_letters": store.count(),
            "workers": ["celery@w1"],
            "ledger": {"reachable": True, "revision": "0003"},
        },
        redis_client=store.client,
        publish_to=published.append,
        ledger_made=sqlite_ledger,
    )
    app = create_app(settings, services)
    yield Console(app, sqlite_ledger, mlflow, pipeline, store, published, people)


# --- sign-in and forgery -------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/", "/decisions", "/decisions/1", "/models", "/models/x", "/reviews",
             "/dead-letters", "/dead-letters/abc", "/dead-letters/purge", "/policy"],
)  # fmt: skip
def test_no_page_without_sign_in(console: Console, path: str) -> None:
    reply = console.client().get(path)
    assert reply.status_code == 302
    assert reply.headers["Location"].startswith("/signin?next=")
    assert "Signed in as" not in reply.text


def test_sign_in_checks_the_password_with_mlflow_and_goes_back(console: Console) -> None:
    client = console.client()
    page = client.get("/signin?next=/reviews")
    assert page.status_code == 200 and 'name="next" value="/reviews"' in page.text
    wrong = client.post(
        "/signin",
        data={"username": "alice", "password": "nope", "next": "/reviews",
              "csrf_token": token(page.text)},
    )  # fmt: skip
    assert wrong.status_code == 401 and "MLflow refused" in wrong.text
    right = client.post(
        "/signin",
        data={"username": "alice", "password": "alice-password-123", "next": "/reviews",
              "csrf_token": token(wrong.text)},
    )  # fmt: skip
    assert right.status_code == 302 and right.headers["Location"] == "/reviews"
    assert 'Signed in as <b id="me">alice</b>' in client.get("/reviews").text
    cookie = right.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie


@pytest.mark.parametrize(
    "next_url", ["//evil.example/x", "https://evil.example/", "/\\evil.example", "javascript:x"]
)
def test_sign_in_never_sends_you_to_another_site(console: Console, next_url: str) -> None:
    client = console.client()
    page = client.get("/signin")
    reply = client.post(
        "/signin",
        data={"username": "bob", "password": "bob-password-123", "next": next_url,
              "csrf_token": token(page.text)},
    )  # fmt: skip
    assert reply.status_code == 302 and reply.headers["Location"] == "/decisions"


def test_a_form_without_its_token_is_refused_and_changes_nothing(console: Console) -> None:
    console.store.put(event("m", "1").to_dict(), RuntimeError("boom"), attempts=3)
    (entry,) = console.store.all()
    client = console.client("ops")
    for data in ({"id": entry.id}, {"id": entry.id, "csrf_token": "forged"}):
        refused = client.post("/dead-letters/replay", data=data)
        assert refused.status_code == 400 and "anti-forgery token" in refused.text
    assert console.store.count() == 1 and console.published == []
    # Not signed in and no token: refused too (sign-in itself carries a token).
    assert console.client().post("/signin", data={"username": "ops"}).status_code == 400


def test_sign_out_ends_the_session(console: Console) -> None:
    client = console.client("alice")
    page = client.get("/decisions")
    out = client.post("/signout", data={"csrf_token": token(page.text)})
    assert out.status_code == 302
    assert client.get("/decisions").status_code == 302


def test_the_sso_header_counts_only_from_a_trusted_proxy(console: Console) -> None:
    client = console.client()
    trusted = client.get(
        "/decisions",
        headers={"X-Forwarded-User": "carol"},
        environ_base={"REMOTE_ADDR": "10.0.0.5"},
    )
    assert trusted.status_code == 200 and '<b id="me">carol</b>' in trusted.text
    forged = console.client().get(
        "/decisions", headers={"X-Forwarded-User": "ops"}, environ_base={"REMOTE_ADDR": "10.9.9.9"}
    )
    assert forged.status_code == 302
    # A proxy's sign-in lasts only as long as the proxy sends the header.
    assert client.get("/decisions", environ_base={"REMOTE_ADDR": "10.0.0.5"}).status_code == 302


def test_the_console_will_not_start_without_a_strong_secret(tmp_path: Path) -> None:
    for secret in ("", "short"):
        settings = Settings.from_env({"GATE_CONSOLE_SECRET": secret})
        with pytest.raises(ConfigError, match="GATE_CONSOLE_SECRET"):
            create_app(settings)


# --- decisions and models ------------------------------------------------------------------


def test_a_rejected_decision_shows_its_failed_check(console: Console) -> None:
    good = console.decide("fraud", 0.95)
    bad = console.decide("fraud", 0.70)
    client = console.client("alice")
    listed = client.get("/decisions?outcome=rejected")
    assert listed.status_code == 200
    ids = re.findall(r'href="/decisions/(\d+)"', listed.text)
    assert ids, listed.text
    detail = client.get(f"/decisions/{ids[0]}").text
    assert f"fraud version {bad}" in detail and "rejected" in detail
    assert "✗ FAILED" in detail and "validation_accuracy" in detail
    assert "0.7" in detail and "&gt;= 0.9" in detail
    assert f"http://mlflow.example:5000/#/models/fraud/versions/{bad}" in detail
    assert "Facts evaluated" in detail
    approved = client.get("/decisions?outcome=approved&model=fra*").text
    assert "fraud" in approved and "rejected</td>" not in approved
    assert client.get("/decisions?since=yesterday").status_code == 200  # says what is wrong
    assert "is not a time" in client.get("/decisions?since=yesterday").text
    assert good != bad


def test_decisions_page_by_fifty(console: Console) -> None:
    for _ in range(3):
        console.decide("churn", 0.95)
    client = console.client("alice")
    # 3 decisions; a small page size through the query is not offered: check the links.
    first = client.get("/decisions").text
    assert "Older" not in first and "Page 1" in first
    assert "Newer" in client.get("/decisions?page=2").text


def test_a_model_shows_who_held_the_target_and_when(console: Console) -> None:
    v1 = console.decide("ranker", 0.95)
    v2 = console.decide("ranker", 0.96)
    v3 = console.decide("ranker", 0.50)
    page = console.client("alice").get("/models/ranker").text
    assert "HOLDS IT NOW" in page
    holds = page[page.index("HOLDS IT NOW") - 80 : page.index("HOLDS IT NOW")]
    assert v2 in holds
    assert "replaced by version" in page
    for version in (v1, v2, v3):
        assert f'<td class="num">{version}</td>' in page
    assert console.client("alice").get("/models/nothing-here").status_code == 404


# --- reviews ---------------------------------------------------------------------------------


def test_a_reviewer_approves_and_the_vote_goes_to_the_workers(console: Console) -> None:
    version = console.decide("reviewed-fraud", 0.95, by="alice")
    alice = console.client("alice")
    page = alice.get("/reviews").text
    assert "reviewed-fraud version" in page and "0 of 2" in page
    assert "you requested this promotion" in page  # the requester may not approve
    bob = console.client("bob")
    page = bob.get("/reviews").text
    review = console.ledger.open_review(RegistryKind.MLFLOW, "reviewed-fraud", "champion")
    assert review is not None and review.version == version
    voted = bob.post(
        f"/reviews/{review.id}/vote",
        data={"verdict": "approve", "comment": "looks right", "csrf_token": token(page)},
    )
    assert voted.status_code == 302
    after = bob.get("/reviews").text
    assert "Bob approved reviewed-fraud" in after and "1 of 2" in after
    (vote,) = console.ledger.votes(review.id)
    assert (vote.reviewer, vote.verdict, vote.comment) == ("bob", Verdict.APPROVE, "looks right")
    assert [p["event_id"] for p in console.published] == [f"vote-{vote.id}"]
    # Someone no policy names is refused, and nothing is recorded.
    mallory = console.client("ops")
    refused = mallory.post(
        f"/reviews/{review.id}/vote",
        data={"verdict": "approve", "csrf_token": token(mallory.get("/reviews").text)},
    )
    assert refused.status_code == 302
    assert "not a reviewer" in mallory.get("/reviews").text
    assert len(console.ledger.votes(review.id)) == 1


def test_a_rejection_needs_a_comment(console: Console) -> None:
    console.decide("reviewed-churn", 0.95)
    review = console.ledger.open_review(RegistryKind.MLFLOW, "reviewed-churn", "champion")
    assert review is not None
    carol = console.client("carol")
    carol.post(
        f"/reviews/{review.id}/vote",
        data={"verdict": "reject", "csrf_token": token(carol.get("/reviews").text)},
    )
    assert "a rejection needs a comment" in carol.get("/reviews").text
    assert console.ledger.votes(review.id) == []


# --- dead letters --------------------------------------------------------------------------


def test_only_an_operator_replays_or_purges(console: Console) -> None:
    console.store.put(event("fraud", "1").to_dict(), RuntimeError("MLflow said 500"), attempts=16)
    (entry,) = console.store.all()
    alice = console.client("alice")
    page = alice.get("/dead-letters")
    assert page.status_code == 200 and entry.id in page.text and "MLflow said 500" in page.text
    assert "disabled" in page.text
    refused = alice.post(
        "/dead-letters/replay", data={"id": entry.id, "csrf_token": token(page.text)}
    )
    assert refused.status_code == 403 and "Only an MLflow admin" in refused.text
    assert alice.get("/dead-letters/purge").status_code == 403
    assert console.store.count() == 1 and console.published == []
    # A member of GATE_CONSOLE_ADMIN_ROLE may.
    console.people.roles["alice"] = {"gate-operators"}
    replayed = alice.post(
        "/dead-letters/replay", data={"id": entry.id, "csrf_token": token(page.text)}
    )
    assert replayed.status_code == 302
    assert console.store.count() == 0
    assert [p["event_id"] for p in console.published] == [entry.id]
    assert console.published[0]["origin"] == "replay"


def test_replay_all_that_match_a_filter(console: Console) -> None:
    for model in ("fraud-a", "fraud-b", "churn"):
        console.store.put(event(model, "1").to_dict(), RuntimeError("boom"), attempts=2)
    ops = console.client("ops")
    page = ops.get("/dead-letters?model=fraud-*").text
    assert "churn" not in page.split('id="dead-letters"')[1]
    ops.post(
        "/dead-letters/replay", data={"all": "1", "model": "fraud-*", "csrf_token": token(page)}
    )
    assert sorted(p["model"] for p in console.published) == ["fraud-a", "fraud-b"]
    assert [e.model for e in console.store.all()] == ["churn"]


def test_purge_asks_for_confirmation(console: Console) -> None:
    for n in range(2):
        console.store.put(event("m", str(n)).to_dict(), RuntimeError("boom"), attempts=2)
    ops = console.client("ops")
    form = ops.get("/dead-letters/purge").text
    assert "all <b>2</b> dead letters" in form
    unconfirmed = ops.post("/dead-letters/purge", data={"count": "2", "csrf_token": token(form)})
    assert unconfirmed.status_code == 302 and console.store.count() == 2
    stale = ops.post(
        "/dead-letters/purge", data={"count": "5", "confirm": "purge", "csrf_token": token(form)}
    )
    assert stale.status_code == 302 and console.store.count() == 2
    done = ops.post(
        "/dead-letters/purge", data={"count": "2", "confirm": "purge", "csrf_token": token(form)}
    )
    assert done.status_code == 302 and console.store.count() == 0
    assert "Purged 2 dead letters, by ops" in ops.get("/dead-letters").text


def test_a_dead_letter_in_full(console: Console) -> None:
    console.store.put(event("fraud", "4").to_dict(), RuntimeError("MLflow said 500"), attempts=5)
    (entry,) = console.store.all()
    page = console.client("alice").get(f"/dead-letters/{entry.id}")
    assert (
        page.status_code == 200
        and "MLflow said 500" in page.text
        and "&#34;fraud&#34;" in page.text
    )
    assert console.client("alice").get("/dead-letters/nope").status_code == 404


# --- policy and what if ----------------------------------------------------------------------


def test_what_if_marks_the_decisions_a_stricter_policy_flips(console: Console) -> None:
    passed = console.decide("fraud", 0.93)
    console.decide("fraud", 0.80)  # rejected either way
    alice = console.client("alice")
    page = alice.get("/policy").text
    assert "production-quality" in page and "min: 0.90" in page
    stricter = POLICY.replace("min: 0.90\n  - name: reviewed", "min: 0.95\n  - name: reviewed")
    result = alice.post(
        "/policy/what-if", data={"policy": stricter, "last": "10", "csrf_token": token(page)}
    )
    assert result.status_code == 200
    assert "1 of 2 decisions would flip" in result.text
    (flip,) = re.findall(r'<tr class="flip">(.*?)</tr>', result.text, flags=re.DOTALL)
    assert "FLIPS" in flip and f">{passed}</td>" in flip and "0.93, below the minimum 0.95" in flip
    # Uploaded as a file, the same.
    uploaded = alice.post(
        "/policy/what-if",
        data={"file": (BytesIO(stricter.encode()), "stricter.yaml"), "last": "10",
              "csrf_token": token(page)},
        content_type="multipart/form-data",
    )  # fmt: skip
    assert "1 of 2 decisions would flip" in uploaded.text
    # The active policy is untouched: nothing flips under it.
    same = alice.post("/policy/what-if", data={"policy": POLICY, "csrf_token": token(page)})
    assert "0 of 2 decisions would flip" in same.text


def test_what_if_says_what_is_wrong_with_a_bad_policy(console: Console) -> None:
    alice = console.client("alice")
    page = alice.get("/policy").text
    bad = alice.post(
        "/policy/what-if", data={"policy": "policies: [{name: x}]", "csrf_token": token(page)}
    )
    assert bad.status_code == 400 and "The proposed policy is not valid" in bad.text
    empty = alice.post("/policy/what-if", data={"policy": " ", "csrf_token": token(page)})
    assert empty.status_code == 400 and "Paste a policy" in empty.text
    many = alice.post(
        "/policy/what-if", data={"policy": POLICY, "last": "5000", "csrf_token": token(page)}
    )
    assert many.status_code == 400 and "1 to 1000" in many.text
