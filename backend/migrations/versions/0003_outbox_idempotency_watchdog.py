"""outbox, idempotency keys and the watchdog's columns

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 11:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "outbox",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("task_name", sa.String(200), nullable=False),
        sa.Column("args", postgresql.JSONB(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("last_error", sa.Text()),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("available_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_outbox"),
    )
    op.create_index("ix_outbox_available_at", "outbox", ["available_at"])
    op.add_column("roadmaps", sa.Column("idempotency_key", sa.String(200)))
    op.add_column("roadmaps", sa.Column("redispatches", sa.Integer(), nullable=False, server_default="0"))
    op.create_index(
        "uq_roadmaps_owner_idempotency_key",
        "roadmaps",
        ["owner", "idempotency_key"],
        unique=True,
        postgresql_where=sa.text("idempotency_key IS NOT NULL"),
    )
    op.create_index(
        "ix_roadmaps_in_progress_updated_at",
        "roadmaps",
        ["updated_at"],
        postgresql_where=sa.text("status IN ('pending', 'planning', 'generating')"),
    )


def downgrade() -> None:
    op.drop_index("ix_roadmaps_in_progress_updated_at", table_name="roadmaps")
    op.drop_index("uq_roadmaps_owner_idempotency_key", table_name="roadmaps")
    op.drop_column("roadmaps", "redispatches")
    op.drop_column("roadmaps", "idempotency_key")
    op.drop_index("ix_outbox_available_at", table_name="outbox")
    op.drop_table("outbox")
