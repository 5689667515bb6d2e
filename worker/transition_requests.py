"""The Databricks flow: decide transition requests, and guard governed stages.

- A transition request (TRANSITION_REQUEST_CREATED): if it is still open, read the version, its
  run and the holders of compared stages from the workspace, evaluate the policy and approve or
  reject the request with a comment naming the checks. A request no longer open (someone else
  approved, rejected or withdrew it) is recorded as `skipped`, and nothing is done; for an
  event of the sweep (worker/databricks_sweep.py) nothing is recorded either.
- A stage transition (MODEL_VERSION_TRANSITIONED_STAGE): a version in a governed stage that the
  gate did not approve is a `violation`; it is moved back only when a covering policy says
  `on_violation: revert`.

Decisions go to the same Redis audit trail as the open-source flow; the comment on the
transition request is what the engineer reads.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime, timezone

import redis

from shared import keys
from shared.errors import MlflowRequestError
from shared.evaluation import Decision, evaluate
from shared.events import DATABRICKS_SWEEP_SOURCE, GateEvent, Kind
from shared.policy import Policy, PolicySet, Target, archive_existing, reverts_violations
from worker.databricks_api import DatabricksApi
from worker.databricks_metrics import VIOLATIONS
from worker.decisions import DecisionLog, Record
from worker.facts import gather
from worker.mlflow_api import Json

log = logging.getLogger(__name__)

SKIPPED = "skipped"
VIOLATION = "violation"
COMMENT_PREFIX = "mlflow-gate: "


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Approvals:
    """The versions the gate approved per model and stage, so that their own stage-transition
    webhooks are not taken for violations. Written before the approval is sent."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def add(self, model: str, stage: str, version: str) -> None:
        self.client.sadd(keys.databricks_approved(model, stage), version)

    def contains(self, model: str, stage: str, version: str) -> bool:
        return bool(self.client.sismember(keys.databricks_approved(model, stage), version))


def open_request(requests: Sequence[Json], stage: str) -> Json | None:
    """The newest open request to `stage` among a version's open transition requests."""
    matching = [r for r in requests if Target.parse(str(r.get("to_stage") or "")).name == stage]
    if not matching:
        return None
    return max(matching, key=lambda r: int(r.get("creation_timestamp") or 0))


def approval_comment(decision: Decision, archived: bool) -> str:
    passed = [c.message for c in decision.checks if c.passed]
    audited = [c.message for c in decision.checks if not c.passed and not c.enforced]
    text = (
        f"{COMMENT_PREFIX}approved for stage {decision.target} (policy "
        f"{', '.join(decision.policies)}). Checks passed: " + "; ".join(passed) + "."
    )
    if audited:
        text += " Audit only, not enforced: " + "; ".join(audited) + "."
    if archived:
        text += f" Versions already in {decision.target} are archived."
    return text


def rejection_comment(decision: Decision) -> str:
    return COMMENT_PREFIX + decision.reason


