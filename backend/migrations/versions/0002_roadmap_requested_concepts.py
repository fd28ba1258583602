"""roadmap requested concepts

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 12:27:01.408623
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Existing rows get the default plan size, then the default goes: the app always sets it.
    op.add_column(
        "roadmaps",
        sa.Column("requested_concepts", sa.Integer(), nullable=False, server_default="30"),
    )
    op.alter_column("roadmaps", "requested_concepts", server_default=None)


def downgrade() -> None:
    op.drop_column("roadmaps", "requested_concepts")
