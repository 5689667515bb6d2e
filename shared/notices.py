"""What the gate tells other systems, as data: a notice is made where something happened (a
decision, a review) and handed to a `Notify`, which queues one delivery per sink that wants it.
Delivering (signing, HTTP, retries, dead letters) happens in the workers, never in a decision's
critical path."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class Notice:
    type: str  # one of shared.policy.NOTICE_TYPES
    # Stable for this notice: made again (a retried decision), it has the same key, so its
    # deliveries keep their ids and receivers can deduplicate. E.g. "decision-42".
    key: str
    at: datetime  # when it happened (aware)
    # The covering policies: their own sinks are notified besides the top-level ones.
    policies: tuple[str, ...]
    # model, version, target, outcome, reason, checks, policies, reviewers, links, ...
    data: Mapping[str, Any] = field(default_factory=dict)


Notify = Callable[[Notice], None]


def silent(notice: Notice) -> None:
    """A Notify for callers that send nothing (tests, one-off tools)."""
