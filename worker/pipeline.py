"""One decision pipeline for every registry: event → registry → facts → evaluate → record → act.

The ledger (shared.ledger) is the gate's memory: which version it approved for each target, and
every decision. A decision is written there, with its plan (worker/steps.py), before anything
moves on the registry; then the plan is carried out and the decision marked done. So:

- a retried or redelivered event finishes what was decided instead of deciding again, and a
  decision with a newer one on the same target (the fence) never acts;
- nothing written in the registry (a tag, an alias) can make the gate believe it approved a
  version.

- A request (Kind.REQUEST) is decided: the registry's open request is evaluated against every
  covering policy, then approved or rejected. A request no longer open is recorded as skipped,
  except for an event of the sweep (decided meanwhile).
- A move (an alias set or deleted, a stage transition, a holder the sweep found) is guarded: a
  governed target held by a version the ledger does not show approved for it is evaluated
  against the version the gate approved before (never against itself), kept if it passes and
  undone if not; in a registry whose moves outside its approval process are violations, it is
  reported, or moved back when a covering policy says `on_violation: revert`.

`keep` is called before every write (to the ledger or the registry): the task passes a check
that its model lock is still held, so that two decisions never act on one model at once.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any

from shared.errors import MlflowNotFound, PermanentError
from shared.evaluation import Decision, Facts, VersionFacts, evaluate
from shared.events import GateEvent, Kind, Origin, RegistryKind
from shared.ledger import ActionState, Ledger, RecordedDecision, Verdict, Vote
from shared.notices import Notice, Notify, silent
from shared.outcomes import Outcome
from shared.policy import (
    Policy,
    PolicySet,
    ReviewNeed,
    Target,
    archive_existing,
    reverts_violations,
    review_need,
)
from shared.review import BY_GATE, BY_REGISTRY, BY_TAG, UNKNOWN, Pending, Person, State, tally
from worker.decisions import Record, decision_of, evaluated, target_of, version_tags
from worker.facts import gather
from worker.metrics import DECISIONS, VIOLATIONS
from worker.registries import Registries
from worker.registry import Registry, Request, RequestWithdrawn
from worker.steps import Do, Step, carry_out, plan_facts, plan_of

log = logging.getLogger(__name__)

Keep = Callable[[], None]
# Links to show a version in other systems (MLflow's UI, the console), for notifications.
Links = Callable[[str, str], dict[str, str]]

# Events that stand for an event owed, not a new request: the sweep's, and replays (of dead
# letters): they decide a request only if the ledger has not decided it already.
_OWED_ONLY = (Origin.SWEEP, Origin.REPLAY)

# The policy name an operator's rollback is recorded under (no policy is evaluated).
ROLLBACK_POLICY = "operator-rollback"


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _unguarded() -> None:
    """For callers that hold no lock (tests, one-off tools)."""


def _no_links(model: str, version: str) -> dict[str, str]:
    return {}


@dataclass(frozen=True)
class _Turn:
    """One event being handled."""

    registry: Registry
    event: GateEvent
    keep: Keep


class Pipeline:
    def __init__(
        self,
        registries: Registries,
        policies: PolicySet,
        ledger: Ledger,
        clock: Callable[[], datetime] = utcnow,
        notify: Notify = silent,
        links: Links = _no_links,
    ) -> None:
        self.registries = registries
        self.policies = policies
        self.ledger = ledger
        self.clock = clock
        self.notify = notify
        self.links = links

    def handle(self, event: GateEvent, keep: Keep = _unguarded) -> str:
        """Reconcile the event's subject; returns what was done, for the log."""
        turn = _Turn(self.registries.get(event.registry), event, keep)
        turn.registry.forget()  # what this event's decision skips writing rests on its own reads
        earlier = [  # a decision that failed for good is decided again (a replay, once fixed)
            d
            for d in self.ledger.for_event(event.event_id)
            if d.action_state is not ActionState.FAILED
        ]
        unfinished = [
            d for d in earlier if d.action_state is ActionState.PENDING and d.superseded_by is None
        ]
        if unfinished:
            return "; ".join(self._finish(turn, d, None) for d in unfinished)
        if earlier:
            last = earlier[-1]
            return f"already decided (decision {last.id}, {last.outcome.value}): nothing to do"
        if event.kind is Kind.REQUEST and event.version is not None:
            return self.decide(turn, event.version)
        if event.kind is not Kind.REQUEST and event.target:
            return self.guard(turn, event.target)
        return f"nothing to do for {event.kind.value} without a version or target"

    def owed(self, event: GateEvent) -> bool:
        """Whether an event the sweep found needs handling: a request the ledger has no
        decision on, a holder the ledger does not show approved."""
        if event.version is None:
            return True
        if event.kind is Kind.REQUEST:
            if not event.target:
                return True  # the registry says which target when the event is handled
            target = Target.parse(event.target)
            return not self.ledger.decided(event.registry, event.model, event.version, target.name)
        if not event.target:
            return True
        target = _target(event, event.target)
        return not self._approved(event.registry, event.model, target, event.version)

    def _decided(self, turn: _Turn, request: Request) -> bool:
        """A request the sweep found is decided if the registry shows a decision answering it,
        or the ledger has one (a decision whose recording on the registry failed, or that a
        newer one superseded, must not be taken again)."""
        if request.decided:
            return True
        candidate = request.candidate
        return self.ledger.decided(
            turn.registry.kind, candidate.model, candidate.version, request.target.name
        )

    # -- requests --------------------------------------------------------------------------
    def decide(self, turn: _Turn, version: str) -> str:
        registry, event = turn.registry, turn.event
        model = event.model
        asked = Target.parse(event.target) if event.target else None
        request = registry.request(model, version, asked)
        if request is None or (event.origin in _OWED_ONLY and self._decided(turn, request)):
            return self._not_open(turn, version, asked)
        target = request.target
        review = self.ledger.open_review(registry.kind, model, target.name)
        if event.origin is Origin.REVIEW and (review is None or review.version != version):
            return f"{model} v{version}: no review pending for {target} any more: nothing to do"
        if review is not None and review.version != version:
            self._supersede_review(turn, review, version)  # a new request for the target
            review = None
        policies = self.policies.covering(model, target)
        requester = self._requester(registry.kind, request, review)
        facts = self._facts(registry, request.candidate, target, policies, requester.name)
        decision = evaluate(facts, policies)
        need = review_need(policies)
        if decision.approved and need is not None:
            return self._review(turn, request, facts, decision, need, requester, review)
        if decision.approved:
            plan = [Step(Do.APPROVE, version, archive=archive_existing(policies, target))]
            notices = ["decision.approved"]
        else:
            plan = [Step(Do.REJECT, version)]
            notices = ["decision.rejected"]
        outcome = Outcome.APPROVED if decision.approved else Outcome.REJECTED
        rec = self._record(
            turn,
            version,
            decision,
            outcome,
            decision.reason,
            facts,
            plan,
            notices=notices,
            closes=review,
        )
        return self._act(turn, replace(rec, requested_by=requester.name), request)

    # -- human review ----------------------------------------------------------------------
    def _review(
        self,
        turn: _Turn,
        request: Request,
        facts: Facts,
        decision: Decision,
        need: ReviewNeed,
        requester: Person,
        review: RecordedDecision | None,
    ) -> str:
        """The automated checks pass and a covering policy asks for human review: ask for it,
        or, on a review pending for this version, act on where it stands."""
        version, target, model = request.candidate.version, decision.target, turn.event.model
        if review is None:
            creator = Person(facts.candidate.created_by, facts.candidate.created_by_source or "")
            pending = Pending(need, self.clock(), requester, creator)
            reason = _asked_for_review(pending, model, version, target, decision)
            rec = self._record(
                turn,
                version,
                decision,
                Outcome.PENDING_REVIEW,
                reason,
                facts,
                (),
                notices=["review.requested"],
                extra={"review": pending.to_dict()},
            )
            return self._act(turn, replace(rec, requested_by=requester.name), request)
        pending = Pending.from_facts(review.facts, review.decided_at)
        votes = self.ledger.votes(review.id)
        result = tally(pending, votes, self.clock())
        if turn.event.origin is Origin.REVIEW:
            self._vote_notice(turn, review, pending, votes)
        if result.state is State.PENDING:
            return (
                f"{model} v{version} waits for review for {target}: {len(result.approvals)} of "
                f"{result.needed} approvals"
            )
        notices = ["decision.rejected"]
        plan = [Step(Do.REJECT, version)]
        outcome = Outcome.REJECTED
        if result.state is State.APPROVED:
            reason = (
                f"Approved by reviewers {', '.join(result.reviewers)} ({len(result.approvals)} of "
                f"{result.needed} approvals needed), the automated checks passing again at "
                f"promotion. {decision.reason}"
            )
            policies = self.policies.covering(model, target)
            plan = [Step(Do.APPROVE, version, archive=archive_existing(policies, target))]
            notices, outcome = ["decision.approved"], Outcome.APPROVED
        elif result.state is State.REJECTED and result.rejection is not None:
            vote = result.rejection
            reason = f"Rejected by reviewer {vote.reviewer}: {vote.comment or '(no comment)'}"
        else:
            expires = pending.expires_at
            when = expires.isoformat(timespec="seconds") if expires else "?"
            reason = (
                f"Rejected: the review expired at {when} with {len(result.approvals)} of "
                f"{result.needed} approvals needed. Request the promotion again to start a new "
                "review."
            )
            notices = ["review.expired", "decision.rejected"]
        summary = {**pending.to_dict(), "votes": [_vote_dict(v) for v in votes]}
        rec = self._record(
            turn,
            version,
            decision,
            outcome,
            reason,
            facts,
            plan,
            notices=notices,
            extra={"review": summary},
            closes=review,
        )
        return self._act(turn, replace(rec, requested_by=requester.name), request)

    def _vote_notice(
        self, turn: _Turn, review: RecordedDecision, pending: Pending, votes: Sequence[Vote]
    ) -> None:
        """`review.approved` for the vote this event carries (event id `vote-<id>`)."""
        event = turn.event
        cast = [v for v in votes if f"vote-{v.id}" == event.event_id]
        if not cast or cast[0].verdict is not Verdict.APPROVE:
            return
        approvals = [v.reviewer for v in votes if v.verdict is Verdict.APPROVE]
        data = self._notice_data(review, review.reason)
        data.update(
            reviewer=cast[0].reviewer,
            comment=cast[0].comment,
            reviewers=approvals,
            approvals=len(approvals),
            approvals_needed=pending.need.approvals,
        )
        turn.keep()
        self.notify(
            Notice("review.approved", event.event_id, cast[0].cast_at, review.policies, data)
        )

    def _supersede_review(self, turn: _Turn, review: RecordedDecision, newer: str) -> None:
        """A new request for the same target replaces the review pending there: its version is
        shown superseded, and its votes do not carry over."""
        target = target_of(review)
        reason = (
            f"The review pending for version {review.version} to {target} was superseded by a "
            f"new request of version {newer} to it; nothing moved. Its votes do not carry over: "
            "request this version again to start a new review."
        )
        decision = Decision.without_checks(target, review.policies, reason)
        rec = self._record(
            turn, review.version, decision, Outcome.SUPERSEDED, reason, None, (), closes=review
        )
        self._act(turn, replace(rec, requested_by=review.requested_by), None)

    def _requester(
        self, kind: RegistryKind, request: Request, review: RecordedDecision | None
    ) -> Person:
        """Who asked, and how the gate knows: the review pending for this version says; else a
        request made through the gate (authenticated); else the registry's own record; else a
        tag anyone may write; else nobody."""
        if review is not None:
            return Pending.from_facts(review.facts, review.decided_at).requester
        candidate = request.candidate
        asked = self.ledger.asked(kind, candidate.model, candidate.version, request.target.name)
        if asked is not None:
            return Person(asked.requested_by, BY_GATE)
        if request.requested_by:
            return Person(
                request.requested_by, BY_REGISTRY if request.requester_verified else BY_TAG
            )
        return Person(None, UNKNOWN)

    def reviews_due(self) -> list[GateEvent]:
        """Events for the pending reviews that can be decided now (a rejection, enough
        approvals, expired): the sweep sends them, in case their vote's event was lost."""
        now = self.clock()
        due: list[GateEvent] = []
        for review in self.ledger.open_reviews():
            if review.registry not in self.registries:
                continue
            pending = Pending.from_facts(review.facts, review.decided_at)
            state = tally(pending, self.ledger.votes(review.id), now).state
            if state is State.PENDING:
                continue
            due.append(
                GateEvent(
                    event_id=f"review-{review.id}-{state.value}",
                    registry=review.registry,
                    origin=Origin.REVIEW,
                    kind=Kind.REQUEST,
                    model=review.model,
                    version=review.version,
                    target=review.target,
                    received_at=now.timestamp(),
                    webhook_event="review.due",
                )
            )
        return due

    def _not_open(self, turn: _Turn, version: str, target: Target | None) -> str:
        model = turn.event.model
        where = f" to {target}" if target else ""
        if turn.event.origin in _OWED_ONLY:
            return f"{model} v{version}: its request{where} was decided meanwhile"
        reason = (
            f"The request of version {version}{where} is no longer open (approved, rejected or "
            "withdrawn by someone else): nothing done."
        )
        policies = self.policies.covering(model, target) if target else []
        decision = Decision.without_checks(target or Target("", False), _names(policies), reason)
        rec = self._record(turn, version, decision, Outcome.SKIPPED, reason, None, ())
        review = self.ledger.open_review(turn.registry.kind, model, target.name) if target else None
        turn.keep()
        skipped = self.ledger.record(rec.row(None))
        if review is not None and review.version == version:  # withdrawn while under review
            self.ledger.supersede(review.id, skipped)
        self._count(rec.outcome)
        return f"{model} v{version}: no open request{where}; nothing done"

    # -- moves -----------------------------------------------------------------------------
    def guard(self, turn: _Turn, name: str) -> str:
        """Guard a governed target that was moved (by anyone, the gate included)."""
        registry, event = turn.registry, turn.event
        model, target = event.model, _target(event, name)
        policies = self.policies.covering(model, target)
        if not policies:
            return f"{target.kind} {target} of {model} is not governed by any policy"
        pending = self.ledger.pending(registry.kind, model, target.name)
        if pending is not None:  # an earlier decision there did not finish: finish it first
            return self._finish(turn, pending, None)
        if registry.moves_outside_are_violations:
            return self._violation(turn, target, policies)
        if self._set_as_approved(turn, target):
            # The event itself says so, and nothing is left to finish: no registry call. The
            # alias moved again since is another move, with its own event (and the sweep, for
            # a lost one), which is guarded on the state it finds.
            return (
                f"{target.kind} {target} of {model} was set on v{event.version}, which the gate "
                "approved: nothing to guard"
            )
        subject = self._subject(turn, target)
        if subject is None:
            return f"{target.kind} {target} of {model} is not held: nothing to guard"
        if self._approved(registry.kind, model, target, subject):
            return f"{target.kind} {target} of {model} is on v{subject}, which the gate approved"
        approved = self.ledger.approved_version(registry.kind, model, target.name)
        facts = self._facts(registry, registry.version(model, subject), target, policies, None)
        decision = evaluate(facts, policies)
        outside = (
            f"{target.kind.capitalize()} '{target}' was set on version {subject} outside the gate"
        )
        plan: list[Step] = []
        need = review_need(policies)
        if decision.approved and need is not None:
            # Passing the checks is not enough where people must review: going around the
            # gate must never get a better result than going through it.
            plan, undone = self._undo(registry, model, target, subject, approved)
            reason = (
                f"{outside}; it passes the automated checks, but the policy asks for human review "
                f"({need.approvals} approval(s)), which it did not get, so {undone}. Request the "
                f"promotion instead (`mlflow-gate request {model} {subject} --target {target}`)."
            )
            decision = replace(decision, approved=False)
        elif decision.approved:
            reason = f"{outside}; it passes the policy, so it is kept. {decision.reason}"
        else:
            plan, undone = self._undo(registry, model, target, subject, approved)
            reason = f"{outside} and fails the policy, so {undone}. {decision.reason}"
        outcome = Outcome.APPROVED if decision.approved else Outcome.REJECTED
        notices = ["guard.reverted"] if plan else []
        rec = self._record(turn, subject, decision, outcome, reason, facts, plan, notices=notices)
        return self._act(turn, rec, None)

    def _set_as_approved(self, turn: _Turn, target: Target) -> bool:
        """Whether the event is an alias set on the version the gate approved for it (the
        gate's own approval, or its putting an alias back, coming back as a webhook)."""
        event = turn.event
        return (
            event.kind is Kind.ALIAS_CREATED
            and not target.is_stage
            and event.version is not None
            and self._approved(turn.registry.kind, event.model, target, event.version)
        )

    def _subject(self, turn: _Turn, target: Target) -> str | None:
        """The version to guard: the alias's holder; in a stage, the event's version if it is
        there (a stage may hold several), else the newest there."""
        event, registry = turn.event, turn.registry
        if target.is_stage and event.version is not None:
            try:
                if registry.version(event.model, event.version).stage == target.name:
                    return event.version
            except MlflowNotFound:
                pass
        return registry.holder(event.model, target)

    def _undo(
        self, registry: Registry, model: str, target: Target, subject: str, approved: str | None
    ) -> tuple[list[Step], str]:
        """The plan that undoes `subject` on `target`, and what it will have done."""
        take_off = Step(Do.TAKE_OFF, subject, note="it fails the policy")
        if approved is not None and approved != subject and _exists(registry, model, approved):
            note = f"put back on version {approved}: version {subject} fails the policy"
            put_back = Step(Do.PUT, approved, note=note)
            if not target.is_stage:
                return [put_back], (
                    f"the alias was put back on version {approved}, the last the gate approved"
                )
            return [take_off, put_back], (
                f"version {subject} was moved out of the stage and version {approved}, the last "
                "the gate approved, put back in it"
            )
        what = (
            f"version {subject} was moved out of the stage"
            if target.is_stage
            else ("the alias was removed")
        )
        return [take_off], f"{what} (no version approved by the gate to put back)"

    def _violation(self, turn: _Turn, target: Target, policies: Sequence[Policy]) -> str:
        registry, event = turn.registry, turn.event
        model, version = event.model, event.version
        if version is None:
            return f"nothing to guard in {target} of {model} without a version"
        if self._approved(registry.kind, model, target, version):
            return f"{model} v{version} moved to {target} with the gate's approval"
        if registry.version(model, version).stage != target.name:
            return f"{model} v{version} is no longer in {target}: nothing to guard"
        reason = (
            f"Violation: version {version} of {model} was moved to {target.kind} {target} "
            "outside the gate (no request approved by it)"
        )
        plan: list[Step] = []
        if reverts_violations(policies):
            note = (
                f"it was moved to {target} without the gate's approval (policy on_violation: "
                "revert). Request the transition instead."
            )
            plan = [Step(Do.TAKE_OFF, version, back_to=event.from_stage, note=note)]
            reason += "; moved back (on_violation: revert):"
            action = "reverted"
        else:
            reason += "; reported only (a policy with on_violation: revert would move it back)."
            action = "reported"
        VIOLATIONS.labels(registry.kind.value, target.name, action).inc()
        decision = Decision.without_checks(target, _names(policies), reason)
        notices = ["guard.reverted"] if plan else []
        rec = self._record(
            turn, version, decision, Outcome.VIOLATION, reason, None, plan, notices=notices
        )
        return self._act(turn, rec, None)

    # -- an operator's rollback -------------------------------------------------------------
    def roll_back(
        self,
        kind: RegistryKind,
        model: str,
        target: Target,
        why: str,
        *,
        acted_by: str | None,
        keep: Keep = _unguarded,
    ) -> tuple[str | None, str | None]:
        """Put `target` back on the previous version the gate approved for it (no policy is
        evaluated: it passed when it was approved). The holder's approval is revoked, so that
        it does not count as approved again. Returns (the holder, the version put back); the
        latter None when the gate approved no other version that still exists (nothing
        changed then)."""
        registry = self.registries.get(kind)
        registry.forget()
        current = registry.holder(model, target)
        previous = self._previously_approved(registry, model, target, current)
        if previous is None:
            return current, None
        text = (
            f"rollback by operator: {why}. {target.kind.capitalize()} '{target}' moved from "
            f"version {current or '(none)'} back to version {previous}, the previous version "
            "the gate approved."
        )
        event = GateEvent(
            event_id=f"rollback-{uuid.uuid4().hex}",
            registry=kind,
            origin=Origin.OPERATOR,
            kind=Kind.REQUEST,
            model=model,
            version=previous,
            target=target.name,
            received_at=self.clock().timestamp(),
            webhook_event="rollback",
        )
        turn = _Turn(registry, event, keep)
        decision = Decision(True, target, (ROLLBACK_POLICY,), (), text)
        plan = [Step(Do.PUT, previous, archive=True, note=f"rollback by operator: {why}")]
        rec = self._record(turn, previous, decision, Outcome.APPROVED, text, None, plan)
        rec = replace(rec, acted_by=acted_by)
        if current is not None:
            keep()
            self.ledger.end_approval(kind, model, target.name, text, rec.decided_at)
        self._act(turn, rec, None)
        if current is not None:
            keep()
            rolled = replace(rec, version=current, outcome=Outcome.ROLLED_BACK, facts={})
            self.ledger.record(rolled.row(None))
            self._count(Outcome.ROLLED_BACK)
        return current, previous

    def _previously_approved(
        self, registry: Registry, model: str, target: Target, current: str | None
    ) -> str | None:
        """The newest version, other than `current`, whose latest approval for `target` was
        not revoked (rolled back from, undone), and that still exists."""
        seen: set[str] = set()
        for tenure in self.ledger.history(registry.kind, model, target.name):
            if tenure.version in seen:
                continue
            seen.add(tenure.version)
            if tenure.revoked or tenure.version == current:
                continue
            if _exists(registry, model, tenure.version):
                return tenure.version
        return None

    # -- record, then act ------------------------------------------------------------------
    def _act(self, turn: _Turn, rec: Record, request: Request | None) -> str:
        """Write the decision (and the approval it grants) to the ledger, then carry it out."""
        turn.keep()
        row = rec.row(ActionState.PENDING)
        decision_id = self.ledger.record(row)
        if rec.outcome is Outcome.APPROVED:
            self.ledger.approve(
                rec.registry,
                rec.model,
                rec.decision.target.name,
                rec.version,
                decision_id,
                rec.decided_at,
            )
        recorded = RecordedDecision(**vars(row), id=decision_id)
        return self._finish(turn, recorded, request)

    def _finish(self, turn: _Turn, recorded: RecordedDecision, request: Request | None) -> str:
        """Carry out a recorded decision's plan, unless a newer decision on its target fences it
        off; mark it done."""
        registry, model, version = turn.registry, recorded.model, recorded.version
        target = target_of(recorded)
        newer = self.ledger.newer_action(recorded)
        if newer is not None:
            turn.keep()
            self.ledger.supersede(recorded.id, newer.id)
            return (
                f"decision {recorded.id} ({model} v{version} {recorded.outcome.value} for "
                f"{target}) was superseded by decision {newer.id}: nothing more done"
            )
        closes = recorded.facts.get("closes_review")
        if isinstance(closes, int):  # the review this decision answers is over
            turn.keep()
            self.ledger.supersede(closes, recorded.id)
        decision = decision_of(recorded)
        done: list[str] = []
        try:
            for step in plan_of(recorded.facts):
                turn.keep()
                text = carry_out(registry, model, target, step, decision, request)
                if text:
                    done.append(text.rstrip(".") + ".")
        except RequestWithdrawn:
            return self._withdrawn(turn, recorded)
        except PermanentError as exc:
            self._failed(turn, recorded, exc)
            raise
        reason = " ".join([recorded.reason, *done]).strip()
        if recorded.outcome is Outcome.APPROVED:
            turn.keep()
            registry.show_approval(model, target, version)
        if recorded.outcome.shown_on_version:
            turn.keep()
            registry.show(model, version, version_tags(replace(recorded, reason=reason)))
        self._announce(turn, recorded, reason)
        turn.keep()
        self.ledger.mark_done(recorded.id, reason)
        self._count(recorded.outcome)
        log.info(
            "decision %s %s v%s for %s: %s",
            recorded.outcome.value,
            model,
            version,
            target,
            reason,
        )
        return f"{model} v{version} {recorded.outcome.value} for {target}"

    def _announce(self, turn: _Turn, recorded: RecordedDecision, reason: str) -> None:
        """Queue the decision's notices (before it is marked done: a retry sends them again,
        with the same ids, rather than never)."""
        types = [str(t) for t in recorded.facts.get("notices") or ()]
        if not types:
            return
        data = self._notice_data(recorded, reason)
        for notice_type in types:
            turn.keep()
            self.notify(
                Notice(
                    notice_type,
                    f"decision-{recorded.id}",
                    recorded.decided_at,
                    recorded.policies,
                    data,
                )
            )

    def _notice_data(self, recorded: RecordedDecision, reason: str) -> dict[str, Any]:
        review = recorded.facts.get("review")
        votes = review.get("votes", []) if isinstance(review, Mapping) else []
        data: dict[str, Any] = {
            "decision_id": recorded.id,
            "registry": recorded.registry.value,
            "model": recorded.model,
            "version": recorded.version,
            "target": recorded.target,
            "target_kind": recorded.target_kind.value,
            "outcome": recorded.outcome.value,
            "reason": reason,
            "checks": [c.to_dict() for c in recorded.checks],
            "policies": list(recorded.policies),
            "requested_by": recorded.requested_by,
            "reviewers": [v["reviewer"] for v in votes if v.get("verdict") == "approve"],
            "decided_at": recorded.decided_at.isoformat(),
            "links": self.links(recorded.model, recorded.version),
        }
        if isinstance(review, Mapping):
            data["review"] = {
                "approvals_needed": review.get("approvals"),
                "expires_at": review.get("expires_at"),
                "requester": review.get("requester"),
                "creator": review.get("creator"),
                "votes": votes,
            }
        return data

    def _failed(self, turn: _Turn, recorded: RecordedDecision, error: PermanentError) -> None:
        """A step failed for good: the approval it granted is revoked (never approve on an
        error path), and the decision marked failed; the event is dead-lettered."""
        model, version, target = recorded.model, recorded.version, target_of(recorded)
        why = f"could not be carried out ({type(error).__name__}: {error})"
        turn.keep()
        if recorded.outcome is Outcome.APPROVED and (
            self.ledger.approved_version(recorded.registry, model, target.name) == version
        ):
            self.ledger.end_approval(recorded.registry, model, target.name, why, self.clock())
        self.ledger.mark_failed(
            recorded.id,
            f"{recorded.reason} The decision {why}; fix the cause, then replay the event with "
            "`mlflow-gate dlq replay`.",
        )

    def _withdrawn(self, turn: _Turn, recorded: RecordedDecision) -> str:
        """The request was decided by someone else while the gate was acting on it."""
        model, version, target = recorded.model, recorded.version, target_of(recorded)
        now = self.clock()
        turn.keep()
        if self.ledger.approved_version(recorded.registry, model, target.name) == version:
            reason = f"the request was decided by someone else (decision {recorded.id})"
            self.ledger.end_approval(recorded.registry, model, target.name, reason, now)
        text = (
            f"The request of version {version} to {target} was decided by someone else while "
            "the gate was deciding it: nothing done."
        )
        decision = Decision.without_checks(target, recorded.policies, text)
        skipped = Record(
            registry=recorded.registry,
            model=model,
            version=version,
            decision=decision,
            outcome=Outcome.SKIPPED,
            reason=text,
            event_id=recorded.event_id,
            origin=recorded.origin,
            decided_at=now,
        )
        self.ledger.supersede(recorded.id, self.ledger.record(skipped.row(None)))
        self._count(Outcome.SKIPPED)
        return f"{model} v{version}: its request to {target} was decided meanwhile; nothing done"

    def _record(
        self,
        turn: _Turn,
        version: str,
        decision: Decision,
        outcome: Outcome,
        reason: str,
        facts: Facts | None,
        plan: Sequence[Step],
        *,
        notices: Sequence[str] = (),
        extra: Mapping[str, Any] | None = None,
        closes: RecordedDecision | None = None,
    ) -> Record:
        """The decision to record: what was evaluated, the plan, the notices to send once it is
        carried out, and the review it closes (if any)."""
        evaluated_facts: dict[str, Any] = evaluated(facts) if facts is not None else {}
        evaluated_facts.update(extra or {})
        if notices:
            evaluated_facts["notices"] = list(notices)
        if closes is not None:
            evaluated_facts["closes_review"] = closes.id
        return Record(
            registry=turn.registry.kind,
            model=turn.event.model,
            version=version,
            decision=decision,
            outcome=outcome,
            reason=reason.strip(),
            event_id=turn.event.event_id,
            origin=turn.event.origin,
            decided_at=self.clock(),
            facts=plan_facts(evaluated_facts, plan),
        )

    # -- what the gate approved ------------------------------------------------------------
    def _approved(self, registry: RegistryKind, model: str, target: Target, version: str) -> bool:
        """An alias: the version the gate approved for it. A stage: any version the gate
        approved for it that was not revoked since (a stage may hold several)."""
        if target.is_stage:
            return version in self.ledger.standing(registry, model, target.name)
        return self.ledger.is_approved(registry, model, target.name, version)

    def _facts(
        self,
        registry: Registry,
        candidate: VersionFacts,
        target: Target,
        policies: Sequence[Policy],
        requested_by: str | None,
    ) -> Facts:
        kind, model = registry.kind, candidate.model
        return gather(
            registry,
            candidate,
            target,
            policies,
            now_ms=int(self.clock().timestamp() * 1000),
            requested_by=requested_by,
            approved=lambda other: self.ledger.approved_version(kind, model, other.name),
        )

    @staticmethod
    def _count(outcome: Outcome) -> None:
        DECISIONS.labels(outcome.value).inc()


