"""The per-model lock: one decision on a model at a time, across every worker and command.

A Redis lock expires (so that a worker that died does not block the model for ever), so holding
it at the start of a decision is not enough: `keep()` is called before every write. It extends
the lock, and raises LockLost when it has expired and may be held by another decision, which
then must not be undone by this one. The event is retried: it then acts on the state the other
decision left.
"""

from __future__ import annotations

import uuid

import redis
from redis.exceptions import LockError, LockNotOwnedError

from shared import keys
from shared.errors import TransientError


class LockLost(TransientError):
    """The model's lock expired during a decision; it was stopped before its next write."""


class ModelLock:
    """`owner`, the holder's worker id, starts the lock's token, so that the locks of a worker
    found dead can be freed at once (worker/liveness.py) instead of when they expire."""

    def __init__(self, client: redis.Redis, model: str, seconds: float, owner: str = "") -> None:
        self.model = model
        self.seconds = seconds
        self.token = f"{owner}/{uuid.uuid4().hex}"
        self._lock = client.lock(keys.model_lock(model), timeout=seconds)

    def acquire(self, wait: float) -> bool:
        return bool(self._lock.acquire(blocking_timeout=wait, token=self.token))

    def keep(self) -> None:
        """Extend the lock to its full time again; LockLost if it is no longer ours."""
        try:
            self._lock.reacquire()
        except (LockNotOwnedError, LockError):
            raise LockLost(
                f"the lock on model {self.model} expired during its decision (after "
                f"{self.seconds:g} s without a write), or was freed because this worker sent no "
                "heartbeat for GATE_WORKER_DEAD_AFTER_SECONDS; the decision was stopped before "
                "its next write and is retried. If this repeats, raise GATE_MODEL_LOCK_SECONDS "
                "above the slowest registry call, and check this worker's connection to Redis"
            ) from None

    def release(self) -> None:
        self._lock.release()
