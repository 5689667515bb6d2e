"""The ledger's migrations on SQLite and a real PostgreSQL server: each revision from the one
before it (with data written at that one), back down and up again; the head agrees with
shared.ledger.schema; concurrent first starts create the schema once.

Adding revision 0002: write SEED["0001"] (rows as 0001's schema holds them, in plain SQL) and
EXPECT["0001"] (what of them 0002 must keep); `test_each_revision_from_the_previous` then tests
0001 -> 0002 on both backends. Then also test that a database left at 0001 is told to upgrade
(Ledger.check_current), which one revision cannot show.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Connection, Engine

from shared.events import RegistryKind
from shared.ledger import Ledger, LedgerError, migrate
from shared.ledger import engine as engines
from shared.ledger.schema import VERSION_TABLE, metadata

PAIRS = migrate.revisions()
HEAD = migrate.head()


def seed_0001(conn: Connection) -> None:
    conn.execute(
        sa.text(
            "INSERT INTO decisions (id, decided_at, registry, model, version, target, "
            "target_kind, outcome, reason, policies, checks, facts, event_id, origin, "
            "requested_by, acted_by, action_state, superseded_by) VALUES (1, :t, 'mlflow', "
            "'fraud-detector', '3', 'champion', 'alias', 'approved', 'ok', '[\"p\"]', '[]', "
            "'{}', 'evt-1', 'webhook', 'alice', NULL, 'done', NULL)"
        ),
        {"t": "2026-11-01 12:00:00"},
    )
    conn.execute(
        sa.text(
            "INSERT INTO approvals (registry, model, target, version, decision_id, approved_at) "
            "VALUES ('mlflow', 'fraud-detector', 'champion', '3', 1, :t)"
        ),
        {"t": "2026-11-01 12:00:00"},
    )
    # Two approvals that ended, the way 0001 said how: one replaced, one rolled back.
    for version, reason in (("1", "replaced by version 2"), ("2", "rolled back: broken")):
        conn.execute(
            sa.text(
                "INSERT INTO approvals (registry, model, target, version, decision_id, "
                "approved_at, ended_at, ended_reason) VALUES ('mlflow', 'fraud-detector', "
                "'champion', :v, 1, :t, :t, :r)"
            ),
            {"v": version, "t": "2026-10-01 12:00:00", "r": reason},
        )


def expect_0001(ledger: Ledger) -> None:
    """What the data SEED["0001"] wrote looks like through the API at head."""
    [decision] = ledger.decisions()
    assert (decision.model, decision.version, decision.requested_by) == (
        "fraud-detector",
        "3",
        "alice",
    )
    assert ledger.approved_version(RegistryKind.MLFLOW, "fraud-detector", "champion") == "3"
    # 0002: an approval that was replaced still stands, one rolled back is revoked.
    assert ledger.standing(RegistryKind.MLFLOW, "fraud-detector", "champion") == {"1", "3"}


def seed_0002(conn: Connection) -> None:
    seed_0001(conn)
    conn.execute(sa.text("UPDATE approvals SET revoked = :yes WHERE version = '2'"), {"yes": True})


def expect_0002(ledger: Ledger) -> None:
    """0003 adds tables only: what 0002 held reads back as it was; no review is open."""
    expect_0001(ledger)
    assert ledger.open_reviews() == []
    assert ledger.asked(RegistryKind.MLFLOW, "fraud-detector", "3", "champion") is None


# Keyed by the revision the data is written at.
SEED: dict[str, Callable[[Connection], None]] = {"0001": seed_0001, "0002": seed_0002}
EXPECT: dict[str, Callable[[Ledger], None]] = {"0001": expect_0001, "0002": expect_0002}


def tables(engine: Engine) -> set[str]:
    return set(sa.inspect(engine).get_table_names())


def test_the_chain_is_linear_from_the_base() -> None:
    assert PAIRS[0][0] is None
    assert [revision for _, revision in PAIRS[:-1]] == [previous for previous, _ in PAIRS[1:]]
    assert PAIRS[-1][1] == HEAD == "0003"


def test_every_revision_but_the_head_has_seed_data() -> None:
    for _, revision in PAIRS[:-1]:
        assert revision in SEED and revision in EXPECT, f"write SEED/EXPECT for {revision}"


@pytest.mark.parametrize(("previous", "revision"), PAIRS, ids=[f"{p}-{r}" for p, r in PAIRS])
def test_each_revision_from_the_previous(
    ledger_url: str, previous: str | None, revision: str
) -> None:
    with Ledger(ledger_url) as ledger:
        engine = ledger.engine
        if previous is not None:
            migrate.upgrade(engine, previous)
            with engine.begin() as conn:
                SEED[previous](conn)
        else:
            assert tables(engine) == set()

        assert migrate.upgrade(engine, revision) == revision == migrate.current(engine)
        assert {"decisions", "approvals", VERSION_TABLE} <= tables(engine)
        if previous is not None and revision == HEAD:
            EXPECT[previous](ledger)

        assert migrate.downgrade(engine, previous or "base") == previous
        if previous is None:
            assert tables(engine) == {VERSION_TABLE}  # Alembic keeps its (empty) table
        assert ledger.upgrade() == HEAD == ledger.check_current()


@pytest.mark.parametrize("revision", sorted(SEED))
def test_data_written_at_a_revision_reads_back_at_head(ledger_url: str, revision: str) -> None:
    """Also keeps the head's SEED honest before a later revision starts from it."""
    with Ledger(ledger_url) as ledger:
        migrate.upgrade(ledger.engine, revision)
        with ledger.engine.begin() as conn:
            SEED[revision](conn)
        ledger.upgrade()
        EXPECT[revision](ledger)


