"""Reconcile what an event names with the current state in MLflow: fetch facts, evaluate, act.

Nothing here trusts the event's payload beyond the model, version and alias it names: a
duplicate or late event re-reads MLflow and changes nothing twice.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from datetime import datetime, timezone

from shared import tags
from shared.errors import MlflowNotFound, PermanentError
from shared.evaluation import Decision, evaluate
from shared.events import DATABRICKS_SOURCE, DATABRICKS_SWEEP_SOURCE, GateEvent, Kind
from shared.policy import PolicySet, Target, archive_existing
from worker.decisions import DecisionLog, Record, record
from worker.facts import gather, holder_version, tag_map
from worker.mlflow_api import MlflowApi
from worker.sweep import SWEEP_SOURCE, undecided
from worker.transition_requests import DatabricksReconciler

log = logging.getLogger(__name__)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Reconciler:
    def __init__(
        self,
        api: MlflowApi,
        policies: PolicySet,
        decisions: DecisionLog,
        clock: Callable[[], datetime] = utcnow,
        databricks: DatabricksReconciler | None = None,
    ) -> None:
        self.api = api
        self.policies = policies
        self.decisions = decisions
        self.clock = clock
        self.databricks = databricks

    def handle(self, event: GateEvent) -> str:
        """Reconcile the event's subject; returns what was done, for the log."""
        if event.source in (DATABRICKS_SOURCE, DATABRICKS_SWEEP_SOURCE):
            if self.databricks is None:
                raise PermanentError(
                    "a Databricks event, but GATE_DATABRICKS_HOST is not set on this worker; "
                    "set it and GATE_DATABRICKS_TOKEN, restart the worker, then replay the event"
                )
            return self.databricks.handle(event)
        if event.kind is Kind.REQUEST and event.version is not None:
            from_sweep = event.source == SWEEP_SOURCE
            return self.request(event.model, event.version, event.event_id, from_sweep)
        if event.kind in (Kind.ALIAS_CREATED, Kind.ALIAS_DELETED) and event.target:
            return self.alias(event.model, event.target, event.event_id)
        return f"nothing to do for {event.kind.value} without a version or alias"

    def request(
        self, model: str, version: str, event_id: str, only_if_undecided: bool = False
    ) -> str:
        """Promotion by request: decide the version's current governance.request."""
        mv = self.api.get_model_version(model, version)
        version_tags = tag_map(mv)
        requested = version_tags.get(tags.REQUEST)
        if requested is None:
            return f"{model} v{version} has no {tags.REQUEST} any more: nothing to decide"
        if only_if_undecided and not undecided(version_tags):
            return f"{model} v{version}: its request was decided meanwhile"
        target = Target.parse(requested)
        policies = self.policies.covering(model, target)
        now_ms = int(self.clock().timestamp() * 1000)
        decision = evaluate(gather(self.api, mv, target, policies, now_ms=now_ms), policies)
        reason = decision.reason
        if decision.approved:
            archive = archive_existing(policies, target)
            reason += " " + self._promote(model, version, target, mv, archive)
        self._record(model, version, decision, reason, event_id)
        return f"{model} v{version} {'approved' if decision.approved else 'rejected'} for {target}"

    def alias(self, model: str, alias: str, event_id: str) -> str:
        """Guard a protected alias: a version set outside the gate must pass, or is undone."""
        target = Target(alias, is_stage=False)
        policies = self.policies.covering(model, target)
        if not policies:
            return f"alias {alias} of {model} is not protected by any policy"
        rm = self.api.get_registered_model(model)
        holder = holder_version(self.api, model, target, rm)
        if holder is None:
            return f"alias {alias} of {model} is not set: nothing to guard"
        approved = tag_map(rm).get(tags.approved_pointer(alias))
        if holder == approved:
            return f"alias {alias} of {model} is on v{holder}, which the gate approved"
        mv = self.api.get_model_version(model, holder)
        now_ms = int(self.clock().timestamp() * 1000)
        facts = gather(self.api, mv, target, policies, registered_model=rm, now_ms=now_ms)
        decision = evaluate(facts, policies)
        outside = f"Alias '{alias}' was set on version {holder} outside the gate"
        if decision.approved:
            self.api.set_model_tag(model, tags.approved_pointer(alias), holder)
            reason = f"{outside}; it passes the policy, so it is kept. {decision.reason}"
        else:
            undone = self._restore_alias(model, alias, approved)
            reason = f"{outside} and fails the policy, so {undone}. {decision.reason}"
        self._record(model, holder, decision, reason, event_id)
        verdict = "kept" if decision.approved else "reverted"
        return f"alias {alias} of {model} set on v{holder} outside the gate: {verdict}"

    def _promote(
        self, model: str, version: str, target: Target, mv: dict[str, object], archive: bool
    ) -> str:
        # The pointer first: the alias's own webhook then finds the version already approved.
        self.api.set_model_tag(model, tags.approved_pointer(target.name), version)
        if target.is_stage:
            if mv.get("current_stage") != target.name:
                self.api.transition_stage(model, version, target.name, archive_existing=archive)
                extra = " (versions already there archived)" if archive else ""
                return f"Version {version} moved to stage {target.name}{extra}."
            return f"Version {version} was already in stage {target.name}."
        self.api.set_alias(model, target.name, version)
        return f"Alias '{target.name}' now points to version {version}."

    def _restore_alias(self, model: str, alias: str, approved: str | None) -> str:
        if approved is not None:
            try:
                self.api.set_alias(model, alias, approved)
                return f"the alias was put back on version {approved}, the last the gate approved"
            except MlflowNotFound:
                log.warning("%s v%s, approved for %s, is gone", model, approved, alias)
        with contextlib.suppress(MlflowNotFound):  # removed meanwhile: the outcome we want
            self.api.delete_alias(model, alias)
        return "the alias was removed (no version approved by the gate to put it back on)"

    def _record(
        self, model: str, version: str, decision: Decision, reason: str, event_id: str
    ) -> None:
        rec = Record(model, version, decision, reason, event_id, self.clock())
        record(self.api, self.decisions, rec)
        log.info(
            "decision %s %s v%s for %s: %s", rec.status, model, version, decision.target, reason
        )
