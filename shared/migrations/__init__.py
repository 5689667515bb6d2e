"""Alembic migrations of the gate's ledger (see shared/ledger/migrate.py)."""
