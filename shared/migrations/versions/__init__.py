"""One module per revision: 0001_ledger.py, 0002_....py (Alembic reads them by path)."""
