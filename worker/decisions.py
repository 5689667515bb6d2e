"""Recording a decision: on the model version's tags (what engineers read in MLflow) and in a
bounded audit trail in Redis (what operators list)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis

from shared import keys, tags
from shared.evaluation import Decision
from worker.metrics import DECISIONS
from worker.mlflow_api import MlflowApi


@dataclass(frozen=True)
class Record:
    model: str
    version: str
    decision: Decision
    reason: str  # the decision's reason, with what the gate did about it
    event_id: str
    decided_at: datetime

    @property
    def status(self) -> str:
        return tags.APPROVED if self.decision.approved else tags.REJECTED

    def version_tags(self) -> dict[str, str]:
        # Status last: whoever waits for it finds the rest already written.
        return {
            tags.TARGET: self.decision.target.name,
            tags.REASON: self.reason,
            tags.POLICY: ", ".join(self.decision.policies) or "none",
            tags.CHECKS: json.dumps([c.to_dict() for c in self.decision.checks]),
            tags.DECIDED_AT: self.decided_at.isoformat(timespec="seconds").replace("+00:00", "Z"),
            tags.STATUS: self.status,
        }

    def log_entry(self) -> dict[str, Any]:
        return {
            "time": self.decided_at.isoformat(),
            "model": self.model,
            "version": self.version,
            "target": self.decision.target.name,
            "outcome": self.status,
            "reason": self.reason,
            "policy": ", ".join(self.decision.policies),
            "event_id": self.event_id,
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


def record(api: MlflowApi, log: DecisionLog, rec: Record) -> None:
    for key, value in rec.version_tags().items():
        api.set_version_tag(rec.model, rec.version, key, value)
    log.append(rec.log_entry())
