"""Who is asking: an identity the gate verified, never a name typed in.

Two ways, as a deployment is set up:
- MLflow's own authentication (`mlflow server --app-name basic-auth`): the caller sends their
  MLflow user name and password (HTTP Basic); the gate asks MLflow who that is
  (`GET /api/2.0/mlflow/users/current` with those credentials). MLflow says no: not signed in.
- A single-sign-on proxy in front of the gate: the header GATE_TRUSTED_USER_HEADER names the
  user, believed only on a request whose peer address is in GATE_TRUSTED_PROXIES.

Role membership (a policy's `review.role`) and whether a user is an MLflow admin are read with the
gate's own MLflow account (an admin), through MLflow's role API.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import requests

from shared.errors import GateError
from shared.settings import Settings

log = logging.getLogger(__name__)

CURRENT_USER = "/api/2.0/mlflow/users/current"
GET_USER = "/api/2.0/mlflow/users/get"
USER_ROLES = "/api/3.0/mlflow/users/roles/list"

VIA_MLFLOW = "mlflow"
VIA_PROXY = "proxy"


@dataclass(frozen=True)
class Identity:
    name: str
    is_admin: bool
    via: str  # mlflow (credentials MLflow verified) | proxy (the trusted SSO header)


class NotSignedIn(GateError):
    """No identity, or one MLflow refused (HTTP 401); the message says what to do."""


class IdentityUnavailable(GateError):
    """MLflow could not be asked who someone is (down, or misconfigured): try again later."""


class Identities:
    def __init__(self, settings: Settings, session: requests.Session | None = None) -> None:
        self.base = settings.mlflow_tracking_uri.rstrip("/")
        self.verify_tls = not settings.mlflow_insecure_tls
        self.timeout = settings.mlflow_timeout_seconds
        self.header = settings.trusted_user_header
        self.proxies = settings.trusted_proxies
        self.http = session or requests.Session()
        self._gate_auth: tuple[str, str] | None = None
        self._gate_headers: dict[str, str] = {}
        if settings.mlflow_username and settings.mlflow_password:
            self._gate_auth = (settings.mlflow_username, settings.mlflow_password)
        elif settings.mlflow_token:
            self._gate_headers = {"Authorization": f"Bearer {settings.mlflow_token}"}

    # -- who is asking -----------------------------------------------------------------------
    def of_request(self, headers: Mapping[str, str], peer: str | None) -> Identity:
        """The identity of an HTTP request: the trusted header from a trusted proxy, else the
        MLflow credentials it carries (Basic). Header names are matched in any case."""
        lowered = {key.lower(): value for key, value in headers.items()}
        named = lowered.get(self.header.lower(), "").strip() if self.header else ""
        if named:
            if _trusted(peer, self.proxies):
                name = named
                return Identity(name, self.is_admin(name), VIA_PROXY)
            log.warning(
                "ignored the %s header from %s: not in GATE_TRUSTED_PROXIES", self.header, peer
            )
        credentials = _basic(lowered.get("authorization", ""))
        if credentials is None:
            how = "send your MLflow user name and password (HTTP Basic)"
            if self.header:
                how += f", or come through the single-sign-on proxy (header {self.header})"
            raise NotSignedIn(f"not signed in: {how}")
        return self.with_password(*credentials)

    def with_password(self, user: str, password: str) -> Identity:
        """The MLflow user these credentials belong to, as MLflow says."""
        try:
            reply = self.http.get(
                self.base + CURRENT_USER,
                auth=(user, password),
                timeout=self.timeout,
                verify=self.verify_tls,
            )
        except requests.RequestException as exc:
            raise IdentityUnavailable(
                f"could not ask MLflow at {self.base} who you are ({type(exc).__name__}); "
                "try again when it answers"
            ) from None
        if reply.status_code == 401:
            raise NotSignedIn(
                f"MLflow refused the credentials of user {user!r}: check "
                "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
            )
        if reply.status_code == 404:
            raise IdentityUnavailable(
                f"MLflow at {self.base} has no user accounts ({CURRENT_USER} not found): run it "
                "with `--app-name basic-auth`, or sign in through a single-sign-on proxy "
                "(GATE_TRUSTED_USER_HEADER, GATE_TRUSTED_PROXIES)"
            )
        body = _json(reply, "who you are")
        user_field = body.get("user")
        found: dict[str, Any] = user_field if isinstance(user_field, dict) else {}
        name = str(found.get("username") or "")
        if not name:
            raise IdentityUnavailable(f"MLflow's answer to {CURRENT_USER} names no user")
        return Identity(name, bool(found.get("is_admin")), VIA_MLFLOW)

    # -- what MLflow says of them, asked with the gate's own account ---------------------------
    def roles_of(self, name: str) -> set[str]:
        """The names of the MLflow roles `name` is assigned (every workspace)."""
        body = self._as_gate(USER_ROLES, {"username": name}, f"the roles of {name!r}")
        if body is None:
            return set()
        roles = body.get("roles")
        return {str(r.get("name")) for r in roles if isinstance(r, dict)} if roles else set()

    def is_admin(self, name: str) -> bool:
        """Whether MLflow says `name` is an admin (read now, with the gate's account)."""
        body = self._as_gate(GET_USER, {"username": name}, f"user {name!r}")
        user = body.get("user") if body is not None else None
        return bool(user.get("is_admin")) if isinstance(user, dict) else False

    def _as_gate(self, path: str, params: dict[str, str], what: str) -> dict[str, Any] | None:
        """GET `path` with the gate's account; None when MLflow does not know the user."""
        try:
            reply = self.http.get(
                self.base + path,
                params=params,
                auth=self._gate_auth,
                headers=self._gate_headers,
                timeout=self.timeout,
                verify=self.verify_tls,
            )
        except requests.RequestException as exc:
            raise IdentityUnavailable(
                f"could not read {what} from MLflow at {self.base} ({type(exc).__name__}); try "
                "again when it answers"
            ) from None
        if reply.status_code == 404 or (
            reply.status_code == 400 and "RESOURCE_DOES_NOT_EXIST" in reply.text
        ):
            return None
        if reply.status_code in (401, 403):
            raise IdentityUnavailable(
                f"MLflow refused the gate's own account reading {what} (HTTP "
                f"{reply.status_code}): the gate's MLflow user (MLFLOW_TRACKING_USERNAME of the "
                "receiver) must be an MLflow admin"
            )
        return _json(reply, what)


def _json(reply: requests.Response, what: str) -> dict[str, Any]:
    if reply.status_code >= 400:
        raise IdentityUnavailable(
            f"MLflow answered HTTP {reply.status_code} when asked {what}; try again later"
        )
    try:
        body = reply.json()
    except ValueError:
        raise IdentityUnavailable(f"MLflow's answer about {what} is not JSON") from None
    return body if isinstance(body, dict) else {}


def _basic(header: str) -> tuple[str, str] | None:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or not value.strip():
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    if not sep or not user:
        return None
    return user, password


def _trusted(peer: str | None, proxies: tuple[str, ...]) -> bool:
    if not peer or not proxies:
        return False
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return False
    return any(address in ipaddress.ip_network(net, strict=False) for net in proxies)
