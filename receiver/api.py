"""The gate's HTTP API for people: promotion requests and reviews, under /api/v1.

Every call is authenticated (shared/identity.py: MLflow credentials that MLflow verifies, or
the trusted single-sign-on header); the name used is the one verified, never one sent in a body.
A vote is recorded in the ledger, then handed to the workers, which act on it through the
decision pipeline (the Nth approval promotes there, after the checks pass again). The webhook
routes do none of this: they stay lean.

Answers: 200/202 done; 400 a bad body; 401 not signed in; 403 refused (not a reviewer, your own
request or version); 404 nothing pending; 409 already decided, expired or voted otherwise; 503
MLflow, the ledger or the queue did not answer (try again).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from flask import Blueprint, Response, jsonify, request

from shared.errors import GateError, MlflowNotFound, PermanentError, TransientError
from shared.events import RegistryKind
from shared.identity import Identities, Identity, IdentityUnavailable, NotSignedIn
from shared.ledger import Ledger, LedgerError, LedgerUnavailable, Verdict
from shared.policy import Target
from shared.queue import Publish
from shared.voting import Refused, cast, comment_of, reviews_for

log = logging.getLogger(__name__)

Answer = tuple[Response, int]
Registries = Callable[[RegistryKind], Any]  # a registry with `ask` (worker/registry.py)


def api_blueprint(
    identities: Identities,
    ledger: Callable[[], Ledger],
    registry: Registries,
    publish: Publish,
    clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
) -> Blueprint:
    api = Blueprint("api_v1", __name__, url_prefix="/api/v1")

    def who() -> Identity:
        return identities.of_request(dict(request.headers), request.remote_addr)

    @api.get("/whoami")
    def whoami() -> Answer:
        person = who()
        return jsonify(user=person.name, is_admin=person.is_admin, via=person.via), 200

    @api.get("/reviews")
    def list_reviews() -> Answer:
        person = who()
        mine = request.args.get("mine", "").lower() in ("1", "true", "yes")
        shown = reviews_for(person, ledger(), identities.roles_of, clock(), mine=mine)
        return jsonify(reviews=shown, user=person.name), 200

    @api.post("/reviews")
    def review() -> Answer:
        person = who()
        body = _body()
        model, version, target, kind = _subject(body)
        verdict_text = str(body.get("verdict") or "").strip().lower()
        if verdict_text not in ("approve", "reject"):
            raise Refused(400, "bad_request", "'verdict' must be approve or reject")
        subject = (kind, model, version, target)
        done = cast(person, ledger(), identities.roles_of, publish, subject,
                    Verdict(verdict_text), comment_of(body.get("comment")), clock())  # fmt: skip
        return jsonify(
            status="recorded", message=done.message, queued=done.queued, review=done.review
        ), 200

    @api.post("/requests")
    def ask() -> Answer:
        person = who()
        body = _body()
        model, version, target, kind = _subject(body)
        comment = comment_of(body.get("comment"))
        book = ledger()
        asked = book.ask(kind, model, version, target.name, person.name, person.via, clock(),
                         comment)  # fmt: skip
        try:
            registry(kind).ask(model, version, target, person.name)
        except MlflowNotFound:
            raise Refused(
                404, "not_found", f"no version {version} of model {model!r} in the registry"
            ) from None
        except TransientError as exc:
            raise Refused(503, "unavailable", f"the registry did not answer: {exc}") from None
        except (PermanentError, GateError) as exc:
            raise Refused(400, "refused", str(exc)) from None
        message = (
            f"requested: {model} version {version} to {target.kind} {target}, by {person.name}; "
            "the gate decides it now (see `mlflow-gate explain "
            f"{model} {version}`)"
        )
        log.info("request %s: %s", asked.id, message)
        return jsonify(
            status="requested",
            message=message,
            request={
                "id": asked.id,
                "registry": kind.value,
                "model": model,
                "version": version,
                "target": target.name,
                "requested_by": person.name,
                "requested_at": asked.requested_at.isoformat(),
            },
        ), 202

    @api.errorhandler(Refused)
    def refused(exc: Refused) -> Answer:
        return _fail(exc.status, exc.code, str(exc))

    @api.errorhandler(NotSignedIn)
    def not_signed_in(exc: NotSignedIn) -> Answer:
        reply, status = _fail(401, "not_signed_in", str(exc))
        reply.headers["WWW-Authenticate"] = 'Basic realm="mlflow-gate"'
        return reply, status

    @api.errorhandler(IdentityUnavailable)
    def identity_down(exc: IdentityUnavailable) -> Answer:
        return _unavailable(str(exc))

    @api.errorhandler(LedgerUnavailable)
    def ledger_down(exc: LedgerUnavailable) -> Answer:
        log.warning("the ledger did not answer: %s", exc)
        return _unavailable("the gate's ledger did not answer; try again in a moment")

    @api.errorhandler(LedgerError)
    def ledger_wrong(exc: LedgerError) -> Answer:
        log.error("ledger: %s", exc)
        return _unavailable(f"the gate's ledger is not ready: {exc}")

    return api


def _body() -> dict[str, Any]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise Refused(400, "bad_request", "send a JSON object (Content-Type: application/json)")
    return body


def _subject(body: dict[str, Any]) -> tuple[str, str, Target, RegistryKind]:
    fields = {}
    for key in ("model", "version", "target"):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and key == "version":
            value = str(value)
        if not isinstance(value, str) or not value.strip():
            raise Refused(400, "bad_request", f"'{key}' is required (a non-empty string)")
        fields[key] = value.strip()
    if not fields["version"].isdigit():
        raise Refused(
            400, "bad_request", f"'version' must be a version number, not {fields['version']!r}"
        )
    try:
        kind = RegistryKind(str(body.get("registry") or RegistryKind.MLFLOW.value))
    except ValueError:
        known = ", ".join(k.value for k in RegistryKind)
        raise Refused(400, "bad_request", f"'registry' must be one of {known}") from None
    return fields["model"], fields["version"], Target.parse(fields["target"]), kind


def _fail(status: int, code: str, message: str) -> Answer:
    return jsonify(status=code, message=message), status


def _unavailable(message: str) -> Answer:
    reply, status = _fail(503, "unavailable", message)
    reply.headers["Retry-After"] = "5"
    return reply, status
