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
from shared.events import GateEvent, Kind, Origin, RegistryKind
from shared.identity import Identities, Identity, IdentityUnavailable, NotSignedIn
from shared.ledger import Ledger, LedgerError, LedgerUnavailable, Verdict, Vote
from shared.policy import Target
from shared.queue import Publish
from shared.review import Pending, State, refusal, summary, tally

log = logging.getLogger(__name__)

Answer = tuple[Response, int]
Registries = Callable[[RegistryKind], Any]  # a registry with `ask` (worker/registry.py)

_MAX_COMMENT = 2000


class _Refused(GateError):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


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
        now = clock()
        shown: list[dict[str, Any]] = []
        roles: set[str] | None = None

        def roles_of(name: str) -> set[str]:
            nonlocal roles
            if roles is None:
                roles = identities.roles_of(name)
            return roles

        book = ledger()
        for review in book.open_reviews():
            votes = book.votes(review.id)
            pending = Pending.from_facts(review.facts, review.decided_at)
            why_not = refusal(person.name, pending, votes, now, roles_of)
            if why_not is None and any(v.reviewer == person.name for v in votes):
                why_not = "you already voted on this review"
            if mine and why_not is not None:
                continue
            shown.append({**summary(review, votes, now), "you_may_review": why_not is None,
                          "why_not": why_not})  # fmt: skip
        return jsonify(reviews=shown, user=person.name), 200

    @api.post("/reviews")
    def review() -> Answer:
        person = who()
        body = _body()
        model, version, target, kind = _subject(body)
        verdict_text = str(body.get("verdict") or "").strip().lower()
        if verdict_text not in ("approve", "reject"):
            raise _Refused(400, "bad_request", "'verdict' must be approve or reject")
        verdict = Verdict(verdict_text)
        comment = _comment(body)
        if verdict is Verdict.REJECT and not comment:
            raise _Refused(400, "bad_request", "a rejection needs a comment saying why")
        book = ledger()
        open_review = book.open_review(kind, model, target.name)
        if open_review is None or open_review.version != version:
            raise _nothing_pending(book, kind, model, version, target)
        pending = Pending.from_facts(open_review.facts, open_review.decided_at)
        votes = book.votes(open_review.id)
        now = clock()
        earlier = [v for v in votes if v.reviewer == person.name]
        if earlier and earlier[0].verdict is not verdict:
            raise _Refused(
                409,
                "already_voted",
                f"you already voted {earlier[0].verdict.value} on this review; a vote is final",
            )
        if not earlier:
            why_not = refusal(person.name, pending, votes, now, identities.roles_of)
            if why_not is not None:
                state = tally(pending, votes, now).state
                status = 403 if state is State.PENDING else 409
                raise _Refused(status, "refused", f"refused: {why_not}")
        vote, new = book.vote(open_review.id, person.name, verdict, comment, person.via, now)
        queued = _hand_over(publish, vote, open_review.registry, model, version, target)
        votes = book.votes(open_review.id)
        shown = summary(open_review, votes, now)
        message = _vote_message(vote, new, shown, queued)
        log.info("review %s: %s", open_review.id, message)
        return jsonify(status="recorded", message=message, queued=queued, review=shown), 200

    @api.post("/requests")
    def ask() -> Answer:
        person = who()
        body = _body()
        model, version, target, kind = _subject(body)
        comment = _comment(body)
        book = ledger()
        asked = book.ask(kind, model, version, target.name, person.name, person.via, clock(),
                         comment)  # fmt: skip
        try:
            registry(kind).ask(model, version, target, person.name)
        except MlflowNotFound:
            raise _Refused(
                404, "not_found", f"no version {version} of model {model!r} in the registry"
            ) from None
        except TransientError as exc:
            raise _Refused(503, "unavailable", f"the registry did not answer: {exc}") from None
        except (PermanentError, GateError) as exc:
            raise _Refused(400, "refused", str(exc)) from None
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

    @api.errorhandler(_Refused)
    def refused(exc: _Refused) -> Answer:
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
        raise _Refused(400, "bad_request", "send a JSON object (Content-Type: application/json)")
    return body


