"""The real stack, started once per test session: MLflow (SQL backend), a private Redis, the
receiver over HTTP and a Celery worker, with the webhook registered through the CLI.

Each test works on its own registered model, so tests share the stack without sharing state.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from harness import recent
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion

from cli.devstack import (
    ManagedProcess,
    free_port,
    gate_command,
    http_ok,
    start_mlflow_server,
    start_redis,
    wait_until,
)
from shared.ledger import Ledger

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

SECRET = "integration-secret"

POLICY = """
policies:
  - name: production-quality
    models: ["*"]
    targets: [champion, Production]
    rules:
      - metric: validation_accuracy
        min: 0.90
      - description: required
  - name: staging-smoke
    models: ["*"]
    targets: [Staging]
    rules:
      - metric: validation_accuracy
        min: 0.50
  - name: hardening-compare
    models: ["hardening-*"]
    targets: [Production]
    rules:
      - compare_to: Production
        metric: validation_accuracy
"""


def signed_headers(body: bytes, delivery_id: str, timestamp: int | None = None) -> dict[str, str]:
    """Headers as MLflow signs a delivery, computed here independently of shared.signing."""
    sent_at = str(int(time.time()) if timestamp is None else timestamp)
    content = f"{delivery_id}.{sent_at}.".encode() + body
    mac = hmac.new(SECRET.encode(), content, hashlib.sha256)
    return {
        "Content-Type": "application/json",
        "X-MLflow-Delivery-Id": delivery_id,
        "X-MLflow-Timestamp": sent_at,
        "X-MLflow-Signature": "v1," + base64.b64encode(mac.digest()).decode(),
    }


class Stack:
    """MLflow, Redis, the receiver and workers on fixed loopback ports, each one stoppable and
    restartable (on the same data and port) by the fault tests."""

    def __init__(
        self,
        workdir: Path,
        *,
        redis_appendonly: bool = False,
        mlflow_env: dict[str, str] | None = None,
        policy: str = POLICY,
        database_url: str | None = None,
        mlflow_app: str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.redis_appendonly = redis_appendonly
        self.mlflow_env = mlflow_env or {}
        self.mlflow_app = mlflow_app
        self.processes: dict[str, ManagedProcess] = {}
        self.redis_port, self.mlflow_port, self.receiver_port = (free_port() for _ in range(3))
        self.redis_url = f"redis://127.0.0.1:{self.redis_port}/0"
        self.mlflow_uri = f"http://127.0.0.1:{self.mlflow_port}"
        self.receiver_url = f"http://127.0.0.1:{self.receiver_port}"
        policy_file = workdir / "policy.yaml"
        policy_file.write_text(policy)
        self.database_url = database_url or f"sqlite:///{workdir / 'ledger.db'}"
        self.env = {
            **os.environ,
            "MLFLOW_TRACKING_URI": self.mlflow_uri,
            "GATE_REDIS_URL": self.redis_url,
            "GATE_WEBHOOK_SECRET": SECRET,
            "GATE_POLICY_FILE": str(policy_file),
            "GATE_DATABASE_URL": self.database_url,
            "GATE_RETRY_MAX_ATTEMPTS": "3",
            "GATE_RETRY_BACKOFF_SECONDS": "0.5",
            "GATE_RETRY_BACKOFF_MAX_SECONDS": "1",
            "GATE_MLFLOW_TIMEOUT_SECONDS": "5",
            "GATE_REDRIVE_INTERVAL_SECONDS": "1",
            "GATE_SWEEP_INTERVAL_SECONDS": "1",
            "GATE_MODEL_LOCK_SECONDS": "4",
            "GATE_WORKER_METRICS_PORT": str(free_port()),
            "GATE_LOG_FORMAT": "json",
            **(env or {}),
        }
        self.client = MlflowClient(tracking_uri=self.mlflow_uri, registry_uri=self.mlflow_uri)
        self.redis = redis.Redis.from_url(self.redis_url, decode_responses=True)
        self._ledger: Ledger | None = None
        self._starts = 0

    # -- processes -------------------------------------------------------------------------
    def up(self) -> Stack:
        self.start_redis()
        self.start_mlflow()
        self.start_receiver()
        self.start_worker()
        self.gate("webhook", "register", "--url", f"{self.receiver_url}/webhooks/mlflow")
        time.sleep(1.5)  # MLFLOW_WEBHOOK_CACHE_TTL=1: the server sees the new webhook
        return self

    def start_redis(self) -> None:
        self.processes["redis"], _ = start_redis(
            self.workdir, port=self.redis_port, appendonly=self.redis_appendonly
        )

    def start_mlflow(self) -> None:
        self.processes["mlflow"], _ = start_mlflow_server(
            self.workdir / "mlflow",
            port=self.mlflow_port,
            extra_env=self.mlflow_env,
            app_name=self.mlflow_app,
        )

    def start_receiver(self) -> None:
        argv = ["receiver", "--host", "127.0.0.1", "--port", str(self.receiver_port)]
        proc = self._start("receiver", [*argv, "--workers", "1"], self.env)
        proc.wait_ready(lambda: http_ok(f"{self.receiver_url}/healthz"), 30, "the receiver")

    def start_worker(
        self, name: str = "worker", *, beat: bool = False, env: dict[str, str] | None = None
    ) -> ManagedProcess:
        argv = ["worker", "--concurrency", "2", *(["--beat"] if beat else [])]
        proc = self._start(name, argv, {**self.env, **(env or {})})
        proc.wait_ready(lambda: "ready." in proc.log_tail(20000), 60, name)
        return proc

    def _start(self, name: str, argv: list[str], env: dict[str, str]) -> ManagedProcess:
        self._starts += 1
        log = self.workdir / f"{name}-{self._starts}.log"
        self.processes[name] = ManagedProcess.start([*gate_command(), *argv], env, log)
        return self.processes[name]

    def stop(self, name: str, timeout: float = 10) -> None:
        self.processes[name].stop(timeout)

    def close(self) -> None:
        for proc in reversed(list(self.processes.values())):
            proc.stop(timeout=3)
        if self._ledger is not None:
            self._ledger.close()

    def gate(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [*gate_command(), *args], env=self.env, capture_output=True, text=True, timeout=120
        )
        if check and result.returncode != 0:
            raise AssertionError(f"mlflow-gate {' '.join(args)} failed: {result.stderr}")
        return result

    def new_model(self) -> str:
        name = f"model-{uuid.uuid4().hex[:8]}"
        self.client.create_registered_model(name)
        return name

    def new_version(
        self,
        model: str,
        metrics: dict[str, float] | None = None,
        *,
        description: str = "a well described model",
        with_run: bool = True,
    ) -> ModelVersion:
        run_id = None
        if with_run:
            run = self.client.create_run(experiment_id="0")
            run_id = run.info.run_id
            for key, value in (metrics or {}).items():
                self.client.log_metric(run_id, key, value)
            self.client.set_terminated(run_id)
        source = f"runs:/{run_id}/model" if run_id else f"s3://models-without-runs/{model}"
        return self.client.create_model_version(
            model, source=source, run_id=run_id, description=description
        )

    def version_tags(self, model: str, version: str) -> dict[str, str]:
        return dict(self.client.get_model_version(model, version).tags)

    def wait_for_decision(
        self, model: str, version: str, *, count: int = 1, timeout: float = 60
    ) -> dict[str, str]:
        """Wait until the ledger holds `count` finished decisions for the version (recorded,
        and their action on MLflow done); its tags then."""

        def finished() -> int:
            return sum(d["action_state"] != "pending" for d in self.decisions(model, version))

        wait_until(
            lambda: finished() >= count,
            timeout,
            what=f"{count} decision(s) on {model} v{version}\n{self.logs()}",
        )
        return self.version_tags(model, version)

    @property
    def ledger(self) -> Ledger:
        """The gate's ledger (the worker created it at start), read from the test."""
        if self._ledger is None:
            self._ledger = Ledger(self.database_url)
        return self._ledger

    def decisions(self, model: str, version: str | None = None) -> list[dict[str, Any]]:
        """The ledger's decisions on `model` (and `version`), newest first."""
        return [e for e in recent(self.ledger, model) if version is None or e["version"] == version]

    def alias_version(self, model: str, alias: str) -> str | None:
        aliases = self.client.get_registered_model(model).aliases
        return aliases.get(alias)

    def logs(self) -> str:
        return "\n".join(
            f"--- {name} ---\n{proc.log_tail(3000)}" for name, proc in self.processes.items()
        )

    def idle(self, timeout: float = 30) -> None:
        """Wait until the queue is empty and no task is running."""
        wait_until(
            lambda: self.redis.llen("gate.events") == 0 and not self.redis.hlen("unacked"),
            timeout,
            what="an idle queue",
        )


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The stack most tests share; each test works on models of its own."""
    shared = Stack(tmp_path_factory.mktemp("stack"))
    try:
        yield shared.up()
    finally:
        shared.close()


@pytest.fixture
def private_stack(tmp_path: Path) -> Iterator[Callable[..., Stack]]:
    """A stack of the test's own, for tests that stop and restart its parts."""
    made: list[Stack] = []

    def make(**options: Any) -> Stack:
        made.append(Stack(tmp_path, **options))
        return made[-1]

    try:
        yield make
    finally:
        for each in made:
            each.close()
