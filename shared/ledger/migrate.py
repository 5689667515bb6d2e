"""The ledger's schema migrations (Alembic), driven from code: no alembic.ini at run time.

The revisions live in shared/migrations/versions, inside the package, so that an installed
mlflow-gate carries them. Every process that writes the ledger upgrades it at start; several
starting at once are serialised (a PostgreSQL advisory lock, SQLite's write lock), so the
schema is created once.

To write revision 0002 (from a checkout):

    from alembic import command
    from shared.ledger import migrate
    command.revision(migrate.config(), "what it does", rev_id="0002")

Alembic is imported on first use, after its chatter is filtered out of the logs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.engine import Connection, Engine

from shared.ledger.engine import WRITE, serialise
from shared.ledger.errors import LedgerError
from shared.ledger.schema import VERSION_TABLE

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
# Alembic announces its dialect and plugins at INFO each time it looks at the database.
_CHATTER = ("Context impl ", "Will assume ", "setup plugin ")


class _QuietAlembic(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and record.msg.startswith(_CHATTER))


for _name in ("alembic.runtime.migration", "alembic.runtime.plugins"):
    logging.getLogger(_name).addFilter(_QuietAlembic())


def config(connection: Connection | None = None) -> Config:
    """An Alembic configuration for the ledger's scripts, handing `connection` to env.py."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS).replace("%", "%%"))
    cfg.attributes["connection"] = connection
    return cfg


def head() -> str:
    """The revision this code expects: the newest script."""
    from alembic.script import ScriptDirectory

    found = ScriptDirectory.from_config(config()).get_current_head()
    if found is None:
        raise RuntimeError(f"no migration scripts in {MIGRATIONS}")
    return found


def revisions() -> list[tuple[str | None, str]]:
    """Each (previous, revision) pair of the chain, oldest first; previous None is the base."""
    from alembic.script import ScriptDirectory

    pairs: list[tuple[str | None, str]] = []
    for rev in ScriptDirectory.from_config(config()).walk_revisions():  # newest first
        down = rev.down_revision
        if down is not None and not isinstance(down, str):
            raise RuntimeError(f"revision {rev.revision} merges branches; keep the chain linear")
        pairs.append((down, rev.revision))
    return pairs[::-1]


def current(engine: Engine) -> str | None:
    """The database's revision; None for a database the migrations never touched."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
        return context.get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> str:
    """Apply the migrations up to `revision` (idempotent); return the revision reached."""
    from alembic import command

    _run(engine, lambda cfg: command.upgrade(cfg, revision))
    return current(engine) or "base"


def downgrade(engine: Engine, revision: str) -> str | None:
    """Undo migrations down to `revision` ("base": nothing left). For tests, and for going
    back to an older mlflow-gate."""
    from alembic import command

    _run(engine, lambda cfg: command.downgrade(cfg, revision))
    return current(engine)


def _run(engine: Engine, step: Callable[[Config], None]) -> None:
    from alembic.util import CommandError

    # One transaction for the lock, the version check and every DDL statement (PostgreSQL's DDL
    # is transactional: a failed migration leaves nothing half-done).
    try:
        with engine.execution_options(**{WRITE: True}).begin() as connection:
            serialise(connection, "ledger schema")
            step(config(connection))
    except CommandError as exc:  # e.g. a revision in the database that no script here knows
        raise LedgerError(
            f"cannot migrate the ledger: {exc} (a database written by a newer mlflow-gate?)"
        ) from exc
