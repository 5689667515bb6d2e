"""`mlflow-gate up`: the whole stack on one machine, with no other set-up.

MLflow (SQLite in a local data folder, webhooks to localhost allowed, its own user accounts with
an `admin` whose password is kept in the data folder), Redis (the one at GATE_REDIS_URL when it
answers, else a private redis-server), the receiver, a worker with the periodic sweep and
redrive, Flower and the console; the webhook registered; every URL and login printed. Ctrl-C stops
everything, each service's whole process group, leaving nothing behind.
"""

from __future__ import annotations

import os
import secrets
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import click
import redis
import requests

from cli.devstack import (
    ManagedProcess,
    flower_command,
    free_port,
    gate_command,
    http_ok,
    mlflow_server_command,
    persistent,
    redis_answers,
    redis_command,
    stop_all,
    wait_until,
)
from shared.database_url import hide_password
from shared.errors import ConfigError
from shared.settings import Settings
from shared.urls import redacted


@dataclass
class Service:
    name: str
    url: str
    process: ManagedProcess | None = None  # None: one that was already running

    @property
    def log(self) -> Path | None:
        return self.process.log_path if self.process is not None else None


@dataclass
class Supervisor:
    """Starts each service in a process group of its own; stops them all, in reverse order."""

    data_dir: Path
    services: list[Service] = field(default_factory=list)

    def start(self, name: str, url: str, argv: list[str], env: dict[str, str]) -> Service:
        log = self.data_dir / "logs" / f"{name}.log"
        service = Service(name, url, ManagedProcess.start(argv, env, log, cwd=self.data_dir))
        self.services.append(service)
        return service

    def attach(self, name: str, url: str) -> Service:
        service = Service(name, url)
        self.services.append(service)
        return service

    def dead(self) -> list[Service]:
        return [s for s in self.services if s.process is not None and not s.process.alive()]

    def stop_all(self, timeout: float = 15) -> None:
        stop_all((s.process for s in reversed(self.services) if s.process is not None), timeout)


def _wait(what: str, ready: Callable[[], bool], sup: Supervisor, timeout: float = 120) -> None:
    def check() -> bool:
        for service in sup.dead():
            raise ConfigError(f"{service.name} exited at start; see its log: {service.log}")
        try:
            return ready()
        except (requests.RequestException, redis.RedisError):
            return False

    try:
        wait_until(check, timeout, interval=0.25, what=what)
    except TimeoutError:
        raise ConfigError(
            f"{what} was not ready after {timeout:g} s; see the logs in {sup.data_dir}"
        ) from None


@dataclass(frozen=True)
class Options:
    data_dir: Path
    mlflow_uri: str | None
    mlflow_port: int
    receiver_port: int
    flower_port: int
    redis_port: int
    demo: bool
    console_port: int = 8090


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
        redis_url = _redis(sup, settings, options, env)
        mlflow_uri = _mlflow(sup, options, env)
        _wait("MLflow", lambda: http_ok(f"{mlflow_uri}/health"), sup)
        if not options.mlflow_uri:  # ours: the gate signs in as its admin (its password in env)
            admin = mlflow_admin_password(data)
            env.update(MLFLOW_TRACKING_USERNAME="admin", MLFLOW_TRACKING_PASSWORD=admin)
            settings = replace(settings, mlflow_username="admin", mlflow_password=admin)

        secret = settings.webhook_secret or persistent(
            data / "webhook-secret", lambda: secrets.token_hex(32)
        )
        gate_env = {**env, "MLFLOW_TRACKING_URI": mlflow_uri, "GATE_REDIS_URL": redis_url,
                    "GATE_WEBHOOK_SECRET": secret,
                    "GATE_DATABASE_URL": ledger_url(data, env)}  # fmt: skip
        gate = gate_command()

        port = free_port(options.receiver_port)
        receiver_url = f"http://127.0.0.1:{port}"
        sup.start("receiver", receiver_url, [*gate, "receiver", "--host", "127.0.0.1", "--port",
                                             str(port)], gate_env)  # fmt: skip
        _wait("the receiver", lambda: http_ok(f"{receiver_url}/readyz"), sup)

        sup.start("worker", f"metrics on :{settings.worker_metrics_port}",
                  [*gate, "worker", "--beat"], gate_env)  # fmt: skip
        live = replace(settings, redis_url=redis_url, webhook_secret=secret).with_tracking_uri(
            mlflow_uri
        )
        _wait("the worker", lambda: bool(_celery_ping(live)), sup)

        user = settings.flower_user or "admin"
        password = settings.flower_password or persistent(
            data / "flower-password", lambda: secrets.token_urlsafe(12)
        )
        port = free_port(options.flower_port)
        flower_url = f"http://127.0.0.1:{port}"
        argv, flower_env = flower_command(redis_url, port, (user, password), env)
        sup.start("flower", flower_url, argv, flower_env)
        _wait("Flower", lambda: http_ok(f"{flower_url}/healthcheck", (user, password)), sup)

        console_secret = settings.console_secret or persistent(
            data / "console-secret", lambda: secrets.token_urlsafe(32)
        )
        port = free_port(options.console_port)
        console_url = f"http://127.0.0.1:{port}"
        sup.start("console", console_url, [*gate, "console", "--host", "127.0.0.1", "--port",
                                           str(port), "--workers", "1"],
                  {**gate_env, "GATE_CONSOLE_SECRET": console_secret, "GATE_URL": receiver_url,
                   "GATE_CONSOLE_URL": console_url})  # fmt: skip
        _wait("the console", lambda: http_ok(f"{console_url}/healthz"), sup)

        from cli.webhooks import register

        echo(register(live, url=f"{receiver_url}/webhooks/mlflow", name="mlflow-gate"))
        _print_summary(sup, live, data, (user, password), echo, own_mlflow=not options.mlflow_uri)
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


