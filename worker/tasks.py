"""The Celery tasks: an event in, a decision (or a dead letter) out; and the periodic sweep and
redrive. Short: each step lives elsewhere."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any

import redis
from celery import Task, shared_task
from celery.exceptions import Reject
from celery.signals import task_failure
from redis.exceptions import LockNotOwnedError

from shared import keys
from shared.errors import EventError, PermanentError, TransientError
from shared.events import GateEvent
from shared.logs import event_context
from shared.policy import PolicySet
from shared.queue import Publish, publisher
from worker import runtime
from worker.liveness import WORKER_ID
from worker.lock import ModelLock
from worker.metrics import DEAD_LETTERS, RETRIES
from worker.redrive import redrive as redrive_dead_letters
from worker.registry import Registry

log = logging.getLogger(__name__)


# How long a worker waits before it gives back a message it could not keep track of (Redis
# refused a write), so that a Redis in trouble is not hammered by the same message.
REQUEUE_PAUSE_SECONDS = 2.0


# max_retries=None on the task: Celery reads `retry(max_retries=None)` as "the task's default",
# which is 3 retries: GATE_RETRY_MAX_ATTEMPTS alone must say when an event is dead-lettered.
@shared_task(bind=True, name=keys.TASK_RECONCILE, max_retries=None)  # type: ignore[untyped-decorator]
def reconcile(self: Task, payload: Any) -> str:
    try:
        try:
            event = GateEvent.from_dict(payload)
        except EventError as exc:
            return _dead_letter(payload if isinstance(payload, dict) else {"raw": payload}, exc, 1)
        with event_context(event.to_dict()):
            outcome = _reconcile(self, event)
            log.info("%s", outcome)
            return outcome
    except redis.RedisError as exc:
        # Redis refused a write the gate needs to keep track of the event (its dead letter, the
        # bookkeeping of its deliveries): acknowledging the message would lose the event. It
        # goes back to the queue instead, and is tried again.
        log.error(
            "could not keep track of this event in Redis (%s: %s); the message goes back to the "
            "queue. Check Redis: that it is up, has memory left and uses maxmemory-policy "
            "noeviction",
            type(exc).__name__,
            exc,
        )
        time.sleep(REQUEUE_PAUSE_SECONDS)
        _uncount_start(self)
        raise Reject(exc, requeue=True) from exc


def _uncount_start(task: Task) -> None:
    """This start ends in a requeue, not in a dead worker: take it back from the count that
    `_reconcile` keeps, or the event would be dead-lettered as WorkerLost after
    GATE_MAX_DELIVERIES requeues (a few Redis hiccups). Best effort: Redis may refuse this
    write too, and then the count stays one too high."""
    if task.request.id is None:
        return
    key = keys.starts(str(task.request.id), int(task.request.retries or 0))
    try:
        client = runtime.current().clients.redis
        if client.exists(key):
            client.decr(key)
    except redis.RedisError as exc:
        log.warning("could not take back the start counted in %s: %s", key, exc)


def _reconcile(task: Task, event: GateEvent) -> str:
    rt = runtime.current()
    clients = rt.clients
    attempt = int(task.request.retries) + 1
    starts_key = keys.starts(str(task.request.id), int(task.request.retries))
    pipe = clients.redis.pipeline()
    pipe.exists(keys.done(event.event_id))
    pipe.incr(starts_key)
    pipe.expire(starts_key, keys.STARTS_TTL_SECONDS)
    done, starts, _ = pipe.execute()
    if done:
        return "already decided: nothing to do"
    if int(starts) > rt.settings.max_deliveries:
        lost = WorkerLost(
            f"the worker died {int(starts) - 1} times while deciding this event (a crash, an OOM "
            "kill?); look at the worker logs, then replay it"
        )
        return _dead_letter(event.to_dict(), lost, attempt)
    try:
        outcome = _decide(event)
    except (TransientError, redis.RedisError) as exc:
        if attempt >= rt.settings.retry_max_attempts:
            return _dead_letter(event.to_dict(), exc, attempt)
        delay = rt.settings.retry_delay(attempt)
        countdown = random.uniform(delay / 2, delay)  # jitter: retries of many events spread out
        log.warning("attempt %d failed (%s); retrying in %.1f s", attempt, exc, countdown)
        RETRIES.inc()
        raise task.retry(exc=exc, countdown=countdown, max_retries=None) from exc
    except PermanentError as exc:
        return _dead_letter(event.to_dict(), exc, attempt)
    except Exception as exc:  # a bug: never lose the event, never decide on an error path
        log.exception("unexpected error")
        return _dead_letter(event.to_dict(), exc, attempt)
    clients.redis.set(keys.done(event.event_id), str(time.time()), ex=keys.DONE_TTL_SECONDS)
    return outcome


def _dead_letter(event: dict[str, Any], error: BaseException, attempts: int) -> str:
    runtime.current().clients.deadletters.put(event, error, attempts)
    DEAD_LETTERS.labels(type(error).__name__).inc()
    log.error("dead-lettered after %d attempt(s): %s: %s", attempts, type(error).__name__, error)
    return f"dead-lettered after {attempts} attempt(s): {error}"


def _decide(event: GateEvent) -> str:
    """Reconcile under the model's lock: two events for one model never race. The lock is
    extended before every write, and a decision whose lock expired stops (worker/lock.py)."""
    rt = runtime.current()
    clients = rt.clients
    lock = ModelLock(clients.redis, event.model, rt.settings.model_lock_seconds, WORKER_ID)
    if not lock.acquire(wait=keys.MODEL_LOCK_WAIT_SECONDS):
        raise TransientError(
            f"model {event.model} is locked by another decision (or by a worker that died, "
            f"for {rt.settings.model_lock_seconds:g} s at most); retrying later"
        )
    try:
        return clients.pipeline.handle(event, keep=lock.keep)
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


class RetryNotPublished(TransientError):
    """The event failed for a reason that may go away, and its retry could not be published:
    a transient dead letter, which the redrive replays."""


@task_failure.connect  # type: ignore[untyped-decorator]
def _dead_letter_on_failure(
    sender: Task | None = None, exception: BaseException | None = None, args: Any = None, **_: Any
) -> None:
    """Failures that bypass the task's own handling (a retry that could not be published, a
    Redis error before the decision) still leave a dead letter before the message is acked.
    Celery (5.7 and later) sends task_failure for the Reject that Task.retry raises when it
    cannot publish the retry: that dead letter is RetryNotPublished, a transient one, so that
    the redrive replays it."""
    if sender is None or sender.name != keys.TASK_RECONCILE or not args:
        return
    payload = args[0] if isinstance(args[0], dict) else {"raw": args[0]}
    error = exception or RuntimeError("unknown failure")
    if isinstance(error, Reject):  # what Task.retry raises when it cannot publish the retry
        why = error.reason
        error = RetryNotPublished(f"its retry could not be published: {type(why).__name__}: {why}")
    try:
        _dead_letter(payload, error, int(getattr(sender.request, "retries", 0) or 0) + 1)
    except redis.RedisError:
        log.exception("could not dead-letter event %s: Redis is down", payload.get("event_id"))


@shared_task(name=keys.TASK_SWEEP)  # type: ignore[untyped-decorator]
def sweep() -> str:
    """Each registry's sweep, on its own: one failing (no MLflow in a deployment for another
    registry, a workspace outage) is logged and does not keep the others from running; the
    next interval tries again."""
    rt = runtime.current()
    publish = publisher(sweep.app)
    reports = [
        _sweep_safely(registry, rt.policies, rt.clients.pipeline.owed, publish)
        for registry in rt.clients.registries
    ]
    return "; ".join([*reports, _reviews_due(rt.clients.pipeline.reviews_due, publish)])


def _reviews_due(due: Callable[[], list[GateEvent]], publish: Publish) -> str:
    """Pending reviews that can be decided (a rejection, enough approvals, expired), in case the
    event of their vote was lost: sent to the pipeline like any event."""
    try:
        events = due()
        for event in events:
            publish(event.to_dict())
    except (TransientError, redis.RedisError) as exc:
        report = f"review sweep failed, trying again next interval: {type(exc).__name__}: {exc}"
        log.warning("%s", report)
        return report
    report = f"review sweep enqueued {len(events)} reviews due"
    log.info("%s", report)
    return report


def _sweep_safely(
    registry: Registry, policies: PolicySet, owed: Callable[[GateEvent], bool], publish: Publish
) -> str:
    name = f"{registry.name} sweep"
    try:
        count = 0
        for event in registry.sweep(policies):
            if owed(event):
                publish(event.to_dict())
                count += 1
        report = f"{name} enqueued {count} events owed"
    except (TransientError, redis.RedisError) as exc:
        report = f"{name} failed, trying again next interval: {type(exc).__name__}: {exc}"
        log.warning("%s", report)
    except PermanentError as exc:
        report = f"{name} failed: {type(exc).__name__}: {exc}"
        log.error("%s", report)
    except Exception as exc:  # a bug: log it, and let the other sweeps run
        report = f"{name} failed: {type(exc).__name__}: {exc}"
        log.exception("%s", report)
    else:
        log.info("%s", report)
    return report


@shared_task(name=keys.TASK_REDRIVE)  # type: ignore[untyped-decorator]
def redrive() -> str:
    rt = runtime.current()
    if not rt.settings.redrive_enabled:
        return "redrive is switched off (GATE_REDRIVE_ENABLED=false)"
    clients = rt.clients
    health = {registry.kind.value: registry.healthy for registry in clients.registries}
    result = redrive_dead_letters(
        clients.deadletters, health, publisher(redrive.app), rt.settings.redrive_batch
    )
    log.info(result)
    return result
