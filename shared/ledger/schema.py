"""The ledger's tables, as the code reads and writes them (SQLAlchemy Core).

The migrations under shared/migrations create them; this module must describe the schema at
head (a test compares the two). Migrations never import it: each is frozen as written.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect

# Alembic's own table, named for the gate so that a database shared with MLflow (whose
# migrations use `alembic_version`) keeps both apart.
VERSION_TABLE = "gate_alembic_version"

# Dialects that have partial (filtered) unique indexes: one open approval per target.
PARTIAL_INDEX_DIALECTS = frozenset({"sqlite", "postgresql"})


class UtcDateTime(sa.types.TypeDecorator[datetime]):
    """An aware datetime in, an aware UTC datetime out, whatever the dialect.

    PostgreSQL stores `timestamp with time zone`; SQLite has no time zone, so naive UTC is
    stored there and compared as such (every value goes through this type).
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value.isoformat()}: the ledger needs aware times")
        moment = value.astimezone(timezone.utc)
        return moment.replace(tzinfo=None) if dialect.name == "sqlite" else moment

    def process_result_value(self, value: Any | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"expected a datetime from the database, got {value!r}")
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


def json_type() -> sa.types.TypeEngine[Any]:
    """JSON everywhere, JSONB on PostgreSQL (indexable, compact)."""
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


metadata = sa.MetaData()

decisions = sa.Table(
    "decisions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("decided_at", UtcDateTime, nullable=False),
    sa.Column("registry", sa.String(32), nullable=False),
    sa.Column("model", sa.String(256), nullable=False),
    sa.Column("version", sa.String(64), nullable=False),
    sa.Column("target", sa.String(256), nullable=False),
    sa.Column("target_kind", sa.String(16), nullable=False),
    sa.Column("outcome", sa.String(32), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("policies", json_type(), nullable=False),
    sa.Column("checks", json_type(), nullable=False),
    sa.Column("facts", json_type(), nullable=False),
    sa.Column("event_id", sa.String(256), nullable=False),
    sa.Column("origin", sa.String(32), nullable=False),
    sa.Column("requested_by", sa.String(256), nullable=True),
    sa.Column("acted_by", sa.String(256), nullable=True),
    sa.Column("action_state", sa.String(16), nullable=True),
    sa.Column(
        "superseded_by",
        sa.Integer,
        sa.ForeignKey("decisions.id", name="fk_decisions_superseded_by", ondelete="SET NULL"),
        nullable=True,
    ),
    sa.Index("ix_decisions_model_target_decided_at", "model", "target", "decided_at"),
    sa.Index("ix_decisions_decided_at", "decided_at"),
    sa.Index("ix_decisions_event_id", "event_id"),
)

approvals = sa.Table(
    "approvals",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("registry", sa.String(32), nullable=False),
    sa.Column("model", sa.String(256), nullable=False),
    sa.Column("target", sa.String(256), nullable=False),
    sa.Column("version", sa.String(64), nullable=False),
    sa.Column(
        "decision_id",
        sa.Integer,
        sa.ForeignKey("decisions.id", name="fk_approvals_decision_id"),
        nullable=False,
    ),
    sa.Column("approved_at", UtcDateTime, nullable=False),
    sa.Column("ended_at", UtcDateTime, nullable=True),
    sa.Column("ended_reason", sa.Text, nullable=True),
    # True: the approval was revoked (rolled back, undone), not replaced by a newer one.
    sa.Column("revoked", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Index(
        "ix_approvals_registry_model_target_approved_at",
        "registry",
        "model",
        "target",
        "approved_at",
    ),
    sa.Index("ix_approvals_decision_id", "decision_id"),
    # At most one open approval per (registry, model, target). Where partial indexes are not
    # available (not SQLite, not PostgreSQL), the migration leaves it out and the code's
    # transaction alone keeps the rule.
    sa.Index(
        "uq_approvals_one_open",
        "registry",
        "model",
        "target",
        unique=True,
        sqlite_where=sa.text("ended_at IS NULL"),
        postgresql_where=sa.text("ended_at IS NULL"),
    ),
)

# A reviewer's verdict on a pending review (a decision whose outcome is pending_review): at most
# one per reviewer and review.
votes = sa.Table(
    "votes",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column(
        "decision_id",
        sa.Integer,
        sa.ForeignKey("decisions.id", name="fk_votes_decision_id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("reviewer", sa.String(256), nullable=False),
    sa.Column("verdict", sa.String(16), nullable=False),  # approve | reject
    sa.Column("comment", sa.Text, nullable=True),
    sa.Column("identified_by", sa.String(32), nullable=False),  # mlflow | proxy
    sa.Column("cast_at", UtcDateTime, nullable=False),
    sa.UniqueConstraint("decision_id", "reviewer", name="uq_votes_decision_reviewer"),
)

# A promotion requested through the gate by an authenticated user: who asked is known, unlike a
# request made by setting the governance.request tag.
requests = sa.Table(
    "requests",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("registry", sa.String(32), nullable=False),
    sa.Column("model", sa.String(256), nullable=False),
    sa.Column("version", sa.String(64), nullable=False),
    sa.Column("target", sa.String(256), nullable=False),
    sa.Column("requested_by", sa.String(256), nullable=False),
    sa.Column("identified_by", sa.String(32), nullable=False),
    sa.Column("requested_at", UtcDateTime, nullable=False),
    sa.Column("comment", sa.Text, nullable=True),
    sa.Index("ix_requests_registry_model_version_target", "registry", "model", "version", "target"),
)
