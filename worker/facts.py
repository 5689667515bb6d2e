"""Read from a registry, once each, the facts a decision needs."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from shared.errors import MlflowNotFound
from shared.evaluation import Facts, VersionFacts
from shared.policy import CompareRule, Policy, Target
from worker.registry import Registry


def gather(
    registry: Registry,
    candidate: VersionFacts,
    target: Target,
    policies: Sequence[Policy],
    *,
    now_ms: int,
    requested_by: str | None,
    approved: Callable[[Target], str | None],
) -> Facts:
    """The candidate, and what it is compared with for each target a compare_to rule names.

    `approved` says which version the gate approved for a target (its ledger). In a registry
    without aliases the holder of an alias is left unknown, so that a compare_to rule on it
    fails closed.
    """
    compared = {r.compare_to for p in policies for r in p.rules if isinstance(r, CompareRule)}
    holders: dict[Target, VersionFacts | None] = {}
    for other in sorted(compared, key=str):
        if not other.is_stage and not registry.has_aliases:
            continue
        holders[other] = baseline(registry, candidate, other, approved(other))
    return Facts(
        candidate=candidate,
        target=target,
        holders=holders,
        requested_by=requested_by,
        now_ms=now_ms,
    )


def baseline(
    registry: Registry, candidate: VersionFacts, target: Target, approved: str | None
) -> VersionFacts | None:
    """What `candidate` is compared with on `target`: the version the gate approved for it;
    without one (or if it was deleted), the registry's holder, unless that is the candidate
    itself: a version set on a target outside the gate is never compared with itself."""
    if approved == candidate.version:
        return candidate
    if approved is not None:
        try:
            return registry.version(candidate.model, approved)
        except MlflowNotFound:
            pass  # deleted since: compare with what holds the target now
    holder = registry.holder(candidate.model, target)
    if holder is None or holder == candidate.version:
        return None
    return registry.version(candidate.model, holder)
