"""Who is asking (shared/identity.py), against a small local HTTP server that answers MLflow's
user and role endpoints as MLflow's basic-auth app does; and the review policy keys."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest

from shared.errors import ConfigError
from shared.identity import Identities, IdentityUnavailable, NotSignedIn
from shared.policy import parse_policies, review_need
from shared.settings import Settings

USERS = {"alice": ("alice-password-123", False), "admin": ("admin-password-123", True)}
ROLES = {"alice": ["model-reviewers"], "sso-user": ["model-reviewers", "other"]}


class _Mlflow(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        url = urlparse(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        who = self._who()
        if url.path == "/api/2.0/mlflow/users/current":
            if who is None:
                return self._send(401, {"error_code": "UNAUTHENTICATED"})
            return self._send(200, {"user": {"id": 1, "username": who, "is_admin": USERS[who][1]}})
        if who != "admin":
            return self._send(403, {"error_code": "PERMISSION_DENIED"})
        if url.path == "/api/2.0/mlflow/users/get":
            name = query["username"]
            if name == "sso-admin":
                return self._send(200, {"user": {"username": name, "is_admin": True}})
            if name not in USERS and name not in ROLES:
                return self._send(404, {"error_code": "RESOURCE_DOES_NOT_EXIST"})
            return self._send(200, {"user": {"username": name, "is_admin": False}})
        if url.path == "/api/3.0/mlflow/users/roles/list":
            names = ROLES.get(query["username"], [])
            return self._send(200, {"roles": [{"id": i, "name": n} for i, n in enumerate(names)]})
        return self._send(404, {})

    def _who(self) -> str | None:
        header = self.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return None
        user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        return user if USERS.get(user, (None,))[0] == password else None

    def _send(self, status: int, body: dict[str, object]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def mlflow_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Mlflow)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def identities(url: str, **env: str) -> Identities:
    settings = Settings.from_env(
        {
            "MLFLOW_TRACKING_URI": url,
            "MLFLOW_TRACKING_USERNAME": "admin",
            "MLFLOW_TRACKING_PASSWORD": "admin-password-123",
            **env,
        }
    )
    return Identities(settings)


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def test_credentials_are_verified_by_mlflow(mlflow_url: str) -> None:
    ids = identities(mlflow_url)
    alice = ids.of_request(basic("alice", "alice-password-123"), "10.0.0.9")
    assert (alice.name, alice.is_admin, alice.via) == ("alice", False, "mlflow")
    with pytest.raises(NotSignedIn, match="refused the credentials of user 'alice'"):
        ids.of_request(basic("alice", "guess"), "10.0.0.9")
    with pytest.raises(NotSignedIn, match="not signed in"):
        ids.of_request({}, "10.0.0.9")
    with pytest.raises(NotSignedIn):
        ids.of_request({"Authorization": "Basic !!!not-base64"}, "10.0.0.9")
    assert ids.roles_of("alice") == {"model-reviewers"}
    assert ids.roles_of("nobody") == set()


def test_the_sso_header_is_believed_only_from_a_trusted_proxy(mlflow_url: str) -> None:
    ids = identities(
        mlflow_url,
        GATE_TRUSTED_USER_HEADER="X-Forwarded-User",
        GATE_TRUSTED_PROXIES="10.1.0.0/16, 127.0.0.1",
    )
    via_proxy = ids.of_request({"x-forwarded-user": "sso-admin"}, "10.1.2.3")
    assert (via_proxy.name, via_proxy.is_admin, via_proxy.via) == ("sso-admin", True, "proxy")
    with pytest.raises(NotSignedIn, match="X-Forwarded-User"):
        ids.of_request({"X-Forwarded-User": "sso-admin"}, "10.2.0.1")  # not a trusted peer
    # From an untrusted peer, real credentials still work and the header is ignored.
    who = ids.of_request({"X-Forwarded-User": "admin", **basic("alice", "alice-password-123")},
                         "192.168.1.1")  # fmt: skip
    assert who.name == "alice"


def test_mlflow_without_accounts_or_down_is_unavailable_not_anonymous(mlflow_url: str) -> None:
    down = identities("http://127.0.0.1:1")
    with pytest.raises(IdentityUnavailable, match="could not ask MLflow"):
        down.of_request(basic("alice", "x"), None)


def test_trusted_header_needs_trusted_proxies() -> None:
    with pytest.raises(ConfigError, match="GATE_TRUSTED_PROXIES"):
        Settings.from_env({"GATE_TRUSTED_USER_HEADER": "X-Forwarded-User"})
    with pytest.raises(ConfigError, match="not an IP address"):
        Settings.from_env({"GATE_TRUSTED_PROXIES": "proxy.example.com"})


REVIEW = """
policies:
  - name: a
    targets: [champion]
    rules:
      - metric: m
        min: 1
    review:
      approvals: {approvals}
      reviewers: [alice, bob]
      {extra}
"""


@pytest.mark.parametrize(
    ("approvals", "extra", "message"),
    [
        ("0", "", "approvals must be a whole number, 1 or more"),
        ("1.5", "", "approvals must be a whole number"),
        ("3", "", "3 approvals are needed but only 2 reviewers are named"),
        ("1", "expires_after: soon", "expires_after 'soon' is not a duration"),
        ("1", "votes: 2", "unknown key 'votes'"),
    ],
)
def test_review_keys_are_checked_with_their_line(approvals: str, extra: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as raised:
        parse_policies(REVIEW.format(approvals=approvals, extra=extra), source="p.yaml")
    assert str(raised.value).startswith("p.yaml:")


def test_notify_keys_are_checked() -> None:
    base = "policies:\n  - {name: a, targets: [x], rules: [{metric: m, min: 1}]}\nnotify:\n"
    with pytest.raises(ConfigError, match=r"p\.yaml:4: .*missing 'secret_env'"):
        parse_policies(base + "  - webhook: https://ci/x\n", source="p.yaml")
    with pytest.raises(ConfigError, match=r"unknown event 'decision\.maybe'"):
        parse_policies(
            base + "  - {slack_env: SLACK_URL, events: [decision.maybe]}\n", source="p.yaml"
        )
    with pytest.raises(ConfigError, match="not an http"):
        parse_policies(base + "  - {webhook: ftp://x, secret_env: S}\n", source="p.yaml")
    fine = parse_policies(
        base + "  - {webhook: https://ci/x, secret_env: S, events: [review.requested]}\n"
    )
    (sink,) = fine.notify
    assert sink.wants("review.requested") and not sink.wants("decision.approved")


def test_several_policies_ask_the_most_and_each_names_its_reviewers() -> None:
    policies = parse_policies(
        """
policies:
  - name: a
    targets: [champion]
    rules: [{metric: m, min: 1}]
    review: {approvals: 1, reviewers: [alice, bob], expires_after: 3d}
  - name: b
    targets: [champion]
    rules: [{metric: m, min: 1}]
    review: {approvals: 2, role: risk, expires_after: 12h}
  - name: c
    targets: [champion]
    mode: audit
    rules: [{metric: m, min: 1}]
    review: {approvals: 5}
"""
    )
    need = review_need(policies.policies)
    assert need is not None
    assert need.approvals == 2  # c is audit-only: its review is not asked for
    assert need.expires_after_seconds == 12 * 3600
    assert [name for name, _, _ in need.gates] == ["a", "b"]