def _subject(body: dict[str, Any]) -> tuple[str, str, Target, RegistryKind]:
    fields = {}
    for key in ("model", "version", "target"):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and key == "version":
            value = str(value)
        if not isinstance(value, str) or not value.strip():
            raise _Refused(400, "bad_request", f"'{key}' is required (a non-empty string)")
        fields[key] = value.strip()
    if not fields["version"].isdigit():
        raise _Refused(
            400, "bad_request", f"'version' must be a version number, not {fields['version']!r}"
        )
    try:
        kind = RegistryKind(str(body.get("registry") or RegistryKind.MLFLOW.value))
    except ValueError:
        known = ", ".join(k.value for k in RegistryKind)
        raise _Refused(400, "bad_request", f"'registry' must be one of {known}") from None
    return fields["model"], fields["version"], Target.parse(fields["target"]), kind


def _comment(body: dict[str, Any]) -> str | None:
    comment = body.get("comment")
    if comment is None:
        return None
    if not isinstance(comment, str):
        raise _Refused(400, "bad_request", "'comment' must be a string")
    text = comment.strip()
    if len(text) > _MAX_COMMENT:
        raise _Refused(400, "bad_request", f"'comment' is over {_MAX_COMMENT} characters")
    return text or None


def _nothing_pending(
    book: Ledger, kind: RegistryKind, model: str, version: str, target: Target
) -> _Refused:
    last = book.latest(kind, model, version, target.name)
    if last is not None:
        return _Refused(
            409,
            "already_decided",
            f"no review is pending for {model} version {version} to {target}: already decided, "
            f"{last.outcome.value} (decision {last.id}): {last.reason}",
        )
    return _Refused(
        404,
        "not_found",
        f"no review is pending for {model} version {version} to {target}: the gate has no "
        "decision on it (was the promotion requested?)",
    )


def _hand_over(
    publish: Publish, vote: Vote, kind: RegistryKind, model: str, version: str, target: Target
) -> bool:
    """Send the vote's event to the workers; False if the queue refused it (the vote stands:
    the periodic sweep acts on a review it decides)."""
    event = GateEvent(
        event_id=f"vote-{vote.id}",
        registry=kind,
        origin=Origin.REVIEW,
        kind=Kind.REQUEST,
        model=model,
        version=version,
        target=target.name,
        received_at=vote.cast_at.timestamp(),
        webhook_event=f"review.{vote.verdict.value}",
    )
    try:
        publish(event.to_dict())
    except Exception as exc:  # kombu and redis raise many kinds
        log.warning("vote %s recorded but not queued (%s): the sweep acts on it", vote.id, exc)
        return False
    return True


def _vote_message(vote: Vote, new: bool, review: dict[str, Any], queued: bool) -> str:
    verb = "approved" if vote.verdict is Verdict.APPROVE else "rejected"
    head = f"{vote.reviewer} {verb}" if new else f"{vote.reviewer} had already {verb}"
    subject = f"{review['model']} version {review['version']} for {review['target']}"
    count = f"{len(review['approvals'])} of {review['approvals_needed']} approvals"
    if vote.verdict is Verdict.REJECT:
        what = "the gate rejects it now"
    elif len(review["approvals"]) >= review["approvals_needed"]:
        what = "enough approvals: the gate promotes it now, once the checks pass again"
    else:
        what = "waiting for more approvals"
    later = "" if queued else " (the queue did not answer: the next sweep acts on it)"
    return f"{head} {subject} ({count}); {what}{later}"


def _fail(status: int, code: str, message: str) -> Answer:
    return jsonify(status=code, message=message), status


def _unavailable(message: str) -> Answer:
    reply, status = _fail(503, "unavailable", message)
    reply.headers["Retry-After"] = "5"
    return reply, status
