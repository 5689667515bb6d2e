"""Approvals say how they ended: replaced by a newer approval, or revoked (rolled back, undone).

A version whose approval for a stage was replaced may stay in the stage (a policy without
`archive_existing`); one whose approval was revoked may not.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23

Frozen as written: it does not import shared.ledger.schema, which describes the head.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "approvals",
        sa.Column("revoked", sa.Boolean, nullable=False, server_default=sa.false()),
    )
    # 0001 wrote "replaced by version N" for a replacement, anything else for an end.
    op.execute(
        sa.text(
            "UPDATE approvals SET revoked = :yes WHERE ended_at IS NOT NULL "
            "AND (ended_reason IS NULL OR ended_reason NOT LIKE 'replaced by version %')"
        ).bindparams(yes=True)
    )


def downgrade() -> None:
    op.drop_column("approvals", "revoked")
