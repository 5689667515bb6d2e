"""The seam: what a decision needs from a model registry, whichever it is.

Implementations live in worker/registries/, one module each: open-source MLflow over REST, a
workspace registry with transition requests, and an in-memory MLflow for unit tests. A new
registry (Unity Catalog, say) is a new module there, a value of shared.events.RegistryKind and
one line in `worker/registries/__init__.py`; the pipeline (worker/pipeline.py), the sweep, the
redrive and the commands do not change.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

from shared.errors import GateError
from shared.evaluation import Decision, VersionFacts
from shared.events import GateEvent, RegistryKind
from shared.policy import PolicySet, Target


@dataclass(frozen=True)
class Request:
    """A promotion someone asked for, as the registry shows it now."""

    candidate: VersionFacts
    target: Target
    requested_by: str | None  # None: the registry does not say who asked
    decided: bool = False  # the registry already shows a decision answering this request
    # True: the registry itself recorded who asked (a transition request's user), so it can be
    # trusted; False: anyone could have written it (a tag).
    requester_verified: bool = False


class RegistryRefused(GateError):
    """The registry cannot do what was asked through the gate (the message says what to do)."""


class RequestWithdrawn(GateError):
    """The request was withdrawn or decided by someone else while the gate was deciding it."""


class Registry(Protocol):
    kind: RegistryKind
    name: str  # for messages: "MLflow"
    has_aliases: bool  # False: only stages (a compare_to an alias is then unknown, fails closed)
    # How a version found on a governed target without the gate's approval is treated: False,
    # it is evaluated, kept if it passes and undone if not; True, it is a violation of the
    # registry's own approval process (reported, or moved back when a policy says revert).
    moves_outside_are_violations: bool

    def healthy(self) -> bool: ...

    def forget(self) -> None:
        """A new event is handled: forget what was read for earlier ones. A write the registry
        skips because it would change nothing must rest on what this event's decision read,
        never on an earlier read (another worker, or a person, may have written since)."""
        ...

    # -- facts -----------------------------------------------------------------------------
    def version(self, model: str, version: str) -> VersionFacts:
        """The version with its run's metrics and tags (a run that cannot be read is a problem
        recorded in the facts, never an error)."""
        ...

    def holder(self, model: str, target: Target) -> str | None:
        """Which version holds the target now: the alias's, or the newest in the stage."""
        ...

    def request(self, model: str, version: str, target: Target | None) -> Request | None:
        """The version's open request (to `target`, where the event names one); None if it
        has none any more."""
        ...

    def ask(self, model: str, version: str, target: Target, requested_by: str) -> None:
        """Open a request for the version to the target on the registry, on behalf of
        `requested_by` (whom the gate authenticated). RegistryRefused if the registry has its
        own way of asking (the user must ask there)."""
        ...

    # -- what the gate approved: its ledger remembers; the registry only shows it ----------
    def show_approval(self, model: str, target: Target, version: str) -> None:
        """Show engineers which version the gate approved for the target, where the registry
        shows it that way (a copy: the gate never reads it back)."""
        ...

    # -- acts ------------------------------------------------------------------------------
    def approve(self, request: Request, decision: Decision, archive: bool) -> str:
        """Carry out an approval; returns what was done, for the reason. May raise
        RequestWithdrawn."""
        ...

    def reject(self, request: Request, decision: Decision) -> str:
        """Carry out a rejection (nothing moves); returns what was done, or ""."""
        ...

    def put(self, model: str, target: Target, version: str, *, archive: bool, note: str) -> None:
        """Put the version on the target (a guard's restore, an operator's rollback)."""
        ...

    def take_off(
        self, model: str, target: Target, version: str, *, back_to: str | None, note: str
    ) -> str:
        """Take the version off the target (remove the alias; move it back to `back_to`, a
        stage); returns what was done."""
        ...

    def show(self, model: str, version: str, tags: Mapping[str, str]) -> None:
        """Show a decision to engineers on the version (its governance.* tags), where the
        registry shows decisions that way."""
        ...

    # -- the sweep -------------------------------------------------------------------------
    def sweep(self, policies: PolicySet) -> Iterator[GateEvent]:
        """Events for what lost webhooks may have left owed: undecided requests, and the
        holders of governed targets (the pipeline keeps those the ledger does not show
        approved)."""
        ...
