"""Who is using the console, and that they meant to: sign-in, the session, and the anti-forgery
token every form carries.

- Signing in: MLflow user name and password, verified by MLflow (shared/identity.py), or the
  trusted single-sign-on header from a proxy in GATE_TRUSTED_PROXIES. No page but the sign-in
  form (and /healthz) is served to someone not signed in.
- The session is a cookie signed with GATE_CONSOLE_SECRET (HttpOnly, SameSite=Lax, Secure
  behind https), good for SESSION_HOURS; it holds the verified name, never a password.
- Every POST must carry the session's token (`csrf_token`): a form posted from another site,
  or without it, is refused (400) and nothing changes.
"""

from __future__ import annotations

import hmac
import logging
import secrets
from datetime import timedelta
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Flask,
    Response,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from werkzeug.wrappers import Response as BaseResponse

from console.services import services
from shared.identity import Identity, IdentityUnavailable, NotSignedIn

log = logging.getLogger(__name__)

SESSION_HOURS = 12
PUBLIC = frozenset({"signin.form", "signin.submit", "health"})
UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})
CSRF_FIELD = "csrf_token"


class Forged(Exception):
    """A form without the session's anti-forgery token."""


def install(app: Flask, secret: str, secure_cookie: bool) -> None:
    app.secret_key = secret
    app.config.update(
        SESSION_COOKIE_NAME="mlflow_gate_console",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=secure_cookie,
        PERMANENT_SESSION_LIFETIME=timedelta(hours=SESSION_HOURS),
    )
    app.before_request(_guard)
    app.jinja_env.globals["csrf_token"] = csrf_token
    app.register_blueprint(blueprint)


def csrf_token() -> str:
    token = session.get(CSRF_FIELD)
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        session[CSRF_FIELD] = token
    return token


def person() -> Identity:
    found: Identity = g.person
    return found


def _guard() -> BaseResponse | None:
    if request.method in UNSAFE:
        sent = request.form.get(CSRF_FIELD, "")
        kept = session.get(CSRF_FIELD)
        if not isinstance(kept, str) or not hmac.compare_digest(sent.encode(), kept.encode()):
            raise Forged()
    if request.endpoint in PUBLIC or request.endpoint == "static":
        return None
    found = _proxy_identity() or _session_identity()
    if found is None:
        wanted = request.full_path if request.method == "GET" else request.path
        return redirect(url_for("signin.form", next=wanted.rstrip("?")))
    g.person = found
    return None


def _proxy_identity() -> Identity | None:
    """The single-sign-on header, believed only from a trusted proxy."""
    gate = services()
    header = gate.settings.trusted_user_header
    named = request.headers.get(header, "").strip() if header else ""
    if not header or not named:
        return None
    try:
        return gate.identities.of_request({header: named}, request.remote_addr)
    except NotSignedIn:
        return None  # from an untrusted peer: the header means nothing


def _session_identity() -> Identity | None:
    name, via = session.get("user"), session.get("via")
    if not isinstance(name, str) or not name or not isinstance(via, str):
        return None
    return Identity(name, bool(session.get("is_admin")), via)


blueprint = Blueprint("signin", __name__)


@blueprint.get("/signin")
def form() -> str:
    return render_template("signin.html", next=_local(request.args.get("next")), error=None)


@blueprint.post("/signin")
def submit() -> BaseResponse | tuple[str, int]:
    gate = services()
    user = request.form.get("username", "").strip()
    password = request.form.get("password", "")
    wanted = _local(request.form.get("next"))
    if not user or not password:
        return _failed("Give your MLflow user name and password.", wanted, 400)
    try:
        found = gate.identities.with_password(user, password)
    except NotSignedIn:
        log.info("console sign-in refused for %r", user)
        return _failed(
            "MLflow refused that user name and password: check them (they are your MLflow "
            "account's), or ask an MLflow admin to reset the password.",
            wanted,
            401,
        )
    except IdentityUnavailable as exc:
        return _failed(f"Cannot sign in now: {exc}.", wanted, 503)
    session.clear()  # a fresh session (and token) at each sign-in: no fixation
    session.permanent = True
    session["user"], session["via"], session["is_admin"] = found.name, found.via, found.is_admin
    csrf_token()
    log.info("console: %s signed in (via %s)", found.name, found.via)
    return redirect(wanted or url_for("decisions.index"))


@blueprint.post("/signout")
def signout() -> BaseResponse:
    session.clear()
    return redirect(url_for("signin.form"))


def _failed(message: str, wanted: str | None, status: int) -> tuple[str, int]:
    return render_template("signin.html", next=wanted, error=message), status


def _local(target: str | None) -> str | None:
    """Only a path on this console may be gone to after sign-in (never another site)."""
    if not target:
        return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return None
    if "\\" in target:
        return None
    return target


def forged(_exc: Forged) -> tuple[str, int]:
    return render_template(
        "error.html",
        title="Form refused",
        message=(
            "This form did not carry the anti-forgery token of your session (it was sent from "
            "another page or site, or your session changed since the page was loaded). Nothing "
            "was changed. Reload the page and send the form again."
        ),
    ), 400


def headers(response: Response) -> Response:
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    response.headers.setdefault(
        "Content-Security-Policy",
        "default-src 'self'; style-src 'self' 'unsafe-inline'; script-src 'none'; "
        "img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    )
    if request.endpoint not in PUBLIC:
        response.headers.setdefault("Cache-Control", "no-store")
    return response
