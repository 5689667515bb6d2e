"""`mlflow-gate explain`: evaluate a version against the policy, act on nothing."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from shared import tags
from shared.evaluation import evaluate
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
    facts = gather(
        registry,
        candidate,
        target,
        covering,
        now_ms=int(time.time() * 1000),
        requested_by=candidate.tags.get(tags.REQUESTED_BY) or None,
    )
    decision = evaluate(facts, covering)
    echo(f"{model} version {version} -> {target.kind} '{target}' (policies from {policies.source})")
    for check in decision.checks:
        mark = "PASS" if check.passed else ("FAIL" if check.enforced else "FAIL (audit)")
        actual = json.dumps(check.actual) if not isinstance(check.actual, str) else check.actual
        echo(
            f"  {mark:12} [{check.policy}] {check.check}: actual {actual}; "
            f"required {check.required}"
        )
    echo(("APPROVED: " if decision.approved else "REJECTED: ") + decision.reason)
    return 0 if decision.approved else 1
