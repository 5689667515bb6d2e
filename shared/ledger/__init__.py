"""The gate's ledger: its own record of decisions and approvals, in a SQL database.

    from shared.ledger import Ledger
    ledger = Ledger(settings.database_url)
    ledger.upgrade()
    decision_id = ledger.record(DecisionRow(...))

Modules: ledger (the API), records (what goes in and comes out), schema (the tables),
rows (between the two), engine (connections, SQLite set-up, errors), migrate (Alembic),
globs (model globs as LIKE), errors.
"""

from shared.ledger.errors import LedgerError, LedgerUnavailable
from shared.ledger.ledger import Ledger
from shared.ledger.records import (
    ActionState,
    Asked,
    DecisionRow,
    RecordedDecision,
    TargetKind,
    Tenure,
    Verdict,
    Vote,
)

__all__ = [
    "ActionState",
    "Asked",
    "DecisionRow",
    "Ledger",
    "LedgerError",
    "LedgerUnavailable",
    "RecordedDecision",
    "TargetKind",
    "Tenure",
    "Verdict",
    "Vote",
]
