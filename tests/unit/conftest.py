"""Fixtures for the ledger's tests: the same tests on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from postgres import PostgresMissing, PostgresServer, start_postgres

from shared.ledger import Ledger

DATABASE = "ledger"  # emptied before each test


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the session. Without its binaries the tests FAIL: CI installs
    them, and a skipped backend would pass unnoticed."""
    missing = ""
    try:
        server = start_postgres()
    except PostgresMissing as exc:
        missing = str(exc)
    if missing:
        pytest.fail(missing, pytrace=False)
    try:
        server.create_database(DATABASE)
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """An empty database: a SQLite file, or a fresh database on the PostgreSQL server."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('ledger') / 'ledger.db'}"
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    server.empty_database(DATABASE)
    yield server.url(DATABASE)


@pytest.fixture
def ledger(ledger_url: str) -> Iterator[Ledger]:
    """A ledger at head on each backend."""
    with Ledger(ledger_url) as opened:
        opened.upgrade()
        yield opened


@pytest.fixture(scope="session")
def _migrated_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One SQLite ledger migrated to head for the session: each test copies it."""
    path = tmp_path_factory.mktemp("ledger-template") / "ledger.db"
    with Ledger(f"sqlite:///{path}") as template:
        template.upgrade()
    return path


@pytest.fixture
def sqlite_ledger(_migrated_sqlite: Path, tmp_path: Path) -> Iterator[Ledger]:
    """A ledger at head of its own, on SQLite (the pipeline's and the commands' tests)."""
    path = tmp_path / "ledger.db"
    shutil.copyfile(_migrated_sqlite, path)
    with Ledger(f"sqlite:///{path}") as opened:
        yield opened
