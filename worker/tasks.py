"""The Celery tasks: an event in, a decision (or a dead letter) out; and the periodic sweep and
redrive. Short: each step lives elsewhere."""

from __future__ import annotations

import logging
import random
import time
from typing import Any

import redis
from celery import Task, shared_task
from celery.signals import task_failure
from redis.exceptions import LockNotOwnedError

from shared import keys
from shared.errors import EventError, PermanentError, TransientError
from shared.events import GateEvent
from shared.queue import publisher
from worker import runtime
from worker.redrive import redrive as redrive_dead_letters
from worker.sweep import sweep as sweep_mlflow

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
    starts_key = keys.starts(str(self.request.id), int(self.request.retries))
    starts = int(clients.redis.incr(starts_key))
    clients.redis.expire(starts_key, keys.STARTS_TTL_SECONDS)
    if starts > rt.settings.max_deliveries:
        lost = WorkerLost(
            f"the worker died {starts - 1} times while deciding this event (a crash, an OOM "
            "kill?); look at the worker logs, then replay it"
        )
        clients.deadletters.put(event.to_dict(), lost, attempt)
        return f"dead-lettered: {lost}"
    try:
        outcome = _decide(event)
    except (TransientError, redis.RedisError) as exc:
        if attempt >= rt.settings.retry_max_attempts:
            clients.deadletters.put(event.to_dict(), exc, attempt)
            log.error("event %s dead-lettered after %d attempts: %s", event.event_id, attempt, exc)
            return f"dead-lettered after {attempt} attempts: {exc}"
        delay = rt.settings.retry_delay(attempt)
        countdown = random.uniform(delay / 2, delay)  # jitter: retries of many events spread out
        log.warning(
            "event %s attempt %d failed (%s); retrying in %.1f s",
            event.event_id, attempt, exc, countdown,
        )  # fmt: skip
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


def _decide(event: GateEvent) -> str:
    """Reconcile under the model's lock: two events for one model never race."""
    rt = runtime.current()
    clients = rt.clients
    lock = clients.redis.lock(
        keys.model_lock(event.model),
        timeout=rt.settings.model_lock_seconds,
        blocking_timeout=keys.MODEL_LOCK_WAIT_SECONDS,
    )
    if not lock.acquire():
        raise TransientError(
            f"model {event.model} is locked by another decision (or by a worker that died, "
            f"for {rt.settings.model_lock_seconds:g} s at most); retrying later"
        )
    try:
        return clients.reconciler.handle(event)
    finally:
        try:
            lock.release()
        except LockNotOwnedError:
            log.warning(
                "the lock on model %s expired during its decision; raise "
                "GATE_MODEL_LOCK_SECONDS above the longest decision",
                event.model,
            )


class WorkerLost(PermanentError):
    """The event's worker process died again and again: a poison message."""


@task_failure.connect  # type: ignore[untyped-decorator]
def _dead_letter_on_failure(
    sender: Task | None = None, exception: BaseException | None = None, args: Any = None, **_: Any
) -> None:
    """Failures that bypass the task's own handling (a retry that could not be published, a
    Redis error before the decision) still leave a dead letter before the message is acked."""
    if sender is None or sender.name != keys.TASK_RECONCILE or not args:
        return
    payload = args[0] if isinstance(args[0], dict) else {"raw": args[0]}
    error = exception or RuntimeError("unknown failure")
    try:
        attempts = int(getattr(sender.request, "retries", 0) or 0) + 1
        runtime.current().clients.deadletters.put(payload, error, attempts)
        log.error("event %s dead-lettered after a task failure: %r", payload.get("event_id"), error)
    except redis.RedisError:
        log.exception("could not dead-letter event %s: Redis is down", payload.get("event_id"))


@shared_task(name=keys.TASK_SWEEP)  # type: ignore[untyped-decorator]
def sweep() -> str:
    rt = runtime.current()
    report = str(sweep_mlflow(rt.clients.api, rt.policies, publisher(sweep.app)))
    log.info(report)
    return report


@shared_task(name=keys.TASK_REDRIVE)  # type: ignore[untyped-decorator]
def redrive() -> str:
    rt = runtime.current()
    if not rt.settings.redrive_enabled:
        return "redrive is switched off (GATE_REDRIVE_ENABLED=false)"
    clients = rt.clients
    result = redrive_dead_letters(
        clients.deadletters, clients.api, publisher(redrive.app), rt.settings.redrive_batch
    )
    log.info(result)
    return result
