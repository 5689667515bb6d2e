"""The Celery task that delivers one notification to one sink: the sink found by key in the
policies in force, its URL and secret read from the environment now, one HTTP attempt; a
transient failure is retried with the events' backoff (a countdown, never a sleep), then
dead-lettered like an event; a permanent one is dead-lettered at once. `mlflow-gate dlq` shows
and replays them, and the replay keeps the delivery's id."""

from __future__ import annotations

import logging
from typing import Any

import redis
from celery import Task, shared_task
from celery.signals import task_failure

from shared import keys
from shared.errors import ConfigError, EventError, PermanentError, TransientError
from shared.logs import event_context
from shared.notify.delivery import Delivery
from shared.notify.errors import SinkNotConfigured
from shared.notify.send import send
from shared.notify.sinks import find, label, resolve
from worker import attempts, runtime

log = logging.getLogger(__name__)


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
        raise attempts.give_back(exc, "notification") from exc


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
        if attempts.exhausted(attempt):
            return _dead_letter(delivery.to_dict(), exc, attempt)
        what = f"notification {delivery.notice_type} to {where}"
        raise attempts.retry_later(task, exc, attempt, what) from exc
    except PermanentError as exc:
        return _dead_letter(delivery.to_dict(), exc, attempt)
    except Exception as exc:  # a bug: never lose the notification
        log.exception("unexpected error delivering a notification")
        return _dead_letter(delivery.to_dict(), exc, attempt)
    return f"delivered {delivery.notice_type} to {where} ({status}) after {attempt} attempt(s)"


def _dead_letter(payload: dict[str, Any], error: BaseException, tried: int) -> str:
    # A permanent error's message says what to fix; a transient one's only what happened.
    then = (
        "; the redrive (worker --beat) tries it again, or `mlflow-gate dlq replay "
        f"{payload.get('event_id')}` once the sink answers"
        if isinstance(error, TransientError)
        else ""
    )
    return attempts.dead_letter(payload, error, tried, then)


@task_failure.connect  # type: ignore[untyped-decorator]
def _dead_letter_on_failure(
    sender: Task | None = None, exception: BaseException | None = None, args: Any = None, **_: Any
) -> None:
    """A delivery's failure that bypassed the task's own handling: see attempts.failed (a
    retry that could not be published is a transient dead letter the redrive replays)."""
    if sender is not None and sender.name == keys.TASK_DELIVER and args:
        attempts.failed(sender, exception, args)
