"""Human review: the votes reviewers cast on a pending review, and the promotion requests made
through the gate by authenticated users.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23

Frozen as written: it does not import shared.ledger.schema, which describes the head.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "votes",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "decision_id",
            sa.Integer,
            sa.ForeignKey("decisions.id", name="fk_votes_decision_id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("reviewer", sa.String(256), nullable=False),
        sa.Column("verdict", sa.String(16), nullable=False),
        sa.Column("comment", sa.Text, nullable=True),
        sa.Column("identified_by", sa.String(32), nullable=False),
        sa.Column("cast_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("decision_id", "reviewer", name="uq_votes_decision_reviewer"),
    )
    op.create_table(
        "requests",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("registry", sa.String(32), nullable=False),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("target", sa.String(256), nullable=False),
        sa.Column("requested_by", sa.String(256), nullable=False),
        sa.Column("identified_by", sa.String(32), nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("comment", sa.Text, nullable=True),
    )
    op.create_index(
        "ix_requests_registry_model_version_target",
        "requests",
        ["registry", "model", "version", "target"],
    )


def downgrade() -> None:
    op.drop_index("ix_requests_registry_model_version_target", table_name="requests")
    op.drop_table("requests")
    op.drop_table("votes")
