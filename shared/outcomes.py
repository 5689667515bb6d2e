"""The one vocabulary of what a decision came to, recorded and counted everywhere alike."""

from __future__ import annotations

from enum import Enum


class Outcome(str, Enum):
    APPROVED = "approved"  # the policy passed; the gate moved (or kept) the version there
    REJECTED = "rejected"  # the policy failed; nothing moved (or the move was undone)
    SKIPPED = "skipped"  # nothing left to decide: the request was withdrawn or decided elsewhere
    VIOLATION = "violation"  # a version was moved into a governed target outside the gate
    ROLLED_BACK = "rolled_back"  # an operator moved the target back to an earlier approval
    # The automated checks passed and a policy asks for human review: nothing moved yet.
    PENDING_REVIEW = "pending_review"
    # A pending review replaced by a newer request for the same target: nothing moved.
    SUPERSEDED = "superseded"

    @property
    def shown_on_version(self) -> bool:
        """Outcomes written to the version's governance.* tags (the engineers' copy)."""
        return self in (
            Outcome.APPROVED,
            Outcome.REJECTED,
            Outcome.PENDING_REVIEW,
            Outcome.SUPERSEDED,
        )
