"""Reviews as a signed-in person sees and answers them: the rules the HTTP API (receiver/api.py)
and the console (console/) both follow, so that neither can be used to get around the other.

The person is always an identity the gate verified (shared/identity.py), never a name typed in.
A vote is recorded in the ledger, then handed to the workers as an event; the Nth approval
promotes there, in the decision pipeline, after the checks pass again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared.errors import GateError
from shared.events import GateEvent, Kind, Origin, RegistryKind
from shared.identity import Identity
from shared.ledger import Ledger, Verdict, Vote
from shared.policy import Target
from shared.queue import Publish
from shared.review import Pending, State, refusal, summary, tally

log = logging.getLogger(__name__)

MAX_COMMENT = 2000
RolesOf = Callable[[str], set[str]]


class Refused(GateError):
    """What was asked cannot be done; `status` is the HTTP status that says why (400 a bad
    request, 403 not allowed, 404 nothing there, 409 already decided or voted otherwise, 503
    try again), `code` a short machine-readable word."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


@dataclass(frozen=True)
class Cast:
    """A vote as recorded: the review as it stands now, and what happens next."""

    vote: Vote
    new: bool  # False: the same vote was already recorded (nothing changed)
    queued: bool  # False: the queue did not take the vote's event (the sweep acts on it)
    review: dict[str, Any]  # shared.review.summary of the review after the vote
    message: str


def reviews_for(
    person: Identity,
    book: Ledger,
    roles_of: RolesOf,
    now: datetime,
    *,
    mine: bool = False,
) -> list[dict[str, Any]]:
    """Every pending review (oldest first) as `summary` shows it, with `you_may_review` and
    `why_not` for `person`; with `mine`, only those `person` may vote on."""
    roles: set[str] | None = None

    def person_roles(name: str) -> set[str]:
        nonlocal roles
        if roles is None:
            roles = roles_of(name)
        return roles

    shown: list[dict[str, Any]] = []
    for review in book.open_reviews():
        votes = book.votes(review.id)
        pending = Pending.from_facts(review.facts, review.decided_at)
        why_not = refusal(person.name, pending, votes, now, person_roles)
        if why_not is None and any(v.reviewer == person.name for v in votes):
            why_not = "you already voted on this review"
        if mine and why_not is not None:
            continue
        shown.append({**summary(review, votes, now), "you_may_review": why_not is None,
                      "why_not": why_not})  # fmt: skip
    return shown


def comment_of(raw: object) -> str | None:
    """A vote's comment: stripped, at most MAX_COMMENT characters; None when empty."""
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise Refused(400, "bad_request", "'comment' must be a string")
    text = raw.strip()
    if len(text) > MAX_COMMENT:
        raise Refused(400, "bad_request", f"'comment' is over {MAX_COMMENT} characters")
    return text or None


def cast(
    person: Identity,
    book: Ledger,
    roles_of: RolesOf,
    publish: Publish,
    subject: tuple[RegistryKind, str, str, Target],
    verdict: Verdict,
    comment: str | None,
    now: datetime,
) -> Cast:
    """Record `person`'s verdict on the review pending for `subject` (registry, model, version,
    target) and hand it to the workers. Refused (with the reason) when it may not be cast."""
    kind, model, version, target = subject
    if verdict is Verdict.REJECT and not comment:
        raise Refused(400, "bad_request", "a rejection needs a comment saying why")
    open_review = book.open_review(kind, model, target.name)
    if open_review is None or open_review.version != version:
        raise _nothing_pending(book, kind, model, version, target)
    pending = Pending.from_facts(open_review.facts, open_review.decided_at)
    votes = book.votes(open_review.id)
    earlier = [v for v in votes if v.reviewer == person.name]
    if earlier and earlier[0].verdict is not verdict:
        raise Refused(
            409,
            "already_voted",
            f"you already voted {earlier[0].verdict.value} on this review; a vote is final",
        )
    if not earlier:
        why_not = refusal(person.name, pending, votes, now, roles_of)
        if why_not is not None:
            state = tally(pending, votes, now).state
            raise Refused(403 if state is State.PENDING else 409, "refused", f"refused: {why_not}")
    vote, new = book.vote(open_review.id, person.name, verdict, comment, person.via, now)
    queued = _hand_over(publish, vote, open_review.registry, model, version, target)
    shown = summary(open_review, book.votes(open_review.id), now)
    message = _vote_message(vote, new, shown, queued)
    log.info("review %s: %s", open_review.id, message)
    return Cast(vote, new, queued, shown, message)


def _nothing_pending(
    book: Ledger, kind: RegistryKind, model: str, version: str, target: Target
) -> Refused:
    last = book.latest(kind, model, version, target.name)
    if last is not None:
        return Refused(
            409,
            "already_decided",
            f"no review is pending for {model} version {version} to {target}: already decided, "
            f"{last.outcome.value} (decision {last.id}): {last.reason}",
        )
    return Refused(
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
