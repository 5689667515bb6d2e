"""The dead-letter store: events the gate could not decide, kept in Redis until replayed.

Celery on Redis has no dead-letter queue (a rejected message is simply deleted), so the worker
writes here, before the message is acknowledged, everything an operator needs to replay it.
"""

from __future__ import annotations

import fnmatch
import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import redis

from shared import keys
from shared.errors import EventError, TransientError
from shared.events import GateEvent
from shared.notify.delivery import is_delivery
from shared.notify.sinks import label
from shared.queue import Publish


@dataclass(frozen=True)
class DeadLetter:
    id: str  # the event id
    event: dict[str, Any]  # the original event, as enqueued
    error_class: str
    error: str
    transient: bool  # failed for a reason that may go away (MLflow down) rather than a bad event
    attempts: int
    first_failure: float
    last_failure: float
    model: str | None
    version: str | None


class DeadLetterStore:
    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def put(
        self,
        event: dict[str, Any],
        error: BaseException,
        attempts: int,
        first_failure: float | None = None,
    ) -> DeadLetter:
        now = time.time()
        event_id = str(event.get("event_id") or f"unknown-{now:.6f}")
        previous = self.get(event_id)
        first = first_failure or (previous.first_failure if previous else now)
        entry = DeadLetter(
            id=event_id,
            event=event,
            error_class=type(error).__name__,
            error=str(error),
            transient=isinstance(error, TransientError | redis.RedisError),
            attempts=attempts,
            first_failure=first,
            last_failure=now,
            model=_opt(event.get("model")),
            version=_opt(event.get("version")),
        )
        pipe = self.client.pipeline()
        pipe.hset(keys.DEADLETTER, event_id, json.dumps(asdict(entry)))
        pipe.zadd(keys.DEADLETTER_INDEX, {event_id: now})
        pipe.execute()
        return entry

    def get(self, entry_id: str) -> DeadLetter | None:
        raw = self.client.hget(keys.DEADLETTER, entry_id)
        return DeadLetter(**json.loads(raw)) if raw else None

    def all(self) -> list[DeadLetter]:
        ids = [
            i.decode() if isinstance(i, bytes) else str(i)
            for i in self.client.zrange(keys.DEADLETTER_INDEX, 0, -1)
        ]
        entries = (self.get(i) for i in ids)
        return [e for e in entries if e is not None]

    def take(self, entry_id: str) -> DeadLetter | None:
        """Remove the entry and return it, atomically: an entry written again meanwhile (the
        same event failing again) is never removed by mistake."""
        with self.client.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(keys.DEADLETTER)  # type: ignore[no-untyped-call]
                    raw = pipe.hget(keys.DEADLETTER, entry_id)
                    if not raw:
                        pipe.unwatch()
                        return None
                    pipe.multi()
                    pipe.hdel(keys.DEADLETTER, entry_id)
                    pipe.zrem(keys.DEADLETTER_INDEX, entry_id)
                    pipe.execute()
                    return DeadLetter(**json.loads(raw))
                except redis.WatchError:
                    continue  # the hash changed between our read and our removal: again

    def give_back(self, entry: DeadLetter) -> None:
        """Put back an entry taken for a replay that could not be published, unless the event
        was dead-lettered again meanwhile (the newer entry stays)."""
        pipe = self.client.pipeline()
        pipe.hsetnx(keys.DEADLETTER, entry.id, json.dumps(asdict(entry)))
        pipe.zadd(keys.DEADLETTER_INDEX, {entry.id: entry.last_failure}, nx=True)
        pipe.execute()

    def remove(self, entry_id: str) -> bool:
        pipe = self.client.pipeline()
        pipe.hdel(keys.DEADLETTER, entry_id)
        pipe.zrem(keys.DEADLETTER_INDEX, entry_id)
        removed, _ = pipe.execute()
        return bool(removed)

    def purge(self) -> int:
        count = self.count()
        self.client.delete(keys.DEADLETTER, keys.DEADLETTER_INDEX)
        return count

    def count(self) -> int:
        return int(self.client.zcard(keys.DEADLETTER_INDEX))


def _opt(value: Any) -> str | None:
    return None if value is None else str(value)


@dataclass
class ReplayReport:
    replayed: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (id, why)
    missing: list[str] = field(default_factory=list)

    def summary(self, dry_run: bool = False) -> str:
        verb = "would replay" if dry_run else "replayed"
        text = f"{verb} {len(self.replayed)}, failed {len(self.failed)}"
        return text + (f", not found {len(self.missing)}" if self.missing else "")


def select(
    entries: list[DeadLetter],
    *,
    model: str | None = None,
    error: str | None = None,
    since: float | None = None,
    transient_only: bool = False,
) -> list[DeadLetter]:
    """Filter dead letters: by model (glob), error class or message substring, failure time."""
    return [
        e
        for e in entries
        if (model is None or fnmatch.fnmatchcase(e.model or "", model))
        and (error is None or error.lower() in f"{e.error_class} {e.error}".lower())
        and (since is None or e.last_failure >= since)
        and (not transient_only or e.transient)
    ]


def replay(
    store: DeadLetterStore, publish: Publish, ids: list[str], *, dry_run: bool = False
) -> ReplayReport:
    """Re-enqueue each entry. The entry is taken out before it is published (so that the
    replayed event, failing again at once, leaves a dead letter that nothing removes) and put
    back if publishing fails."""
    report = ReplayReport()
    for entry_id in ids:
        entry = store.get(entry_id) if dry_run else store.take(entry_id)
        if entry is None:
            report.missing.append(entry_id)
            continue
        if dry_run:
            report.replayed.append(entry_id)
            continue
        try:
            publish(_as_replayed(entry.event))
        except Exception as exc:  # kombu and redis raise many kinds; the entry goes back
            store.give_back(entry)
            report.failed.append((entry_id, f"{type(exc).__name__}: {exc}"))
            continue
        report.replayed.append(entry_id)
    return report


def _as_replayed(event: dict[str, Any]) -> dict[str, Any]:
    """The event with its origin set to replay; a payload that is no event (a notification's
    delivery: its id must stay the same) goes as it was."""
    if is_delivery(event):
        return event
    try:
        return GateEvent.from_dict(event).replayed().to_dict()
    except EventError:
        return event


def describe(event: dict[str, Any]) -> str:
    """What a dead letter was: the webhook event, or for a notification its type and sink."""
    if is_delivery(event):
        return f"notify {event.get('notice_type') or '?'} -> {label(str(event.get('sink')))}"
    return str(event.get("webhook_event") or event.get("kind") or "?")
