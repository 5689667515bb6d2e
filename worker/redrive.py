"""Automatic redrive: once the service an event needs answers again (MLflow, or the Databricks
workspace), replay the events that failed for transient reasons, a bounded batch at a time so
that a recovered service is not flooded."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from shared.deadletter import DeadLetter, DeadLetterStore, replay, select
from shared.queue import Publish

Health = Mapping[str, Callable[[], bool]]  # event source -> is its service answering?


def redrive(store: DeadLetterStore, health: Health, publish: Publish, batch: int) -> str:
    waiting = select(store.all(), transient_only=True)
    if not waiting:
        return "redrive: no transient dead letters"
    by_source: dict[str, list[DeadLetter]] = {}
    for entry in waiting:
        by_source.setdefault(str(entry.event.get("source") or "mlflow"), []).append(entry)
    ready: list[str] = []
    down: list[str] = []
    for source, entries in sorted(by_source.items()):
        check = health.get(source)
        if check is not None and check():
            ready.extend(e.id for e in entries)
        else:
            down.append(f"{source} ({len(entries)} waiting)")
    chosen = ready[:batch]
    report = replay(store, publish, chosen) if chosen else None
    parts = [f"redrive: {report.summary()}" if report else "redrive: nothing replayed"]
    if len(ready) > batch:
        parts.append(f"{len(ready) - batch} left for the next round")
    if down:
        parts.append("still unavailable: " + ", ".join(down))
    return "; ".join(parts)
