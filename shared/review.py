"""Human review, as pure functions: who asked and who created (as far as the gate knows), who
may review, and where a review stands. No I/O: the worker and the HTTP API give the facts.

A review is a decision with outcome pending_review in the ledger; its `facts["review"]` holds
what the covering policies asked (shared.policy.ReviewNeed), when it expires, the requester and
the creator. Reviewers' votes are rows of their own (shared.ledger Vote).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum
from typing import Any

from shared.ledger.records import RecordedDecision, Verdict, Vote
from shared.policy import ReviewNeed

# How the gate knows who asked for a promotion.
BY_GATE = "gate"  # requested through the gate (`mlflow-gate request`, POST /api/v1/requests)
BY_REGISTRY = "registry"  # the registry's own transition request, which records its user
BY_TAG = "tag"  # the governance.requested_by tag: anyone may write it, so it proves nothing
UNKNOWN = "unknown"  # the governance.request tag alone: nobody is named

_SAYS = {
    BY_GATE: "authenticated by the gate (requested through it)",
    BY_REGISTRY: "recorded by the registry on its transition request",
    BY_TAG: "named by the governance.requested_by tag, which is not verified",
    UNKNOWN: "unknown: the request was made by setting the governance.request tag",
}


@dataclass(frozen=True)
class Person:
    """Someone the review must know about (requester, creator), and how the gate knows."""

    name: str | None
    source: str  # requester: gate | registry | tag | unknown; creator: registry | run | unknown

    @property
    def verified(self) -> bool:
        return self.name is not None and self.source in (BY_GATE, BY_REGISTRY)

    def says(self, role: str) -> str:
        """E.g. "requested by alice (authenticated by the gate (requested through it))"."""
        if role == "created":
            if self.name is None:
                return "creator unknown (the registry recorded no user and the run no mlflow.user)"
            where = "the registry" if self.source == "registry" else "the run's mlflow.user tag"
            return f"created by {self.name} (according to {where})"
        if self.name is None:
            return f"requester {_SAYS[UNKNOWN]}"
        return f"requested by {self.name} ({_SAYS.get(self.source, self.source)})"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "source": self.source, "verified": self.verified}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Person:
        data = data or {}
        name = data.get("name")
        return cls(str(name) if name else None, str(data.get("source") or UNKNOWN))


@dataclass(frozen=True)
class Pending:
    """A pending review as its decision recorded it."""

    need: ReviewNeed
    opened_at: datetime
    requester: Person
    creator: Person

    @property
    def expires_at(self) -> datetime | None:
        seconds = self.need.expires_after_seconds
        return self.opened_at + timedelta(seconds=seconds) if seconds is not None else None

    def to_dict(self) -> dict[str, Any]:
        expires = self.expires_at
        return {
            **self.need.to_dict(),
            "opened_at": self.opened_at.isoformat(),
            "expires_at": expires.isoformat() if expires is not None else None,
            "requester": self.requester.to_dict(),
            "creator": self.creator.to_dict(),
        }

    @classmethod
    def from_facts(cls, facts: Mapping[str, Any], opened_at: datetime) -> Pending:
        review = facts.get("review")
        if not isinstance(review, Mapping):
            raise ValueError("the decision records no review")
        return cls(
            need=ReviewNeed.from_dict(dict(review)),
            opened_at=opened_at,
            requester=Person.from_dict(review.get("requester")),
            creator=Person.from_dict(review.get("creator")),
        )


class State(str, Enum):
    PENDING = "pending"  # fewer approvals than needed, nothing against it
    APPROVED = "approved"  # enough distinct approvals
    REJECTED = "rejected"  # a reviewer rejected it
    EXPIRED = "expired"  # not enough approvals before it expired


@dataclass(frozen=True)
class Tally:
    state: State
    approvals: tuple[Vote, ...]  # the approvals that count (cast before expiry)
    rejection: Vote | None
    needed: int

    @property
    def reviewers(self) -> list[str]:
        return [v.reviewer for v in self.approvals]


def tally(pending: Pending, votes: Sequence[Vote], now: datetime) -> Tally:
    """Where a review stands: a rejection rejects; enough approvals cast before expiry approve;
    past expiry without them it expired; else it waits."""
    expires = pending.expires_at
    counted = tuple(
        v
        for v in votes
        if v.verdict is Verdict.APPROVE and (expires is None or v.cast_at <= expires)
    )
    rejections = [v for v in votes if v.verdict is Verdict.REJECT]
    needed = pending.need.approvals
    if rejections:
        return Tally(State.REJECTED, counted, rejections[0], needed)
    if len(counted) >= needed:
        return Tally(State.APPROVED, counted, None, needed)
    if expires is not None and now > expires:
        return Tally(State.EXPIRED, counted, None, needed)
    return Tally(State.PENDING, counted, None, needed)


def refusal(
    reviewer: str,
    pending: Pending,
    votes: Sequence[Vote],
    now: datetime,
    roles_of: Callable[[str], set[str]],
) -> str | None:
    """Why `reviewer` may not vote on this review, or None if they may. Nobody reviews a
    promotion they asked for or a version they created; each policy that says who may review
    must allow them (named, or a member of its role); a review that is over takes no votes.
    `roles_of` is asked only when a policy's role is what could allow them."""
    state = tally(pending, votes, now).state
    if state is State.EXPIRED:
        return "the review expired: it takes no more votes (the next sweep rejects it)"
    if state is not State.PENDING:
        return f"the review is already decided ({state.value}): it takes no more votes"
    if pending.requester.name is not None and pending.requester.name == reviewer:
        how = _SAYS.get(pending.requester.source, pending.requester.source)
        return f"you requested this promotion ({how}): nobody approves their own request"
    if pending.creator.name is not None and pending.creator.name == reviewer:
        return (
            f"you created this version ({pending.creator.says('created')}): nobody approves "
            "their own model"
        )
    roles: set[str] | None = None
    for policy, names, role in pending.need.gates:
        if reviewer in names:
            continue
        if role is not None:
            if roles is None:
                roles = roles_of(reviewer)
            if role in roles:
                continue
        allowed = [f"reviewers {', '.join(names)}" if names else "", f"role {role}" if role else ""]
        who = " or ".join(a for a in allowed if a)
        return f"you are not a reviewer for policy '{policy}' (it allows {who})"
    return None


def summary(review: RecordedDecision, votes: Sequence[Vote], now: datetime) -> dict[str, Any]:
    """A pending review as the API, the CLI and the console show it."""
    pending = Pending.from_facts(review.facts, review.decided_at)
    result = tally(pending, votes, now)
    expires = pending.expires_at
    return {
        "id": review.id,
        "registry": review.registry.value,
        "model": review.model,
        "version": review.version,
        "target": review.target,
        "target_kind": review.target_kind.value,
        "state": result.state.value,
        "opened_at": review.decided_at.isoformat(),
        "expires_at": expires.isoformat() if expires is not None else None,
        "approvals_needed": pending.need.approvals,
        "approvals": result.reviewers,
        "reviewers_allowed": [
            {"policy": name, "reviewers": list(names), "role": role}
            for name, names, role in pending.need.gates
        ],
        "votes": [
            {
                "reviewer": v.reviewer,
                "verdict": v.verdict.value,
                "comment": v.comment,
                "cast_at": v.cast_at.isoformat(),
            }
            for v in votes
        ],
        "requester": {**pending.requester.to_dict(), "says": pending.requester.says("requested")},
        "creator": {**pending.creator.to_dict(), "says": pending.creator.says("created")},
        "policies": list(review.policies),
        "checks": [c.to_dict() for c in review.checks],
        "reason": review.reason,
    }
