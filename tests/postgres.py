"""A REAL PostgreSQL server for the tests: Debian's binaries, a throwaway cluster in a temporary
directory, on a free loopback port, in its own process group.

PostgreSQL refuses to run as root, so as root the cluster belongs to the `postgres` user and its
programs run through `runuser -u postgres --`. Durability is off (fsync, synchronous commit):
the cluster lives as long as the test session.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg2
from harness import LOOPBACK, ManagedProcess, free_port, wait_until

__all__ = ["PostgresMissing", "PostgresServer", "start_postgres"]

BINARIES = "/usr/lib/postgresql/*/bin"
INSTALL = (
    "install Debian's `postgresql` package (apt-get install postgresql), as .ci/run does; "
    "the tests start their own server on a free port"
)
START_TIMEOUT = 60.0
USER = "gate"
PASSWORD = "s3cret-ledger-pw"


class PostgresMissing(RuntimeError):
    """No PostgreSQL server binaries here (or no way to run them)."""


def binaries() -> Path:
    """The bin directory of the newest PostgreSQL installed (Debian's layout, else PATH)."""
    found = sorted(
        (Path(p).parent for p in glob.glob(f"{BINARIES}/initdb")),
        key=lambda bindir: [int(part) for part in bindir.parent.name.split(".") if part.isdigit()],
    )
    if found:
        return found[-1]
    on_path = shutil.which("initdb")
    if on_path and shutil.which("postgres"):
        return Path(on_path).parent
    raise PostgresMissing(f"no PostgreSQL server binaries ({BINARIES}/initdb): {INSTALL}")


def _runner(root: Path) -> list[str]:
    """The prefix that runs a PostgreSQL program as its owner; hands `root` over to it."""
    if os.geteuid() != 0:
        return []
    try:
        owner = pwd.getpwnam("postgres")
    except KeyError:
        raise PostgresMissing(
            f"running as root and there is no `postgres` user: {INSTALL}"
        ) from None
    runuser = shutil.which("runuser")
    if runuser is None:
        raise PostgresMissing("running as root and `runuser` (util-linux) is not installed")
    os.chown(root, owner.pw_uid, owner.pw_gid)
    return [runuser, "-u", "postgres", "--"]


@dataclass
class PostgresServer:
    process: ManagedProcess
    root: Path  # the temporary directory: data/, the socket, the log
    port: int
    started_in: float  # seconds from initdb to the first accepted connection

    def url(self, database: str, password: str = PASSWORD) -> str:
        return f"postgresql+psycopg2://{USER}:{password}@{LOOPBACK}:{self.port}/{database}"

    def _admin(self, database: str = "postgres") -> psycopg2.extensions.connection:
        connection = psycopg2.connect(
            host=LOOPBACK, port=self.port, user=USER, password=PASSWORD, dbname=database
        )
        connection.autocommit = True
        return connection

    def create_database(self, name: str) -> None:
        with contextlib.closing(self._admin()) as connection, connection.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')

    def empty_database(self, name: str) -> None:
        """Make `name` as good as new, much faster than dropping and creating it: disconnect
        its clients, drop everything in it."""
        with contextlib.closing(self._admin()) as connection, connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
        with (
            contextlib.closing(self._admin(name)) as connection,
            connection.cursor() as cursor,
        ):
            cursor.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")

    def drop_database(self, name: str) -> None:
        with contextlib.closing(self._admin()) as connection, connection.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        """Fast shutdown (SIGINT to the postmaster: clients are disconnected), then make sure
        the whole process group is gone, and remove the directory."""
        pid_file = self.root / "data" / "postmaster.pid"
        with contextlib.suppress(OSError, ValueError, IndexError):
            os.kill(int(pid_file.read_text().splitlines()[0]), signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.popen.wait(timeout=15)
        self.process.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def start_postgres() -> PostgresServer:
    """initdb a cluster in a fresh temporary directory and start `postgres` on a free port."""
    began = time.monotonic()
    bindir = binaries()
    root = Path(tempfile.mkdtemp(prefix="mlflow-gate-pg-"))
    try:
        run_as = _runner(root)
        password_file = root / "password"
        password_file.write_text(PASSWORD + "\n")
        if run_as:
            shutil.chown(password_file, "postgres")
        initdb = subprocess.run(
            [*run_as, str(bindir / "initdb"), "-D", str(root / "data"), "-U", USER,
             f"--pwfile={password_file}", "--auth-local=trust", "--auth-host=scram-sha-256",
             "-E", "UTF8", "--no-locale", "--no-sync", "--no-instructions"],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        if initdb.returncode != 0:
            raise RuntimeError(f"initdb failed ({initdb.returncode}):\n{initdb.stderr[-4000:]}")
        return _serve(bindir, root, run_as, began)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise


def _serve(bindir: Path, root: Path, run_as: list[str], began: float) -> PostgresServer:
    last_error = ""
    for _ in range(3):  # a port taken between free_port() and the bind: try another
        port = free_port()
        argv = [
            *run_as, str(bindir / "postgres"), "-D", str(root / "data"),
            "-p", str(port), "-h", LOOPBACK, "-k", str(root),
            "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
        ]  # fmt: skip
        process = ManagedProcess.start(argv, dict(os.environ), root / f"postgres-{port}.log")
        server = PostgresServer(process, root, port, started_in=0.0)

        def ready(process: ManagedProcess = process, server: PostgresServer = server) -> bool:
            if not process.alive():
                return True  # reported below
            try:
                server._admin().close()
            except psycopg2.OperationalError:
                return False
            return True

        try:
            wait_until(ready, START_TIMEOUT, interval=0.05, what=f"postgres on port {port}")
        except BaseException:
            process.stop()
            raise
        if process.alive():
            server.started_in = time.monotonic() - began
            atexit.register(server.stop)  # also when the session dies without teardown
            return server
        last_error = process.log_tail()
        process.stop()
        if "could not bind" not in last_error and "in use" not in last_error:
            break
    raise RuntimeError(f"postgres did not start; log tail:\n{last_error}")
