"""What every benchmark shares: private real processes, signed webhooks, statistics, results.

The processes start as `mlflow-gate up` and the integration tests start them (cli/devstack.py): a
private redis-server, an `mlflow server` on SQLite, the receiver under gunicorn and Celery workers,
each in its own process group under a temporary directory, and all stopped at the end (also on
Ctrl-C, SIGTERM or an exception).
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import hmac
import io
import json
import logging
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Sequence
from importlib import metadata
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
sys.path.insert(0, str(ROOT / "tests"))

from harness import DelayProxy  # noqa: E402

from cli.devstack import (  # noqa: E402
    ManagedProcess,
    free_port,
    gate_command,
    group_members,
    http_ok,
    mlflow_server_command,
    redis_server_binary,
    start_mlflow_server,
    start_redis,
    wait_until,
)

__all__ = [
    "BENCH",
    "DelayProxy",
    "ManagedProcess",
    "Stack",
    "free_port",
    "wait_until",
]

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

SECRET = "bench-secret-" + "0" * 20
REQUEST_TAG = "governance.request"
STATUS_TAG = "governance.status"

# The integration tests' policy, plus a comparison with the current champion, so that a decision
# also reads the alias holder (the README's example policy does).
POLICY = """
policies:
  - name: production-quality
    models: ["*"]
    targets: [champion, Production]
    rules:
      - metric: validation_accuracy
        min: 0.90
      - description: required
      - compare_to: champion
        metric: validation_accuracy
        min_delta: 0.0
"""
PASSING_METRICS = {"validation_accuracy": 0.95}


# -- signed webhooks, as MLflow sends them ------------------------------------------------------


def webhook_body(model: str, version: str, target: str = "champion") -> bytes:
    """A `model_version_tag.set` payload for `governance.request`, MLflow's layout."""
    payload = {
        "entity": "model_version_tag",
        "action": "set",
        "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(),
        "data": {"name": model, "version": version, "key": REQUEST_TAG, "value": target},
    }
    return json.dumps(payload).encode()


def signed_headers(secret: str, body: bytes, delivery_id: str | None = None) -> dict[str, str]:
    delivery_id = delivery_id or str(uuid.uuid4())
    timestamp = str(int(time.time()))
    signed = f"{delivery_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).digest()
    return {
        "Content-Type": "application/json",
        "X-MLflow-Delivery-Id": delivery_id,
        "X-MLflow-Timestamp": timestamp,
        "X-MLflow-Signature": "v1," + base64.b64encode(digest).decode(),
    }


# -- statistics and output ----------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def summary(values: Sequence[float]) -> dict[str, float | int | None]:
    return {
        "n": len(values),
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "p99": percentile(values, 99),
        "max": max(values) if values else None,
        "mean": sum(values) / len(values) if values else None,
    }


def ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f}"


def secs(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.2f}"


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _version_of(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    ram_gib: float | None = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    redis_version = None
    with contextlib.suppress(Exception):
        out = subprocess.run(
            [redis_server_binary(), "--version"], capture_output=True, text=True, timeout=10
        ).stdout
        redis_version = out.split("v=")[1].split()[0] if "v=" in out else out.strip()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gib": ram_gib,
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": {
            d: _version_of(d)
            for d in ("mlflow", "celery", "kombu", "redis", "flask", "gunicorn", "requests")
        },
        "redis_server": redis_version,
    }


def machine_line(info: dict[str, Any]) -> str:
    v = info["versions"]
    return (
        f"{info['cpu']}, {info['cores']} cores, {info['ram_gib']} GiB RAM; Python "
        f"{info['python']}, mlflow {v['mlflow']}, celery {v['celery']}, "
        f"redis-server {info['redis_server']}"
    )


def utc_stamp() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def write_results(
    name: str,
    params: dict[str, Any],
    results: dict[str, Any],
    *,
    load_start: tuple[float, float, float],
    started: float,
    printed: str,
) -> Path:
    """bench/results/<name>-<UTC timestamp>.json and <name>-latest.json."""
    RESULTS.mkdir(exist_ok=True)
    stamp = utc_stamp()
    document = {
        "benchmark": name,
        "utc": stamp,
        "duration_seconds": round(time.time() - started, 1),
        "machine": machine_info(),
        "load_average": {"start": list(load_start), "end": list(os.getloadavg())},
        "parameters": params,
        "results": results,
        "table": printed,
    }
    text = json.dumps(document, indent=2, default=str)
    path = RESULTS / f"{name}-{stamp}.json"
    path.write_text(text)
    (RESULTS / f"{name}-latest.json").write_text(text)
    return path


