"""What a task does with a failed attempt, for every task that carries work (events, notification
deliveries): retry later with backoff, dead-letter, or give the message back to the queue when
Redis refused the dead letter itself. One retry budget (GATE_RETRY_MAX_ATTEMPTS) for all."""

from __future__ import annotations

import logging
import random
import time
from typing import Any

import redis
from celery import Task
from celery.exceptions import Reject

from shared.errors import TransientError
from worker import runtime
from worker.metrics import DEAD_LETTERS, RETRIES

log = logging.getLogger(__name__)

# How long a worker waits before it gives back a message it could not keep track of (Redis
# refused a write), so that a Redis in trouble is not hammered by the same message.
REQUEUE_PAUSE_SECONDS = 2.0


class RetryNotPublished(TransientError):
    """A retry could not be published (Redis refused it): the redrive replays the dead letter."""


def exhausted(attempt: int) -> bool:
    return attempt >= runtime.current().settings.retry_max_attempts


def retry_later(task: Task, error: BaseException, attempt: int, what: str) -> BaseException:
    """The Retry to raise: attempt `attempt + 1` after the backoff, with jitter (the retries of
    many messages spread out). The task must have `max_retries=None` (see worker/tasks.py)."""
    delay = runtime.current().settings.retry_delay(attempt)
    countdown = random.uniform(delay / 2, delay)
    log.warning("%s: attempt %d failed (%s); retrying in %.1f s", what, attempt, error, countdown)
    RETRIES.inc()
    retry: BaseException = task.retry(exc=error, countdown=countdown)
    return retry


def dead_letter(
    payload: dict[str, Any], error: BaseException, attempts: int, then: str = ""
) -> str:
    """Keep the message as a dead letter (`then`: what the operator can do, for the log)."""
    runtime.current().clients.deadletters.put(payload, error, attempts)
    DEAD_LETTERS.labels(type(error).__name__).inc()
    log.error(
        "dead-lettered after %d attempt(s): %s: %s%s", attempts, type(error).__name__, error, then
    )
    return f"dead-lettered after {attempts} attempt(s): {error}"


def give_back(error: redis.RedisError, what: str) -> Reject:
    """The Reject to raise when Redis refused a write the gate needs to keep track of `what` (its
    dead letter): acknowledging would lose it, so it goes back to the queue, after a pause."""
    log.error(
        "could not keep track of this %s in Redis (%s: %s); the message goes back to the queue. "
        "Check Redis: that it is up, has memory left and uses maxmemory-policy noeviction",
        what,
        type(error).__name__,
        error,
    )
    time.sleep(REQUEUE_PAUSE_SECONDS)
    return Reject(error, requeue=True)


def payload_of(args: Any) -> dict[str, Any]:
    return args[0] if isinstance(args[0], dict) else {"raw": args[0]}


def failed(sender: Task, exception: BaseException | None, args: Any) -> None:
    """A failure that bypassed the task's own handling (a retry that could not be published, a
    Redis error before the work) still leaves a dead letter before the message is acknowledged.
    Celery (5.7 and later) sends task_failure for the Reject that Task.retry raises when it
    cannot publish the retry: that dead letter is RetryNotPublished, a transient one, so that
    the redrive replays it."""
    payload = payload_of(args)
    error = exception or RuntimeError("unknown failure")
    if isinstance(error, Reject):  # what Task.retry raises when it cannot publish the retry
        why = error.reason
        error = RetryNotPublished(f"its retry could not be published: {type(why).__name__}: {why}")
    try:
        dead_letter(payload, error, int(getattr(sender.request, "retries", 0) or 0) + 1)
    except redis.RedisError:
        log.exception("could not dead-letter %s: Redis is down", payload.get("event_id"))
