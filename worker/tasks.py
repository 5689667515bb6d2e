"""The Celery tasks: an event in, a decision (or a dead letter) out; and the periodic sweep and
redrive. Short: each step lives elsewhere."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import redis
from celery import Task, shared_task
from celery.signals import task_failure
from redis.exceptions import LockNotOwnedError

from shared import keys
from shared.errors import EventError, PermanentError, TransientError
from shared.events import GateEvent
from shared.logs import event_context
from shared.policy import PolicySet
from shared.queue import Publish, publisher
from worker import attempts, runtime
from worker.liveness import WORKER_ID
from worker.lock import ModelLock
from worker.redrive import redrive as redrive_dead_letters
from worker.registry import Registry

log = logging.getLogger(__name__)


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
        # bookkeeping of its deliveries): it goes back to the queue and is tried again.
        back = attempts.give_back(exc, "event")
        _uncount_start(self)
        raise back from exc


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
        if attempts.exhausted(attempt):
            return _dead_letter(event.to_dict(), exc, attempt)
        raise attempts.retry_later(task, exc, attempt, "event") from exc
    except PermanentError as exc:
        return _dead_letter(event.to_dict(), exc, attempt)
    except Exception as exc:  # a bug: never lose the event, never decide on an error path
        log.exception("unexpected error")
        return _dead_letter(event.to_dict(), exc, attempt)
    clients.redis.set(keys.done(event.event_id), str(time.time()), ex=keys.DONE_TTL_SECONDS)
    return outcome


def _dead_letter(event: dict[str, Any], error: BaseException, tried: int) -> str:
    return attempts.dead_letter(event, error, tried)


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


RetryNotPublished = attempts.RetryNotPublished


@task_failure.connect  # type: ignore[untyped-decorator]
def _dead_letter_on_failure(
    sender: Task | None = None, exception: BaseException | None = None, args: Any = None, **_: Any
) -> None:
    """An event's failure that bypassed the task's own handling: see attempts.failed."""
    if sender is not None and sender.name == keys.TASK_RECONCILE and args:
        attempts.failed(sender, exception, args)


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
