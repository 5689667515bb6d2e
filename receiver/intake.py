"""Dedupe by delivery id, then persist the event to the queue. Nothing else on the hot path.

The receiver's own path is one atomic round trip (receiver/enqueue.py). With a `publish`
function of its own instead (the unit tests, a tool), the same guarantees take three: claim the
delivery id as pending, publish, mark it done.
"""

from __future__ import annotations

import contextlib
from enum import Enum
from typing import Any

import redis

from receiver.enqueue import AtomicEnqueue, Queued
from shared import keys
from shared.errors import TransientError
from shared.events import GateEvent
from shared.queue import Publish
from shared.urls import scrubbed

_PENDING = b"pending"


class Accepted(str, Enum):
    ENQUEUED = "enqueued"
    DUPLICATE = "duplicate"


class QueueUnavailable(TransientError):
    """Redis could not take the event: answer 503 so that the sender retries.

    Its message is what the sender is told; `detail`, the underlying error's text (which can
    name hosts), is for the receiver's log alone, with any password in it hidden.
    """

    def __init__(self, message: str, cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.detail = scrubbed(f"{type(cause).__name__}: {cause}") if cause is not None else ""


class Intake:
    def __init__(
        self,
        client: redis.Redis,
        publish: Publish,
        dedupe_ttl_seconds: int,
        enqueue: AtomicEnqueue | None = None,
    ) -> None:
        self.client = client
        self.publish = publish
        self.dedupe_ttl = dedupe_ttl_seconds
        self.enqueue = enqueue

    def accept(self, event: GateEvent, payload: dict[str, Any] | None = None) -> Accepted:
        """Enqueue the event once per delivery id; raise QueueUnavailable if it cannot be.
        `payload`: the event's to_dict(), when the caller has it already."""
        marker = keys.delivery(event.registry.value, event.event_id)
        payload = event.to_dict() if payload is None else payload
        if self.enqueue is not None:
            return _accept_atomically(self.enqueue, marker, payload)
        try:
            claimed = self.client.set(
                marker, _PENDING, nx=True, ex=keys.DELIVERY_PENDING_TTL_SECONDS
            )
            if not claimed:
                if self.client.get(marker) == _PENDING:
                    # The first copy is being enqueued right now; it may still fail, so this
                    # copy must not be acknowledged yet.
                    raise QueueUnavailable("the same delivery is being enqueued; retry shortly")
                return Accepted.DUPLICATE
        except redis.RedisError as exc:
            raise QueueUnavailable("the gate's queue (Redis) did not answer", exc) from exc
        try:
            self.publish(payload)
        except Exception as exc:
            self._release(marker)
            raise QueueUnavailable("the gate's queue could not take the event", exc) from exc
        # Enqueued already: acknowledge it even if this fails. The pending marker then expires on
        # its own, and a resend is a harmless duplicate (the worker reconciles current state).
        with contextlib.suppress(redis.RedisError):
            self.client.set(marker, event.event_id, ex=self.dedupe_ttl)
        return Accepted.ENQUEUED

    def _release(self, marker: str) -> None:
        with contextlib.suppress(redis.RedisError):  # else it expires on its own, soon
            self.client.delete(marker)


def _accept_atomically(enqueue: AtomicEnqueue, marker: str, payload: dict[str, Any]) -> Accepted:
    try:
        queued = enqueue(marker, payload)
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise QueueUnavailable("the gate's queue (Redis) did not answer", exc) from exc
    except redis.RedisError as exc:  # it answered, and refused (out of memory, say)
        raise QueueUnavailable("the gate's queue could not take the event", exc) from exc
    if queued is Queued.IN_PROGRESS:
        raise QueueUnavailable("the same delivery is being enqueued; retry shortly")
    return Accepted.ENQUEUED if queued is Queued.QUEUED else Accepted.DUPLICATE
