"""The ledger: decisions, and the approvals that say which version holds each target.

Revision ID: 0001
Revises:
Create Date: 2026-11-23

Frozen as written: it does not import shared.ledger.schema, which describes the head.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json() -> sa.types.TypeEngine[Any]:
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _time(name: str, *, nullable: bool) -> sa.Column[Any]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "decisions",
        sa.Column("id", sa.Integer, primary_key=True),
        _time("decided_at", nullable=False),
        sa.Column("registry", sa.String(32), nullable=False),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("target", sa.String(256), nullable=False),
        sa.Column("target_kind", sa.String(16), nullable=False),
        sa.Column("outcome", sa.String(32), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("policies", _json(), nullable=False),
        sa.Column("checks", _json(), nullable=False),
        sa.Column("facts", _json(), nullable=False),
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
    )
    op.create_index(
        "ix_decisions_model_target_decided_at", "decisions", ["model", "target", "decided_at"]
    )
    op.create_index("ix_decisions_decided_at", "decisions", ["decided_at"])
    op.create_index("ix_decisions_event_id", "decisions", ["event_id"])

    op.create_table(
        "approvals",
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
        _time("approved_at", nullable=False),
        _time("ended_at", nullable=True),
        sa.Column("ended_reason", sa.Text, nullable=True),
    )
    op.create_index(
        "ix_approvals_registry_model_target_approved_at",
        "approvals",
        ["registry", "model", "target", "approved_at"],
    )
    op.create_index("ix_approvals_decision_id", "approvals", ["decision_id"])
    # One open approval per (registry, model, target), where the dialect has partial indexes;
    # elsewhere the ledger's transaction alone keeps the rule.
    if op.get_context().dialect.name in ("sqlite", "postgresql"):
        op.create_index(
            "uq_approvals_one_open",
            "approvals",
            ["registry", "model", "target"],
            unique=True,
            sqlite_where=sa.text("ended_at IS NULL"),
            postgresql_where=sa.text("ended_at IS NULL"),
        )


def downgrade() -> None:
    op.drop_table("approvals")  # its indexes go with it
    op.drop_table("decisions")
