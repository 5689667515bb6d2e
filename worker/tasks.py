"""The Celery task: an event in, a decision (or a dead letter) out. Short: each step elsewhere."""

from __future__ import annotations

import logging
import random
import time
from typing import Any

import redis
from celery import Task, shared_task

from shared import keys
from shared.errors import EventError, PermanentError, TransientError
from shared.events import GateEvent
from worker import runtime

log = logging.getLogger(__name__)


@shared_task(bind=True, name=keys.TASK_RECONCILE)  # type: ignore[untyped-decorator]
def reconcile(self: Task, payload: Any) -> str:
    rt = runtime.current()
    clients = rt.clients
    attempt = int(self.request.retries) + 1
    try:
        event = GateEvent.from_dict(payload)
    except EventError as exc:
        clients.deadletters.put(payload if isinstance(payload, dict) else {"raw": payload}, exc, 1)
        return f"dead-lettered malformed event: {exc}"
    if clients.redis.exists(keys.done(event.event_id)):
        return f"event {event.event_id} already decided"
    try:
        lock = clients.redis.lock(
            keys.model_lock(event.model), timeout=keys.MODEL_LOCK_TTL_SECONDS, blocking_timeout=60
        )
        if not lock.acquire():
            raise TransientError(f"model {event.model} stayed locked by another decision")
        try:
            outcome = clients.reconciler.handle(event)
        finally:
            lock.release()
    except (TransientError, redis.RedisError) as exc:
        if attempt >= rt.settings.retry_max_attempts:
            clients.deadletters.put(event.to_dict(), exc, attempt)
            log.error("event %s dead-lettered after %d attempts: %s", event.event_id, attempt, exc)
            return f"dead-lettered after {attempt} attempts: {exc}"
        delay = rt.settings.retry_delay(attempt)
        countdown = random.uniform(delay / 2, delay)  # jitter: retries of many events spread out
        log.warning(
            "event %s attempt %d failed (%s); retrying in %.1f s",
            event.event_id,
            attempt,
            exc,
            countdown,
        )
        raise self.retry(exc=exc, countdown=countdown, max_retries=None) from exc
    except PermanentError as exc:
        clients.deadletters.put(event.to_dict(), exc, attempt)
        log.error("event %s dead-lettered: %s", event.event_id, exc)
        return f"dead-lettered: {exc}"
    except Exception as exc:  # a bug: never lose the event, never decide on an error path
        clients.deadletters.put(event.to_dict(), exc, attempt)
        log.exception("event %s dead-lettered after an unexpected error", event.event_id)
        return f"dead-lettered after an unexpected error: {exc!r}"
    clients.redis.set(keys.done(event.event_id), str(time.time()), ex=keys.DONE_TTL_SECONDS)
    log.info("event %s (%s %s): %s", event.event_id, event.webhook_event, event.model, outcome)
    return outcome