# -- the processes ------------------------------------------------------------------------------


class _Terminated(Exception):
    pass


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise _Terminated(f"signal {signum}")


class Stack:
    """Private Redis, MLflow, receiver and workers in a temporary directory; a context manager
    that stops everything it started on the way out, whatever the way out is."""

    def __init__(self, name: str, *, keep: bool = False, env: dict[str, str] | None = None):
        self.workdir = Path(tempfile.mkdtemp(prefix=f"mlflow-gate-bench-{name}-"))
        self.keep = keep
        self.processes: dict[str, ManagedProcess] = {}
        self.redis_url = ""
        self.mlflow_uri = ""
        self.mlflow_store_uri = ""
        self.mlflow_port = free_port()
        self.receiver_url = ""
        self._starts = 0
        policy = self.workdir / "policy.yaml"
        policy.write_text(POLICY)
        self.policy_file = policy
        tmp = self.workdir / "tmp"  # the gate's temp files (metrics dirs, beat schedule) too
        tmp.mkdir()
        self.env: dict[str, str] = {
            **os.environ,
            "TMPDIR": str(tmp),
            "GATE_WEBHOOK_SECRET": SECRET,
            "GATE_POLICY_FILE": str(policy),
            # The gate's ledger of this run alone (the default is relative to the working
            # directory, which every run would share).
            "GATE_DATABASE_URL": f"sqlite:///{self.workdir / 'ledger.db'}",
            **(env or {}),
        }

    def __enter__(self) -> Stack:
        signal.signal(signal.SIGTERM, _on_sigterm)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        for proc in reversed(list(self.processes.values())):
            with contextlib.suppress(Exception):
                proc.stop(timeout=5)
        self.processes.clear()
        if not self.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # -- parts -------------------------------------------------------------------------------
    def start_redis(self) -> str:
        self.processes["redis"], self.redis_url = start_redis(self.workdir / "redis")
        self.env["GATE_REDIS_URL"] = self.redis_url
        return self.redis_url

    def start_mlflow(self, backend_uri: str | None = None, workers: int = 1) -> str:
        """MLflow on SQLite in the work directory, or on `backend_uri` (a PostgreSQL database,
        say) with `workers` server processes."""
        if backend_uri is None and workers == 1:
            self.processes["mlflow"], self.mlflow_uri = start_mlflow_server(
                self.workdir / "mlflow", port=self.mlflow_port
            )
        else:
            self.processes["mlflow"], self.mlflow_uri = _start_mlflow_on(
                self.workdir / "mlflow", self.mlflow_port, backend_uri, workers
            )
        self.env["MLFLOW_TRACKING_URI"] = self.mlflow_uri
        # MLflow's database (cli.devstack puts SQLite's in its work directory): StoreWatch
        sqlite = f"sqlite:///{(self.workdir / 'mlflow').resolve() / 'mlflow.db'}"
        self.mlflow_store_uri = backend_uri or sqlite
        return self.mlflow_uri

    def start_receiver(self, *, workers: int = 2, threads: int = 4) -> str:
        port = free_port()
        argv = ["receiver", "--host", "127.0.0.1", "--port", str(port)]
        argv += ["--workers", str(workers), "--threads", str(threads)]
        proc = self._start("receiver", [*gate_command(), *argv], self.env)
        self.receiver_url = f"http://127.0.0.1:{port}"
        proc.wait_ready(lambda: http_ok(f"{self.receiver_url}/readyz", timeout=1), 60, "receiver")
        return self.receiver_url

    def start_worker(
        self,
        name: str = "worker",
        *,
        concurrency: int = 2,
        beat: bool = False,
        env: dict[str, str] | None = None,
    ) -> ManagedProcess:
        argv = ["worker", "--concurrency", str(concurrency), *(["--beat"] if beat else [])]
        proc = self._start(name, [*gate_command(), *argv], {**self.env, **(env or {})})
        proc.wait_ready(lambda: "ready." in proc.log_tail(50_000), 60, name, interval=0.2)
        return proc

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> ManagedProcess:
        return self._start(name, argv, env)

    def _start(self, name: str, argv: list[str], env: dict[str, str]) -> ManagedProcess:
        self._starts += 1
        log = self.workdir / "logs" / f"{name}-{self._starts}.log"
        self.processes[name] = ManagedProcess.start(argv, env, log, cwd=ROOT)
        return self.processes[name]

    def stop(self, name: str, timeout: float = 10) -> None:
        proc = self.processes.pop(name, None)
        if proc is not None:
            proc.stop(timeout)

    def gate(self, *args: str) -> str:
        result = subprocess.run(
            [*gate_command(), *args], env=self.env, capture_output=True, text=True, timeout=120
        )
        if result.returncode != 0:
            raise RuntimeError(f"mlflow-gate {' '.join(args)} failed: {result.stderr}")
        return result.stdout

    def register_webhook(self) -> None:
        self.gate("webhook", "register", "--url", f"{self.receiver_url}/webhooks/mlflow")
        time.sleep(1.5)  # MLFLOW_WEBHOOK_CACHE_TTL=1 (harness): the server sees the new webhook

    def webhooks_active(self, active: bool) -> None:
        """Turn this MLflow's webhooks on or off (status ACTIVE or DISABLED): a baseline run
        between gate runs must not send the gate its writes."""
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=self.mlflow_uri, registry_uri=self.mlflow_uri)
        for hook in client.list_webhooks():
            client.update_webhook(hook.webhook_id, status="ACTIVE" if active else "DISABLED")
        time.sleep(1.5)  # MLFLOW_WEBHOOK_CACHE_TTL=1 (harness): the server sees the change


