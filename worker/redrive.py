"""Automatic redrive: once the registry an event needs answers again (MLflow, or a
workspace), replay the events that failed for transient reasons, a bounded batch at a time so
that a recovered service is not flooded.

Notifications' deliveries that failed for transient reasons (a sink down past the retry budget)
are replayed too, after the events: a sink's health cannot be known in advance, so each round
simply tries again (each replay has the whole retry budget; its id stays the same)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from shared.deadletter import DeadLetter, DeadLetterStore, replay, select
from shared.errors import EventError
from shared.events import GateEvent, RegistryKind
from shared.notify.delivery import is_delivery
from shared.queue import Publish

Health = Mapping[str, Callable[[], bool]]  # registry kind -> is its service answering?


def redrive(store: DeadLetterStore, health: Health, publish: Publish, batch: int) -> str:
    waiting = select(store.all(), transient_only=True)
    if not waiting:
        return "redrive: no transient dead letters"
    by_registry: dict[str, list[DeadLetter]] = {}
    deliveries: list[str] = []
    for entry in waiting:
        if is_delivery(entry.event):
            deliveries.append(entry.id)
        else:
            by_registry.setdefault(_registry_of(entry.event), []).append(entry)
    ready: list[str] = []
    down: list[str] = []
    for registry, entries in sorted(by_registry.items()):
        check = health.get(registry)
        if check is not None and check():
            ready.extend(e.id for e in entries)
        else:
            down.append(f"{registry} ({len(entries)} waiting)")
    ready.extend(deliveries)  # after the events: decisions first
    chosen = ready[:batch]
    report = replay(store, publish, chosen) if chosen else None
    parts = [f"redrive: {report.summary()}" if report else "redrive: nothing replayed"]
    if len(ready) > batch:
        parts.append(f"{len(ready) - batch} left for the next round")
    if down:
        parts.append("still unavailable: " + ", ".join(down))
    return "; ".join(parts)


def _registry_of(event: dict[str, object]) -> str:
    try:
        return GateEvent.from_dict(event).registry.value
    except EventError:
        return str(event.get("registry") or RegistryKind.MLFLOW.value)