def test_the_head_schema_is_the_one_the_code_describes(ledger: Ledger) -> None:
    with ledger.engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, "version_table": VERSION_TABLE}
        )
        assert compare_metadata(context, metadata) == []
    indexes = {ix["name"]: ix for ix in sa.inspect(ledger.engine).get_indexes("approvals")}
    assert indexes["uq_approvals_one_open"]["unique"]
    decision_indexes = {ix["name"] for ix in sa.inspect(ledger.engine).get_indexes("decisions")}
    assert decision_indexes >= {
        "ix_decisions_model_target_decided_at",
        "ix_decisions_decided_at",
        "ix_decisions_event_id",
    }


def test_processes_starting_together_create_the_schema_once(ledger_url: str) -> None:
    barrier = threading.Barrier(6)
    reached: list[str] = []
    errors: list[BaseException] = []

    def start() -> None:
        with Ledger(ledger_url) as own:
            barrier.wait()
            try:
                reached.append(own.upgrade())
            except BaseException as exc:
                errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == [] and reached == [HEAD] * 6


def test_a_database_left_at_the_previous_revision_is_told_to_upgrade(ledger_url: str) -> None:
    engine = engines.create(ledger_url)
    try:
        migrate.upgrade(engine, PAIRS[-1][0] or "base")
        with Ledger(engine) as behind:
            with pytest.raises(LedgerError, match="run `mlflow-gate db upgrade`"):
                behind.check_current()
            assert behind.upgrade() == HEAD
            assert behind.check_current() == HEAD
    finally:
        engine.dispose()


def test_a_database_from_a_newer_gate_is_refused_with_a_reason(ledger: Ledger) -> None:
    with ledger.engine.begin() as conn:
        conn.execute(sa.text(f"UPDATE {VERSION_TABLE} SET version_num = '9999'"))
    with pytest.raises(LedgerError, match="revision 9999, written by a newer mlflow-gate"):
        ledger.check_current()
    with pytest.raises(LedgerError, match="newer mlflow-gate"):
        ledger.upgrade()


@pytest.mark.parametrize("dialect", ["postgresql", "sqlite"])
def test_the_migrations_render_as_sql_scripts(dialect: str) -> None:
    """Offline mode (`alembic upgrade --sql`), for a DBA who applies the SQL by hand."""
    cfg = migrate.config()
    cfg.set_main_option("sqlalchemy.url", f"{dialect}://")
    cfg.output_buffer = io.StringIO()
    command.upgrade(cfg, "head", sql=True)
    script = cfg.output_buffer.getvalue()
    assert "CREATE TABLE decisions" in script and "CREATE TABLE approvals" in script
    assert (
        "CREATE UNIQUE INDEX uq_approvals_one_open" in script and "WHERE ended_at IS NULL" in script
    )
    assert VERSION_TABLE in script


def test_the_sqlite_settings_apply_to_every_connection(tmp_path: object) -> None:
    engine = engines.create(f"sqlite:///{tmp_path}/ledger.db")
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    finally:
        engine.dispose()
