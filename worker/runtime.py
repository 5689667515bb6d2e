"""What a worker process holds: settings and policies from start, clients made once per process.

The Celery parent validates settings and policies before it forks; each child then opens its own
Redis, HTTP and ledger connections (sockets must not be shared across a fork).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import redis
from celery import current_app

from shared.deadletter import DeadLetterStore
from shared.ledger import Ledger
from shared.notify.links import links
from shared.notify.outbox import outbox
from shared.policy import PolicySet
from shared.queue import publisher
from shared.settings import Settings
from worker.pipeline import Pipeline
from worker.registries import Registries, build


@dataclass
class Clients:
    pid: int
    redis: redis.Redis
    registries: Registries
    ledger: Ledger
    pipeline: Pipeline
    deadletters: DeadLetterStore


@dataclass
class Runtime:
    settings: Settings
    policies: PolicySet
    _clients: Clients | None = field(default=None, repr=False)

    @property
    def clients(self) -> Clients:
        if self._clients is None or self._clients.pid != os.getpid():
            client = redis.Redis.from_url(
                self.settings.redis_url, socket_timeout=5, socket_connect_timeout=2
            )
            registries = build(self.settings)
            ledger = Ledger(self.settings.database_url)  # its pool is this process's own
            settings = self.settings
            pipeline = Pipeline(
                registries,
                self.policies,
                ledger,
                notify=outbox(self.policies, publisher(current_app)),
                links=lambda model, version: links(settings, model, version),
            )
            self._clients = Clients(
                pid=os.getpid(),
                redis=client,
                registries=registries,
                ledger=ledger,
                pipeline=pipeline,
                deadletters=DeadLetterStore(client),
            )
        return self._clients


_current: Runtime | None = None


def install(runtime: Runtime) -> None:
    global _current
    _current = runtime


def current() -> Runtime:
    """The runtime the worker command installed; built from the environment if none was."""
    global _current
    if _current is None:
        from shared.policy import load_policies

        settings = Settings.from_env()
        _current = Runtime(settings, load_policies(settings.policy_file))
    return _current