def _redis(sup: Supervisor, settings: Settings, options: Options, env: dict[str, str]) -> str:
    """Redis: the configured one if it answers, else a private one in the data folder."""
    if redis_answers(settings.redis_url):
        sup.attach("redis", settings.redis_url)
        return settings.redis_url
    port = free_port(options.redis_port)
    try:
        argv = redis_command(sup.data_dir / "redis", port, appendonly=True)
    except ConfigError as exc:  # no redis-server on this machine
        raise ConfigError(f"no Redis answers at GATE_REDIS_URL and {exc}") from None
    url = f"redis://127.0.0.1:{port}/0"
    sup.start("redis", url, argv, env)
    _wait("redis", lambda: redis_answers(url), sup, 20)
    return url


def _mlflow(sup: Supervisor, options: Options, env: dict[str, str]) -> str:
    """MLflow: the given one, or a tracking server on SQLite in the data folder."""
    if options.mlflow_uri:
        sup.attach("mlflow", options.mlflow_uri.rstrip("/"))
        return options.mlflow_uri.rstrip("/")
    port = free_port(options.mlflow_port)
    # MLflow's own accounts: people sign in to the console with them, and reviewers are named
    # by them. The PBKDF2 check of a password is cached for a minute (the gate makes a dozen
    # calls per decision).
    config = sup.data_dir / "mlflow-auth.ini"
    config.write_text(
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = sqlite:///{sup.data_dir / 'mlflow-auth.db'}\n"
        "admin_username = admin\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        "auth_cache_ttl_seconds = 60\n"
    )
    auth_env = {
        **env,
        "MLFLOW_AUTH_CONFIG_PATH": str(config),
        "MLFLOW_AUTH_ADMIN_PASSWORD": mlflow_admin_password(sup.data_dir),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": persistent(
            sup.data_dir / "mlflow-flask-secret", lambda: secrets.token_hex(32)
        ),
    }
    # A webhook list cached for 2 s: the demo waits that long after registering the webhook.
    argv, mlflow_env = mlflow_server_command(
        sup.data_dir, port, cache_ttl=2, env=auth_env, app_name="basic-auth"
    )
    url = f"http://127.0.0.1:{port}"
    sup.start("mlflow", url, argv, mlflow_env)
    return url


def _celery_ping(settings: Settings) -> list[dict[str, object]]:
    from shared.queue import create_celery

    return list(create_celery(settings).control.ping(timeout=0.5))


def _print_summary(
    sup: Supervisor,
    settings: Settings,
    data: Path,
    flower_auth: tuple[str, str],
    echo: Callable[[str], None],
    *,
    own_mlflow: bool,
) -> None:
    echo("")
    echo("mlflow-gate is up:")
    for s in sup.services:
        pid = f"pid {s.process.pid}" if s.process is not None else "already running"
        echo(f"  {s.name:9} {redacted(s.url)}  ({pid})")
    echo(f"  Flower login: {flower_auth[0]} / {flower_auth[1]}")
    if own_mlflow:
        echo(f"  MLflow and console login: admin / {settings.mlflow_password}")
    else:
        echo("  console login: your account on that MLflow (or the single-sign-on proxy)")
    echo(f"  data and logs: {data}")
    echo("")
    echo("Next:")
    echo(f"  export MLFLOW_TRACKING_URI={settings.mlflow_tracking_uri} "
         f"GATE_REDIS_URL={redacted(settings.redis_url)} "
         f"GATE_DATABASE_URL={hide_password(ledger_url(data, os.environ))}")  # fmt: skip
    echo("  mlflow-gate audit         # the ledger: every decision, newest first")
    echo("  mlflow-gate demo          # a version that passes and one that fails, decided live")
    echo("  set the tag governance.request=champion on a model version, then read its")
    echo("  governance.status and governance.reason tags in the MLflow UI")
    echo("  mlflow-gate status        # queue, workers, dead letters, last decisions")
    echo("  open the console's URL above: decisions, models, reviews, dead letters, policy")
    echo("")


def mlflow_admin_password(data: Path) -> str:
    """The password of the `admin` of the MLflow that `up` runs (made once, kept in the data
    folder: MLflow sets it when its user database is created)."""
    return persistent(data / "mlflow-admin-password", lambda: secrets.token_urlsafe(18))


def ledger_url(data: Path, env: Mapping[str, str]) -> str:
    """GATE_DATABASE_URL if set; else the ledger's SQLite file in the data folder (an absolute
    path: the services run in other folders)."""
    return env.get("GATE_DATABASE_URL") or f"sqlite:///{data.resolve() / 'ledger.db'}"


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
        click.option("--console-port", default=8090, show_default=True, type=int),
    ]):  # fmt: skip
        func = option(func)
    return func