def _start_mlflow_on(
    workdir: Path, port: int, backend_uri: str | None, workers: int
) -> tuple[ManagedProcess, str]:
    """cli.devstack's `mlflow server`, with another backend store and number of workers."""
    workdir = workdir.resolve()
    argv, env = mlflow_server_command(workdir, port)
    if backend_uri is not None:
        argv[argv.index("--backend-store-uri") + 1] = backend_uri
    argv[argv.index("--workers") + 1] = str(workers)
    proc = ManagedProcess.start(argv, env, workdir / "mlflow-server.log", workdir)
    url = f"http://127.0.0.1:{port}"
    proc.wait_ready(lambda: http_ok(f"{url}/health"), 180, f"mlflow server at {url}", 0.25)
    return proc, url


# -- MLflow content ----------------------------------------------------------------------------


def create_versions(
    tracking_uri: str, prefix: str, count: int, *, request: str | None = None
) -> list[tuple[str, str]]:
    """`count` registered models named `<prefix>-<i>`, each with one version whose run passes
    the policy; optionally with `governance.request` already set (before any webhook exists)."""
    from mlflow import MlflowClient

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # no "View run at ..." per version
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    made: list[tuple[str, str]] = []
    with contextlib.redirect_stdout(io.StringIO()):  # MLflow prints "View run ..." per run
        _create(client, prefix, count, request, made)
    return made


def _create(
    client: Any, prefix: str, count: int, request: str | None, made: list[tuple[str, str]]
) -> None:
    for i in range(count):
        model = f"{prefix}-{i:04d}"
        client.create_registered_model(model)
        run = client.create_run(experiment_id="0")
        for key, value in PASSING_METRICS.items():
            client.log_metric(run.info.run_id, key, value)
        client.set_terminated(run.info.run_id)
        mv = client.create_model_version(
            model,
            source=f"runs:/{run.info.run_id}/model",
            run_id=run.info.run_id,
            description="a well described model",
        )
        if request is not None:
            client.set_model_version_tag(model, mv.version, REQUEST_TAG, request)
        made.append((model, str(mv.version)))


def decided_versions(api: Any, prefix: str) -> dict[tuple[str, str], str]:
    """(model, version) -> governance.status for every decided version of the `prefix` models,
    in one search call per 200 versions (cheap enough to poll)."""
    found: dict[tuple[str, str], str] = {}
    flt = f"name LIKE '{prefix}-%' AND tags.`{STATUS_TAG}` != ''"
    for mv in api.search_versions(flt):
        status = {t["key"]: t.get("value", "") for t in mv.get("tags", [])}.get(STATUS_TAG)
        if status:
            found[(str(mv["name"]), str(mv["version"]))] = status
    return found


