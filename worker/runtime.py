"""What a worker process holds: settings and policies from start, clients made once per process.

The Celery parent validates settings and policies before it forks; each child then opens its own
Redis and HTTP connections (sockets must not be shared across a fork).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import redis

from shared.deadletter import DeadLetterStore
from shared.policy import PolicySet
from shared.settings import Settings
from worker.databricks_api import DatabricksApi
from worker.decisions import DecisionLog
from worker.mlflow_api import MlflowApi
from worker.reconcile import Reconciler
from worker.transition_requests import Approvals, DatabricksReconciler


@dataclass
class Clients:
    pid: int
    redis: redis.Redis
    api: MlflowApi
    reconciler: Reconciler
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
            api = MlflowApi(self.settings)
            self._clients = Clients(
                pid=os.getpid(),
                redis=client,
                api=api,
                reconciler=Reconciler(
                    api, self.policies, DecisionLog(client), databricks=self._databricks(client)
                ),
                deadletters=DeadLetterStore(client),
            )
        return self._clients

    def _databricks(self, client: redis.Redis) -> DatabricksReconciler | None:
        """The Databricks flow, when a workspace is configured (GATE_DATABRICKS_HOST)."""
        if not self.settings.databricks_host:
            return None
        return DatabricksReconciler(
            DatabricksApi(self.settings), self.policies, DecisionLog(client), Approvals(client)
        )


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
