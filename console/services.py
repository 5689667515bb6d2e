"""What the console's pages use: the ledger, the dead-letter store, the queue, identities and the
status report, each made once per process on first use (after gunicorn forks)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import redis
from flask import current_app

from shared.deadletter import DeadLetterStore
from shared.identity import Identities
from shared.ledger import Ledger
from shared.policy import PolicySet, load_policies
from shared.queue import Publish, create_celery, publisher
from shared.settings import Settings


def _status(settings: Settings) -> dict[str, Any]:
    from cli.status import gather_status  # what `mlflow-gate status` knows

    return gather_status(settings)


@dataclass
class Services:
    settings: Settings
    identities: Identities
    clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)
    status: Callable[[Settings], dict[str, Any]] = _status
    redis_client: redis.Redis | None = None
    publish_to: Publish | None = None
    ledger_made: Ledger | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def ledger(self) -> Ledger:
        with self._lock:
            if self.ledger_made is None:
                book = Ledger(self.settings.database_url)
                book.check_current()  # a ledger behind the code: say so, do not migrate it
                self.ledger_made = book
            return self.ledger_made

    def dead_letters(self) -> DeadLetterStore:
        with self._lock:
            if self.redis_client is None:
                self.redis_client = redis.Redis.from_url(
                    self.settings.redis_url, socket_timeout=5, socket_connect_timeout=2
                )
            return DeadLetterStore(self.redis_client)

    def publish(self, payload: dict[str, Any]) -> None:
        with self._lock:
            if self.publish_to is None:
                self.publish_to = publisher(create_celery(self.settings))
            send = self.publish_to
        send(payload)

    def policies(self) -> PolicySet:
        """The active policy file, read now (a change shows without a restart)."""
        return load_policies(self.settings.policy_file)

    def may_operate(self, name: str) -> bool:
        """Replay and purge: an MLflow admin, or a member of GATE_CONSOLE_ADMIN_ROLE (asked of
        MLflow now, not remembered from the sign-in)."""
        if self.identities.is_admin(name):
            return True
        role = self.settings.console_admin_role
        return bool(role) and role in self.identities.roles_of(name)


def services() -> Services:
    found: Services = current_app.extensions["mlflow_gate"]
    return found