class StoreWatch:
    """Which versions carry `governance.status`, read from MLflow's own database rather than
    through its REST API: what the API would answer (it reads the same store, committed rows),
    without loading the MLflow server, which the gate and the baseline share and which is the
    bottleneck on SQLite. Polling the API instead (a search every 0.25 s) cost MLflow about as
    much CPU per decision as two of the webhooks the gate causes, and was charged to the gate
    alone. One indexed SELECT per poll; on SQLite it holds the read lock for well under a
    millisecond."""

    def __init__(self, store_uri: str) -> None:
        import sqlalchemy

        self._engine = sqlalchemy.create_engine(store_uri, poolclass=sqlalchemy.pool.NullPool)
        self._query = sqlalchemy.text(
            "SELECT name, version, value FROM model_version_tags "
            "WHERE key = :key AND name LIKE :names"
        )
        self.polls = 0

    def decided(self, prefix: str) -> dict[tuple[str, str], str]:
        """(model, version) -> governance.status for every decided version of the `prefix`
        models (named `<prefix>-<i>`)."""
        self.polls += 1
        with self._engine.connect() as db:
            rows = db.execute(self._query, {"key": STATUS_TAG, "names": f"{prefix}-%"})
            return {(str(name), str(version)): str(value) for name, version, value in rows}

    def close(self) -> None:
        self._engine.dispose()


def settings_for(uri: str) -> Any:
    from shared.settings import Settings

    return Settings(mlflow_tracking_uri=uri, mlflow_timeout_seconds=10.0)


def run_loadgen(stack: Stack, spec: dict[str, Any], label: str) -> dict[str, Any]:
    """Run bench/_loadgen.py as its own process with `spec`; its results once it exits."""
    spec_path = stack.workdir / f"loadgen-{label}.spec.json"
    out_path = stack.workdir / f"loadgen-{label}.out.json"
    spec_path.write_text(json.dumps(spec))
    argv = [sys.executable, str(BENCH / "_loadgen.py"), str(spec_path), str(out_path)]
    proc = stack.start(f"loadgen-{label}", argv, dict(os.environ))
    limit = float(spec["duration"]) * 3 + float(spec.get("timeout", 30)) + 60
    try:
        code = proc.popen.wait(timeout=limit)
    finally:
        stack.stop(f"loadgen-{label}")
    if code != 0 or not out_path.exists():
        raise RuntimeError(f"the load generator failed ({code}):\n{proc.log_tail()}")
    result: dict[str, Any] = json.loads(out_path.read_text())
    return result


def latency_stats(out: dict[str, Any], ok_status: str) -> dict[str, Any]:
    """Acknowledgement statistics of one load-generator run."""
    rows = out["results"]
    ok = [r for r in rows if r[2] == ok_status]
    statuses: dict[str, int] = {}
    for r in rows:
        statuses[r[2]] = statuses.get(r[2], 0) + 1
    lat = [r[1] for r in ok]
    finished = max((r[0] + r[1] for r in rows), default=0.0)
    return {
        "sent": len(rows),
        "unsent": out["unsent"],
        "acknowledged": len(ok),
        "statuses": statuses,
        "latency_s": summary(lat),
        "all_latency_s": summary([r[1] for r in rows]),
        "window_s": round(finished, 3),
        "sustained_per_s": round(len(ok) / finished, 1) if finished else None,
        "loadgen_cpu_ms_per_request": round(out.get("cpu_s", 0.0) * 1000 / max(len(rows), 1), 3),
    }


def group_cpu_seconds(proc: ManagedProcess) -> float:
    """User + system CPU time of every live process in `proc`'s process group (/proc)."""
    total = 0
    for pid in group_members(proc.pgid) or []:
        with contextlib.suppress(OSError):  # it exited since
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15 of stat
    return total / os.sysconf("SC_CLK_TCK")


def scratch_ledger() -> Any:
    """A ledger of the baseline's own: a SQLite file in a fresh temporary folder, at head."""
    from shared.ledger import Ledger

    folder = tempfile.mkdtemp(prefix="mlflow-gate-bench-ledger-")
    ledger = Ledger(f"sqlite:///{folder}/ledger.db")
    ledger.upgrade()
    return ledger
