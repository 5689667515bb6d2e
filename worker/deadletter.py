"""The dead-letter store: events the gate could not decide, kept in Redis until replayed.

Celery on Redis has no dead-letter queue (a rejected message is simply deleted), so the worker
writes here, before the message is acknowledged, everything an operator needs to replay it.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import Any

import redis

from shared import keys
from shared.errors import TransientError


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

    def remove(self, entry_id: str) -> bool:
        pipe = self.client.pipeline()
        pipe.hdel(keys.DEADLETTER, entry_id)
        pipe.zrem(keys.DEADLETTER_INDEX, entry_id)
        removed, _ = pipe.execute()
        return bool(removed)

    def count(self) -> int:
        return int(self.client.zcard(keys.DEADLETTER_INDEX))


def _opt(value: Any) -> str | None:
    return None if value is None else str(value)
