"""One decision pipeline for every registry: event → registry → facts → evaluate → act → record.

Nothing here trusts an event beyond the model, version and target it names: each step reads the
registry's current state, so a duplicate or late event changes nothing twice.

- A request (Kind.REQUEST) is decided: the registry's open request is evaluated against every
  covering policy, then approved (the gate's approval noted first) or rejected. A request no
  longer open is recorded as skipped, except for an event of the sweep (decided meanwhile).
- A move (an alias set or deleted, a stage transition) is guarded: a governed target held by a
  version the gate did not approve is evaluated, kept if it passes and undone if not; in a
  registry whose moves outside its approval process are violations, it is reported, or moved
  back when a covering policy says `on_violation: revert`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime, timezone

from shared.errors import MlflowNotFound
from shared.evaluation import Decision, evaluate
from shared.events import GateEvent, Kind, Origin
from shared.outcomes import Outcome
from shared.policy import Policy, PolicySet, Target, archive_existing, reverts_violations
from worker.decisions import DecisionLog, Record, record
from worker.facts import gather
from worker.metrics import VIOLATIONS
from worker.registries import Registries
from worker.registry import Registry, RequestWithdrawn

log = logging.getLogger(__name__)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Pipeline:
    def __init__(
        self,
        registries: Registries,
        policies: PolicySet,
        decisions: DecisionLog,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.registries = registries
        self.policies = policies
        self.decisions = decisions
        self.clock = clock

    def handle(self, event: GateEvent) -> str:
        """Reconcile the event's subject; returns what was done, for the log."""
        registry = self.registries.get(event.registry)
        if event.kind is Kind.REQUEST and event.version is not None:
            return self.decide(registry, event, event.version)
        if event.kind is not Kind.REQUEST and event.target:
            return self.guard(registry, event, event.target)
        return f"nothing to do for {event.kind.value} without a version or target"

    # -- requests --------------------------------------------------------------------------
    def decide(self, registry: Registry, event: GateEvent, version: str) -> str:
        model = event.model
        asked = Target.parse(event.target) if event.target else None
        request = registry.request(model, version, asked)
        if request is None or (event.origin is Origin.SWEEP and request.decided):
            return self._not_open(registry, event, version, asked)
        target = request.target
        policies = self.policies.covering(model, target)
        facts = gather(
            registry,
            request.candidate,
            target,
            policies,
            now_ms=int(self.clock().timestamp() * 1000),
            requested_by=request.requested_by,
        )
        decision = evaluate(facts, policies)
        try:
            if decision.approved:
                registry.remember(model, target, version)  # before its own move's event
                done = registry.approve(request, decision, archive_existing(policies, target))
            else:
                done = registry.reject(request, decision)
        except RequestWithdrawn:
            return self._not_open(registry, event, version, target)
        outcome = Outcome.APPROVED if decision.approved else Outcome.REJECTED
        self._record(registry, event, version, decision, outcome, f"{decision.reason} {done}")
        return f"{model} v{version} {outcome.value} for {target}"

    def _not_open(
        self, registry: Registry, event: GateEvent, version: str, target: Target | None
    ) -> str:
        where = f" to {target}" if target else ""
        if event.origin is Origin.SWEEP:
            return f"{event.model} v{version}: its request{where} was decided meanwhile"
        reason = (
            f"The request of version {version}{where} is no longer open (approved, rejected or "
            "withdrawn by someone else): nothing done."
        )
        policies = self.policies.covering(event.model, target) if target else []
        decision = Decision.without_checks(target or Target("", False), _names(policies), reason)
        self._record(registry, event, version, decision, Outcome.SKIPPED, reason)
        return f"{event.model} v{version}: no open request{where}; nothing done"

    # -- moves -----------------------------------------------------------------------------
    def guard(self, registry: Registry, event: GateEvent, name: str) -> str:
        """Guard a governed target that was moved (by anyone, the gate included)."""
        model = event.model
        stage = event.kind is Kind.STAGE_TRANSITIONED
        target = Target.parse(name) if stage else Target(name, is_stage=False)
        policies = self.policies.covering(model, target)
        if not policies:
            return f"{target.kind} {target} of {model} is not governed by any policy"
        if registry.moves_outside_are_violations:
            return self._violation(registry, event, target, policies)
        holder = registry.holder(model, target)
        if holder is None:
            return f"{target.kind} {target} of {model} is not held: nothing to guard"
        approved = registry.approved(model, target)
        if holder == approved:
            return f"{target.kind} {target} of {model} is on v{holder}, which the gate approved"
        candidate = registry.version(model, holder)
        facts = gather(
            registry,
            candidate,
            target,
            policies,
            now_ms=int(self.clock().timestamp() * 1000),
            requested_by=None,
        )
        decision = evaluate(facts, policies)
        outside = (
            f"{target.kind.capitalize()} '{target}' was set on version {holder} outside the gate"
        )
        if decision.approved:
            registry.remember(model, target, holder)
            reason = f"{outside}; it passes the policy, so it is kept. {decision.reason}"
        else:
            undone = self._restore(registry, model, target, holder, approved)
            reason = f"{outside} and fails the policy, so {undone}. {decision.reason}"
        outcome = Outcome.APPROVED if decision.approved else Outcome.REJECTED
        self._record(registry, event, holder, decision, outcome, reason)
        verdict = "kept" if decision.approved else "reverted"
        return f"{target.kind} {target} of {model} set on v{holder} outside the gate: {verdict}"

    def _restore(
        self, registry: Registry, model: str, target: Target, holder: str, approved: str | None
    ) -> str:
        if approved is not None:
            note = f"put back on version {approved}: version {holder} fails the policy"
            try:
                registry.put(model, target, approved, archive=True, note=note)
            except MlflowNotFound:
                log.warning("%s v%s, approved for %s, is gone", model, approved, target)
            else:
                return (
                    f"the {target.kind} was put back on version {approved}, the last the gate "
                    "approved"
                )
        done = registry.take_off(model, target, holder, back_to=None, note="fails the policy")
        return f"{done} (no version approved by the gate to put it back on)"

    def _violation(
        self, registry: Registry, event: GateEvent, target: Target, policies: Sequence[Policy]
    ) -> str:
        model, version = event.model, event.version
        if version is None:
            return f"nothing to guard in {target} of {model} without a version"
        if registry.is_approved(model, target, version):
            return f"{model} v{version} moved to {target} with the gate's approval"
        if registry.version(model, version).stage != target.name:
            return f"{model} v{version} is no longer in {target}: nothing to guard"
        reason = (
            f"Violation: version {version} of {model} was moved to {target.kind} {target} "
            "outside the gate (no request approved by it)"
        )
        if reverts_violations(policies):
            note = (
                f"it was moved to {target} without the gate's approval (policy on_violation: "
                "revert). Request the transition instead."
            )
            done = registry.take_off(model, target, version, back_to=event.from_stage, note=note)
            reason += f"; {done} (on_violation: revert)."
            action = "reverted"
        else:
            reason += "; reported only (a policy with on_violation: revert would move it back)."
            action = "reported"
        VIOLATIONS.labels(registry.kind.value, target.name, action).inc()
        decision = Decision.without_checks(target, _names(policies), reason)
        self._record(registry, event, version, decision, Outcome.VIOLATION, reason)
        return f"{model} v{version} in {target} outside the gate: violation {action}"

    # -- record ----------------------------------------------------------------------------
    def _record(
        self,
        registry: Registry,
        event: GateEvent,
        version: str,
        decision: Decision,
        outcome: Outcome,
        reason: str,
    ) -> None:
        rec = Record(
            registry=registry.kind,
            model=event.model,
            version=version,
            decision=decision,
            outcome=outcome,
            reason=reason.strip(),
            event_id=event.event_id,
            origin=event.origin,
            decided_at=self.clock(),
        )
        record(registry, self.decisions, rec)
        log.info(
            "decision %s %s v%s for %s: %s",
            outcome.value,
            event.model,
            version,
            decision.target,
            rec.reason,
        )


def _names(policies: Sequence[Policy]) -> list[str]:
    return [p.name for p in policies]
