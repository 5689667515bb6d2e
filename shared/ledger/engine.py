"""Connecting to the ledger's database, and saying plainly when it cannot be used.

SQLite is set up for a system of record shared by a few processes: foreign keys on, WAL
journal (readers do not wait for the writer), a busy timeout, and write transactions that take
the write lock when they begin (`BEGIN IMMEDIATE`), so that a read-then-write transaction never
fails half-way because another process wrote in between.
"""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, Engine

from shared import database_url
from shared.ledger.errors import LedgerError, LedgerUnavailable

BUSY_TIMEOUT_SECONDS = 30.0  # SQLite: how long a writer waits for another one
CONNECT_TIMEOUT_SECONDS = 10  # PostgreSQL: how long to wait for the server to answer
WRITE = "ledger_write"  # execution option: this transaction writes

_prepared: weakref.WeakSet[Engine] = weakref.WeakSet()  # engines with the listeners installed


def create(url: str | URL) -> Engine:
    """An engine for `url` (a GATE_DATABASE_URL), creating a SQLite file's folder if needed."""
    parsed = database_url.parse(url) if isinstance(url, str) else url
    if parsed.get_backend_name() == "sqlite":
        path = sqlite_path(parsed)
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                detail = f"cannot create the folder {path.parent}: {exc.strerror or exc}"
                raise unavailable(parsed, detail) from exc
        engine = sa.create_engine(parsed, connect_args={"timeout": BUSY_TIMEOUT_SECONDS})
    else:
        connect_args: dict[str, Any] = {}
        if parsed.get_driver_name() == "psycopg2":
            connect_args = {
                "connect_timeout": CONNECT_TIMEOUT_SECONDS,
                "application_name": "mlflow-gate",
            }
        engine = sa.create_engine(parsed, pool_pre_ping=True, connect_args=connect_args)
    prepare(engine)
    return engine


def sqlite_path(url: URL) -> Path | None:
    """The file of a SQLite URL; None for an in-memory database."""
    name = url.database
    if not name or name == ":memory:" or name.startswith("file:"):
        return None
    return Path(name)


def prepare(engine: Engine) -> None:
    """Install the SQLite settings on `engine` (once); nothing to do for other dialects."""
    if engine.dialect.name != "sqlite" or engine in _prepared:
        return
    _prepared.add(engine)
    in_memory = sqlite_path(engine.url) is None

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event below start transactions, not the driver.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA foreign_keys = ON")
            cursor.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_SECONDS * 1000)}")
            if not in_memory and cursor.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                # WAL is a property of the file: once one connection has switched it, it stays.
                # Switching needs the file to itself and does not wait for it, so a connection
                # opened while another one works leaves the switch to a later connection.
                with contextlib.suppress(sqlite3.OperationalError):
                    cursor.execute("PRAGMA journal_mode = WAL")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Connection) -> None:
        writes = connection.get_execution_options().get(WRITE, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if writes else "BEGIN")


def serialise(connection: Connection, *key: str) -> None:
    """Hold a lock named by `key` until the transaction ends, so that read-then-write
    transactions on the same key run one after the other. PostgreSQL: an advisory lock; SQLite:
    nothing to do, its write transactions already run one at a time (BEGIN IMMEDIATE)."""
    if connection.dialect.name != "postgresql":
        return
    digest = hashlib.blake2b("\0".join(key).encode(), digest_size=8).digest()
    number = int.from_bytes(digest, "big", signed=True)
    connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": number})


@contextlib.contextmanager
def guarded(url: URL) -> Iterator[None]:
    """Turn the database's failures into the gate's errors, with the password hidden."""
    try:
        yield
    except (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.ProgrammingError) as exc:
        detail = _detail(exc, url)
        if _missing_table(exc):
            raise LedgerError(
                f"the ledger at {database_url.hide_password(url)} has no tables yet ({detail}): "
                "run `mlflow-gate db upgrade` (the worker also does at start)"
            ) from exc
        if isinstance(exc, sa.exc.ProgrammingError):
            raise
        raise unavailable(url, detail) from exc
    except sa.exc.TimeoutError as exc:
        raise unavailable(url, "no connection free in the pool") from exc


def unavailable(url: URL, detail: str) -> LedgerUnavailable:
    path = sqlite_path(url) if url.get_backend_name() == "sqlite" else None
    if path is not None:
        return LedgerUnavailable(
            f"the ledger's SQLite database {path} could not be used ({detail}); check "
            "GATE_DATABASE_URL, that its folder exists and is writable, and that no other "
            "process holds a long write lock on it"
        )
    return LedgerUnavailable(
        f"the ledger's database at {database_url.hide_password(url)} did not answer "
        f"({detail}); check GATE_DATABASE_URL (host, port, database, user and password) and "
        "that the server is up and reachable from here"
    )


def _detail(exc: sa.exc.DBAPIError, url: URL) -> str:
    """The driver's own words, first line only, never the password."""
    text = str(exc.orig if exc.orig is not None else exc).strip()
    text = text.splitlines()[0] if text else type(exc).__name__
    if url.password:
        text = text.replace(str(url.password), "***")
    return text


def _missing_table(exc: sa.exc.DBAPIError) -> bool:
    if getattr(exc.orig, "pgcode", None) == "42P01":  # PostgreSQL: undefined_table
        return True
    return "no such table" in str(exc.orig)
