"""Every Redis key and queue name the gate uses, in one place."""

from __future__ import annotations

PREFIX = "gate"

# The Celery queue and task that carry events from the receiver to the workers.
QUEUE = "gate.events"
TASK_RECONCILE = "gate.reconcile"
TASK_SWEEP = "gate.sweep"
TASK_REDRIVE = "gate.redrive"
# Notifications: one delivery to one sink (worker/delivery.py), on the same queue.
TASK_DELIVER = "gate.deliver"

# Where kombu's Redis transport keeps delivered, not yet acknowledged messages: a hash of
# delivery tag -> [message, exchange, routing key], and a sorted set of tags by delivery time.
UNACKED = "unacked"
UNACKED_INDEX = "unacked_index"

# Live workers: a set of worker ids, and per worker a heartbeat (the delivery tags it holds, and
# when it said so) that expires after GATE_WORKER_DEAD_AFTER_SECONDS without a new one.
WORKERS = f"{PREFIX}:workers"

# Dead letters: a hash of id -> entry, and a sorted set of ids by time of the last failure.
DEADLETTER = f"{PREFIX}:deadletter"
DEADLETTER_INDEX = f"{PREFIX}:deadletter:index"

# How long a "pending" delivery marker lives: long enough to cover one enqueue, short enough
# that a receiver that died mid-request does not block MLflow's retry for long.
DELIVERY_PENDING_TTL_SECONDS = 30

# A finished event is remembered for a day, so a redelivered Celery message is a no-op.
DONE_TTL_SECONDS = 86_400

# How long a task waits for another decision on the same model before it retries later.
MODEL_LOCK_WAIT_SECONDS = 5


def delivery(source: str, delivery_id: str) -> str:
    """Marks a webhook delivery as seen: MLflow's own retries resend the same delivery id."""
    return f"{PREFIX}:delivery:{source}:{delivery_id}"


def done(event_id: str) -> str:
    return f"{PREFIX}:done:{event_id}"


# Counts the starts of one task message (per retry): more starts than one means its worker died.
STARTS_TTL_SECONDS = 86_400


def starts(task_id: str, retries: int) -> str:
    return f"{PREFIX}:starts:{task_id}:{retries}"


def model_lock(model: str) -> str:
    return f"{PREFIX}:lock:model:{model}"


MODEL_LOCKS = f"{PREFIX}:lock:model:*"  # a pattern for SCAN


def worker_heartbeat(worker_id: str) -> str:
    return f"{PREFIX}:worker:{worker_id}"
