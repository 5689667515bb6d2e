"""The real stack, started once per test session: MLflow (SQL backend), a private Redis, the
receiver over HTTP and a Celery worker, with the webhook registered through the CLI.

Each test works on its own registered model, so tests share the stack without sharing state.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from harness import ManagedProcess, free_port, start_mlflow_server, start_redis, wait_until
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion

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
"""


def gate_command() -> list[str]:
    exe = shutil.which("mlflow-gate", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "cli.main"]


@dataclass
class Stack:
    workdir: Path
    mlflow_uri: str
    redis_url: str
    receiver_url: str
    env: dict[str, str]
    client: MlflowClient
    redis: redis.Redis
    processes: dict[str, ManagedProcess] = field(default_factory=dict)

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
        """Wait until the audit trail holds `count` decisions for the version; its tags then."""
        wait_until(
            lambda: len(self.decisions(model, version)) >= count,
            timeout,
            what=f"{count} decision(s) on {model} v{version}\n{self.logs()}",
        )
        return self.version_tags(model, version)

    def decisions(self, model: str, version: str | None = None) -> list[dict[str, Any]]:
        entries = [json.loads(raw) for raw in self.redis.lrange("gate:decisions", 0, -1)]
        return [
            e
            for e in entries
            if e["model"] == model and (version is None or e["version"] == version)
        ]

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
    workdir = tmp_path_factory.mktemp("stack")
    processes: dict[str, ManagedProcess] = {}
    try:
        processes["redis"], redis_url = start_redis(workdir)
        processes["mlflow"], mlflow_uri = start_mlflow_server(workdir / "mlflow")
        policy = workdir / "policy.yaml"
        policy.write_text(POLICY)
        env = {
            **os.environ,
            "MLFLOW_TRACKING_URI": mlflow_uri,
            "GATE_REDIS_URL": redis_url,
            "GATE_WEBHOOK_SECRET": SECRET,
            "GATE_POLICY_FILE": str(policy),
            "GATE_RETRY_MAX_ATTEMPTS": "3",
            "GATE_RETRY_BACKOFF_SECONDS": "0.5",
            "GATE_RETRY_BACKOFF_MAX_SECONDS": "1",
            "GATE_MLFLOW_TIMEOUT_SECONDS": "5",
        }
        port = free_port()
        receiver_url = f"http://127.0.0.1:{port}"
        processes["receiver"] = ManagedProcess.start(
            [
                *gate_command(),
                "receiver",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
            ],
            env,
            workdir / "receiver.log",
        )
        wait_until(lambda: _ok(f"{receiver_url}/readyz"), 30, what="the receiver")
        processes["worker"] = ManagedProcess.start(
            [*gate_command(), "worker", "--concurrency", "2"], env, workdir / "worker.log"
        )
        wait_until(lambda: "ready." in processes["worker"].log_tail(20000), 60, what="the worker")
        stack = Stack(
            workdir=workdir,
            mlflow_uri=mlflow_uri,
            redis_url=redis_url,
            receiver_url=receiver_url,
            env=env,
            client=MlflowClient(tracking_uri=mlflow_uri, registry_uri=mlflow_uri),
            redis=redis.Redis.from_url(redis_url, decode_responses=True),
            processes=processes,
        )
        stack.gate("webhook", "register", "--url", f"{receiver_url}/webhooks/mlflow")
        time.sleep(1.5)  # MLFLOW_WEBHOOK_CACHE_TTL=1: the server sees the new webhook
        yield stack
    finally:
        for proc in reversed(list(processes.values())):
            proc.stop()


def _ok(url: str) -> bool:
    try:
        return requests.get(url, timeout=1).ok
    except requests.RequestException:
        return False
