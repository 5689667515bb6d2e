"""Recording a decision: shown to engineers where the registry shows decisions (the version's
governance.* tags), and kept in a bounded audit trail in Redis (what operators list)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis

from shared import keys, tags
from shared.evaluation import Decision
from shared.events import Origin, RegistryKind
from shared.outcomes import Outcome
from worker.metrics import DECISIONS
from worker.registry import Registry


@dataclass(frozen=True)
class Record:
    registry: RegistryKind
    model: str
    version: str
    decision: Decision
    outcome: Outcome
    reason: str  # the decision's reason, with what the gate did about it
    event_id: str
    origin: Origin
    decided_at: datetime

    def version_tags(self) -> dict[str, str]:
        # Status last: whoever waits for it finds the rest already written.
        return {
            tags.TARGET: self.decision.target.name,
            tags.REASON: self.reason,
            tags.POLICY: ", ".join(self.decision.policies) or "none",
            tags.CHECKS: json.dumps([c.to_dict() for c in self.decision.checks]),
            tags.DECIDED_AT: self.decided_at.isoformat(timespec="seconds").replace("+00:00", "Z"),
            tags.STATUS: self.outcome.value,
        }

    def log_entry(self) -> dict[str, Any]:
        return {
            "time": self.decided_at.isoformat(),
            "registry": self.registry.value,
            "model": self.model,
            "version": self.version,
            "target": self.decision.target.name,
            "outcome": self.outcome.value,
            "reason": self.reason,
            "policy": ", ".join(self.decision.policies),
            "event_id": self.event_id,
            "origin": self.origin.value,
        }


class DecisionLog:
    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def append(self, entry: dict[str, Any]) -> None:
        DECISIONS.labels(str(entry.get("outcome", "unknown"))).inc()
        pipe = self.client.pipeline()
        pipe.lpush(keys.DECISIONS, json.dumps(entry))
        pipe.ltrim(keys.DECISIONS, 0, keys.DECISIONS_MAX - 1)
        pipe.execute()

    def recent(self, *, model: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        entries = [json.loads(raw) for raw in self.client.lrange(keys.DECISIONS, 0, -1)]
        return [e for e in entries if model is None or e.get("model") == model][:limit]


def record(registry: Registry, log: DecisionLog, rec: Record) -> None:
    """Show the decision on the version where it is shown there, then add it to the trail."""
    if rec.outcome.shown_on_version:
        registry.show(rec.model, rec.version, rec.version_tags())
    log.append(rec.log_entry())