def _target(event: GateEvent, name: str) -> Target:
    if event.kind is Kind.STAGE_TRANSITIONED:
        return Target.parse(name)
    return Target(name, is_stage=False)


def _exists(registry: Registry, model: str, version: str) -> bool:
    try:
        registry.version(model, version)
    except MlflowNotFound:
        log.warning("%s v%s, the last the gate approved, is gone", model, version)
        return False
    return True


def _names(policies: Sequence[Policy]) -> list[str]:
    return [p.name for p in policies]


def _asked_for_review(
    pending: Pending, model: str, version: str, target: Target, decision: Decision
) -> str:
    need = pending.need
    who = "; ".join(
        f"policy {name}: "
        + " or ".join(
            part
            for part in (
                ", ".join(names) if names else "",
                f"members of role {role}" if role else "",
            )
            if part
        )
        for name, names, role in need.gates
    )
    expires = pending.expires_at
    until = f" It expires at {expires.isoformat(timespec='seconds')}." if expires else ""
    requested = pending.requester.says("requested")
    checks = decision.reason.replace("Approved for", "Checks for", 1)
    return (
        f"Pending review: the automated checks pass; {need.approvals} approval(s) from "
        f"reviewers ({who or 'anyone signed in'}) are needed before {target.kind} '{target}' "
        f"moves. {requested[:1].upper()}{requested[1:]}; {pending.creator.says('created')}; "
        f"neither may approve.{until} Reviewers: `mlflow-gate review approve {model} {version} "
        f"--target {target}` (or reject with --comment). {checks}"
    )


def _vote_dict(vote: Vote) -> dict[str, Any]:
    return {
        "reviewer": vote.reviewer,
        "verdict": vote.verdict.value,
        "comment": vote.comment,
        "identified_by": vote.identified_by,
        "cast_at": vote.cast_at.isoformat(),
    }
