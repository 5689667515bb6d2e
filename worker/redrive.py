"""Automatic redrive: once MLflow answers again, replay the events that failed for transient
reasons, a bounded batch at a time so that a recovered MLflow is not flooded."""

from __future__ import annotations

from shared.deadletter import DeadLetterStore, replay, select
from shared.queue import Publish
from worker.mlflow_api import MlflowApi


def redrive(store: DeadLetterStore, api: MlflowApi, publish: Publish, batch: int) -> str:
    waiting = select(store.all(), transient_only=True)
    if not waiting:
        return "redrive: no transient dead letters"
    if not api.healthy():
        return f"redrive: MLflow still unavailable; {len(waiting)} dead letters wait"
    report = replay(store, publish, [e.id for e in waiting[:batch]])
    return f"redrive: {report.summary()}; {max(len(waiting) - batch, 0)} left for the next round"