class DatabricksReconciler:
    def __init__(
        self,
        api: DatabricksApi,
        policies: PolicySet,
        decisions: DecisionLog,
        approvals: Approvals,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.api = api
        self.policies = policies
        self.decisions = decisions
        self.approvals = approvals
        self.clock = clock

    def handle(self, event: GateEvent) -> str:
        if event.version is None or not event.target:
            return f"nothing to do for {event.kind.value} without a version and a stage"
        if event.kind is Kind.TRANSITION_REQUESTED:
            from_sweep = event.source == DATABRICKS_SWEEP_SOURCE
            return self.request(
                event.model, event.version, event.target, event.event_id, only_if_open=from_sweep
            )
        if event.kind is Kind.STAGE_TRANSITIONED:
            return self.transitioned(
                event.model, event.version, event.target, event.from_stage, event.event_id
            )
        return f"nothing to do for Databricks {event.kind.value}"

    def request(
        self, model: str, version: str, stage: str, event_id: str, *, only_if_open: bool = False
    ) -> str:
        """Decide the version's open transition request to `stage`.

        `only_if_open` (the sweep's events): a request no longer open was decided meanwhile,
        most likely by its own webhook's event; nothing is recorded for it.
        """
        target = Target.parse(stage)
        pending = open_request(self.api.list_transition_requests(model, version), target.name)
        if pending is None:
            return self._no_longer_open(model, version, target, event_id, quiet=only_if_open)
        policies = self.policies.covering(model, target)
        now = self.clock()
        facts = gather(
            self.api,
            self.api.get_model_version(model, version),
            target,
            policies,
            now_ms=int(now.timestamp() * 1000),
            requested_by=str(pending.get("user_id") or "") or None,
            stages_only=True,
        )
        decision = evaluate(facts, policies)
        try:
            if decision.approved:
                archive = archive_existing(policies, target)
                self.approvals.add(model, target.name, version)  # before its transition webhook
                self.api.approve_transition_request(
                    model,
                    version,
                    target.name,
                    archive_existing_versions=archive,
                    comment=approval_comment(decision, archive),
                )
                done = f"Transition request to {target} approved" + (
                    " (versions already there archived)." if archive else "."
                )
            else:
                self.api.reject_transition_request(
                    model, version, target.name, rejection_comment(decision)
                )
                done = f"Transition request to {target} rejected."
        except MlflowRequestError:
            # Someone acted between the list and our answer: that is not a failure.
            if open_request(self.api.list_transition_requests(model, version), target.name):
                raise
            return self._no_longer_open(model, version, target, event_id, quiet=only_if_open)
        reason = f"{decision.reason} {done}"
        self._append(model, version, decision, reason, event_id)
        verdict = "approved" if decision.approved else "rejected"
        return f"{model} v{version}: transition request to {target} {verdict}"

    def transitioned(
        self, model: str, version: str, stage: str, from_stage: str | None, event_id: str
    ) -> str:
        """Guard a governed stage: a version moved there without the gate's approval."""
        target = Target.parse(stage)
        policies = self.policies.covering(model, target)
        if not policies:
            return f"stage {target} of {model} is not governed by any policy"
        if self.approvals.contains(model, target.name, version):
            return f"{model} v{version} moved to {target} with the gate's approval"
        mv = self.api.get_model_version(model, version)
        if mv.get("current_stage") != target.name:
            return f"{model} v{version} is no longer in {target}: nothing to guard"
        reason = (
            f"Violation: version {version} of {model} was moved to stage {target} outside the "
            "gate (no transition request approved by it)"
        )
        if reverts_violations(policies):
            back = from_stage if from_stage and from_stage != target.name else "None"
            self.api.transition_stage_with_comment(
                model,
                version,
                back,
                archive_existing_versions=False,
                comment=(
                    f"{COMMENT_PREFIX}moved back to {back}: it was moved to {target} without the "
                    "gate's approval (policy on_violation: revert). Request the transition instead."
                ),
            )
            reason += f"; moved back to stage {back} (on_violation: revert)."
            action = "reverted"
        else:
            reason += "; reported only (a policy with on_violation: revert would move it back)."
            action = "reported"
        VIOLATIONS.labels(target.name, action).inc()
        decision = _bare(target, policies, reason)
        self._append(model, version, decision, reason, event_id, outcome=VIOLATION)
        return f"{model} v{version} in {target} outside the gate: violation {action}"

    def _no_longer_open(
        self, model: str, version: str, target: Target, event_id: str, *, quiet: bool = False
    ) -> str:
        if quiet:
            return f"{model} v{version}: its transition request to {target} was decided meanwhile"
        reason = (
            f"The transition request of version {version} to {target} is no longer open "
            "(approved, rejected or withdrawn by someone else): nothing done."
        )
        policies = self.policies.covering(model, target)
        decision = _bare(target, policies, reason)
        self._append(model, version, decision, reason, event_id, outcome=SKIPPED)
        return f"{model} v{version}: no open transition request to {target}; nothing done"

    def _append(
        self,
        model: str,
        version: str,
        decision: Decision,
        reason: str,
        event_id: str,
        *,
        outcome: str | None = None,
    ) -> None:
        entry = Record(model, version, decision, reason, event_id, self.clock()).log_entry()
        if outcome is not None:
            entry["outcome"] = outcome
        self.decisions.append(entry)
        log.info(
            "Databricks decision %s %s v%s for %s: %s",
            entry["outcome"],
            model,
            version,
            decision.target,
            reason,
        )


def _bare(target: Target, policies: Sequence[Policy], reason: str) -> Decision:
    """A decision without checks, for what was recorded without an evaluation."""
    return Decision(
        approved=False,
        target=target,
        policies=tuple(p.name for p in policies),
        checks=(),
        reason=reason,
    )
