"""Read from a registry, once each, the facts a decision needs."""

from __future__ import annotations

from collections.abc import Sequence

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
) -> Facts:
    """The candidate, and the current holder of each target a compare_to rule names.

    In a registry without aliases the holder of an alias is left unknown, so that a compare_to
    rule on it fails closed.
    """
    compared = {r.compare_to for p in policies for r in p.rules if isinstance(r, CompareRule)}
    holders: dict[Target, VersionFacts | None] = {}
    for other in sorted(compared, key=str):
        if not other.is_stage and not registry.has_aliases:
            continue
        holder = registry.holder(candidate.model, other)
        if holder is None:
            holders[other] = None
        elif holder == candidate.version:
            holders[other] = candidate
        else:
            holders[other] = registry.version(candidate.model, holder)
    return Facts(
        candidate=candidate,
        target=target,
        holders=holders,
        requested_by=requested_by,
        now_ms=now_ms,
    )
