"""Alembic's entry point for the ledger's migrations, driven by shared.ledger.migrate.

Online, the caller hands over a Connection already inside its transaction
(`config.attributes["connection"]`), so that a lock taken before the migrations covers them.
Offline (SQL scripts), the URL comes from the `sqlalchemy.url` option.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from shared.ledger.schema import VERSION_TABLE, metadata

config = context.config


def run_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        render_as_batch=True,  # SQLite alters tables by copying them: let later revisions do so
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    given = config.attributes.get("connection")
    if not isinstance(given, Connection):
        raise RuntimeError(
            "the ledger's migrations run through shared.ledger.migrate (or "
            "`mlflow-gate db upgrade`), which hands them a connection"
        )
    run_online(given)
