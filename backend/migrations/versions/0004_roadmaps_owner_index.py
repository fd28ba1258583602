"""roadmaps owner index

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26 11:30:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Reads are scoped to their owner: each user's page and count use this index, not a table scan.
    op.create_index("ix_roadmaps_owner_created_at", "roadmaps", ["owner", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_roadmaps_owner_created_at", table_name="roadmaps")
