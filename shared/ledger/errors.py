"""What can go wrong with the ledger, split by what to do about it."""

from __future__ import annotations

from shared.errors import GateError, TransientError


class LedgerError(GateError):
    """A misuse or a state the caller must fix: a decision that does not exist, a schema that is
    not at this version's revision (run `mlflow-gate db upgrade`)."""


class LedgerUnavailable(TransientError):
    """The database did not answer (down, unreachable, refused the credentials, a locked or
    unwritable SQLite file). Worth retrying; the message says what to check."""
