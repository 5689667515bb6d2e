"""`mlflow-gate explain`: evaluate a version against the policy, act on nothing."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable

from cli.audit import reader
from shared import tags
from shared.errors import GateError
from shared.evaluation import evaluate
from shared.events import RegistryKind
from shared.policy import Target, load_policies
from shared.settings import Settings
from worker.facts import gather
from worker.registries import open_source


def explain(
    settings: Settings, model: str, version: str, target_text: str, echo: Callable[[str], None]
) -> int:
    policies = load_policies(settings.policy_file)
    registry = open_source(settings)
    target = Target.parse(target_text)
    covering = policies.covering(model, target)
    candidate = registry.version(model, version)
    stack = contextlib.ExitStack()
    approved, note = _approvals(settings, registry.kind, model, stack)
    facts = gather(
        registry,
        candidate,
        target,
        covering,
        now_ms=int(time.time() * 1000),
        requested_by=candidate.tags.get(tags.REQUESTED_BY) or None,
        approved=approved,
    )
    stack.close()
    decision = evaluate(facts, covering)
    echo(f"{model} version {version} -> {target.kind} '{target}' (policies from {policies.source})")
    if note:
        echo(f"  note: {note}")
    for check in decision.checks:
        mark = "PASS" if check.passed else ("FAIL" if check.enforced else "FAIL (audit)")
        actual = json.dumps(check.actual) if not isinstance(check.actual, str) else check.actual
        echo(
            f"  {mark:12} [{check.policy}] {check.check}: actual {actual}; "
            f"required {check.required}"
        )
    echo(("APPROVED: " if decision.approved else "REJECTED: ") + decision.reason)
    return 0 if decision.approved else 1


def _approvals(
    settings: Settings, kind: RegistryKind, model: str, stack: contextlib.ExitStack
) -> tuple[Callable[[Target], str | None], str]:
    """Which version the gate approved for a target, from the ledger, as the worker compares
    with it; without a ledger here, nothing (and a note saying so)."""
    try:
        ledger = stack.enter_context(reader(settings))
    except GateError as exc:
        return (lambda _: None), f"compared with the registry's holders, not the ledger: {exc}"
    return (lambda target: ledger.approved_version(kind, model, target.name)), ""
