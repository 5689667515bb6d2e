"""The Celery app both sides share: the receiver publishes to it, the workers consume from it.

Configured for at-least-once delivery on Redis: a message is acknowledged only after its task
has finished (or dead-lettered it), and goes back to the queue if the worker process dies.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery import Celery

from shared import keys
from shared.notify.delivery import is_delivery
from shared.settings import Settings


def celery_config(settings: Settings) -> dict[str, Any]:
    # On the Redis transport a message not acknowledged within the visibility timeout is
    # delivered again, and a countdown longer than it runs twice: keep it well above both the
    # longest backoff and the longest task.
    visibility = max(3600.0, settings.retry_backoff_max_seconds * 2 + 600)
    return {
        "broker_url": settings.redis_url,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {
            "visibility_timeout": visibility,
            "socket_timeout": 5,
            "socket_connect_timeout": 2,
        },
        "task_default_queue": keys.QUEUE,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_ignore_result": True,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "worker_hijack_root_logger": False,
        # Task events from the workers, for Flower. Not "task-sent" events: they would cost the
        # receiver a second publish before every acknowledgement.
        "worker_send_task_events": True,
        "enable_utc": True,
        # Used by `mlflow-gate worker --beat`: the sweep finds what lost webhooks left undecided,
        # the redrive replays transient dead letters once MLflow answers again.
        "beat_schedule": _beat_schedule(settings),
    }


def _beat_schedule(settings: Settings) -> dict[str, Any]:
    schedule = {
        "gate-sweep": {
            "task": keys.TASK_SWEEP,
            "schedule": settings.sweep_interval_seconds,
            "options": {"queue": keys.QUEUE, "expires": settings.sweep_interval_seconds},
        }
    }
    if settings.redrive_enabled:
        schedule["gate-redrive"] = {
            "task": keys.TASK_REDRIVE,
            "schedule": settings.redrive_interval_seconds,
            "options": {"queue": keys.QUEUE, "expires": settings.redrive_interval_seconds},
        }
    return schedule


def create_celery(settings: Settings) -> Celery:
    app = Celery("mlflow_gate")
    app.conf.update(celery_config(settings))
    return app


Publish = Callable[[dict[str, Any]], None]


def publisher(app: Celery) -> Publish:
    """Send an event to the workers (a notification's delivery to the deliver task, anything
    else to reconcile). No publish retries: the caller decides what a failure means (the
    receiver answers 503 so that MLflow retries; a replay keeps the dead letter)."""

    def publish(event: dict[str, Any]) -> None:
        task = keys.TASK_DELIVER if is_delivery(event) else keys.TASK_RECONCILE
        app.send_task(task, args=[event], queue=keys.QUEUE, retry=False)

    return publish
