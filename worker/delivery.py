"""The Celery task that delivers one notification to one sink: the sink found by key in the
policies in force, its URL and secret read from the environment now, one HTTP attempt; a
transient failure is retried with the events' backoff (a countdown, never a sleep), then
dead-lettered like an event; a permanent one is dead-lettered at once. `mlflow-gate dlq` shows
and replays them, and the replay keeps the delivery's id."""

from __future__ import annotations

import logging
import random
import time
from typing import Any

import redis
from celery import Task, shared_task
from celery.exceptions import Reject
from celery.signals import task_failure

from shared import keys
from shared.errors import ConfigError, EventError, PermanentError, TransientError
from shared.logs import event_context
from shared.notify.delivery import Delivery
from shared.notify.errors import SinkNotConfigured
from shared.notify.send import send
from shared.notify.sinks import find, label, resolve
from worker import runtime
from worker.metrics import DEAD_LETTERS, RETRIES

log = logging.getLogger(__name__)

# How long a worker waits before it gives back a message it could not keep track of (Redis
# refused the dead letter), so that a Redis in trouble is not hammered by the same message.
REQUEUE_PAUSE_SECONDS = 2.0


# max_retries=None on the task itself: Celery reads `retry(max_retries=None)` as "the task's
# default" (3), which would cut the retry budget short; the budget is counted here instead.
@shared_task(bind=True, name=keys.TASK_DELIVER, max_retries=None)  # type: ignore[untyped-decorator]
def deliver(self: Task, payload: Any) -> str:
    try:
        try:
            delivery = Delivery.from_dict(payload)
        except EventError as exc:
            return _dead_letter(payload if isinstance(payload, dict) else {"raw": payload}, exc, 1)
        with event_context(delivery.to_dict()):
            outcome = _deliver(self, delivery)
            log.info("%s", outcome)
            return outcome
    except redis.RedisError as exc:
        # The dead letter could not be written: acknowledging would lose the notification.
        log.error(
            "could not dead-letter this notification in Redis (%s: %s); the message goes back "
            "to the queue. Check Redis: that it is up, has memory left and uses "
            "maxmemory-policy noeviction",
            type(exc).__name__,
            exc,
        )
        time.sleep(REQUEUE_PAUSE_SECONDS)
        raise Reject(exc, requeue=True) from exc


def _deliver(task: Task, delivery: Delivery) -> str:
    rt = runtime.current()
    attempt = int(task.request.retries) + 1
    where = label(delivery.sink)
    try:
        sink = find(rt.policies, delivery.sink)
        if sink is None:
            raise SinkNotConfigured(
                f"{where} is no longer configured in {rt.policies.source}: add it back and "
                f"`mlflow-gate dlq replay {delivery.delivery_id}`, or drop the notification "
                "(`mlflow-gate dlq purge`)"
            )
        try:
            endpoint = resolve(sink)
        except ConfigError as exc:
            raise SinkNotConfigured(
                f"{exc}; then restart the workers and `mlflow-gate dlq replay "
                f"{delivery.delivery_id}`"
            ) from None
        status = send(endpoint, delivery)
    except TransientError as exc:
        if attempt >= rt.settings.retry_max_attempts:
            return _dead_letter(delivery.to_dict(), exc, attempt)
        delay = rt.settings.retry_delay(attempt)
        countdown = random.uniform(delay / 2, delay)  # jitter: many retries spread out
        log.warning(
            "notification %s to %s: attempt %d failed (%s); retrying in %.1f s",
            delivery.notice_type, where, attempt, exc, countdown,
        )  # fmt: skip
        RETRIES.inc()
        raise task.retry(exc=exc, countdown=countdown) from exc
    except PermanentError as exc:
        return _dead_letter(delivery.to_dict(), exc, attempt)
    except Exception as exc:  # a bug: never lose the notification
        log.exception("unexpected error delivering a notification")
        return _dead_letter(delivery.to_dict(), exc, attempt)
    return f"delivered {delivery.notice_type} to {where} ({status}) after {attempt} attempt(s)"


def _dead_letter(payload: dict[str, Any], error: BaseException, attempts: int) -> str:
    runtime.current().clients.deadletters.put(payload, error, attempts)
    DEAD_LETTERS.labels(type(error).__name__).inc()
    # A permanent error's message says what to fix; a transient one's only what happened.
    then = (
        "; the redrive (worker --beat) tries it again, or `mlflow-gate dlq replay "
        f"{payload.get('event_id')}` once the sink answers"
        if isinstance(error, TransientError)
        else ""
    )
    log.error(
        "notification dead-lettered after %d attempt(s): %s: %s%s",
        attempts, type(error).__name__, error, then,
    )  # fmt: skip
    return f"dead-lettered after {attempts} attempt(s): {error}"


@task_failure.connect  # type: ignore[untyped-decorator]
def _dead_letter_on_failure(
    sender: Task | None = None, exception: BaseException | None = None, args: Any = None, **_: Any
) -> None:
    """A failure that bypasses the task's own handling (a retry that could not be published)
    still leaves a dead letter before the message is acknowledged."""
    if sender is None or sender.name != keys.TASK_DELIVER or not args:
        return
    payload = args[0] if isinstance(args[0], dict) else {"raw": args[0]}
    error = exception or RuntimeError("unknown failure")
    try:
        _dead_letter(payload, error, int(getattr(sender.request, "retries", 0) or 0) + 1)
    except redis.RedisError:
        log.exception("could not dead-letter notification %s: Redis is down", payload.get(
            "event_id"))  # fmt: skip
