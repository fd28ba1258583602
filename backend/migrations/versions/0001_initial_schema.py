"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-25 11:58:01.502514
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "roadmaps",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("topic", sa.String(length=500), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("owner", sa.String(length=200), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint(
            "status IN ('pending', 'planning', 'generating', 'completed', 'failed')",
            name=op.f("ck_roadmaps_status"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_roadmaps")),
    )
    op.create_table(
        "task_logs",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("task_id", sa.String(length=64), nullable=True),
        sa.Column("task_name", sa.String(length=200), nullable=False),
        sa.Column("queue", sa.String(length=50), nullable=True),
        sa.Column("event", sa.String(length=100), nullable=False),
        sa.Column("level", sa.String(length=10), nullable=False),
        sa.Column("payload", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_task_logs")),
    )
    op.create_index(op.f("ix_task_logs_created_at"), "task_logs", ["created_at"], unique=False)
    op.create_index(op.f("ix_task_logs_task_id"), "task_logs", ["task_id"], unique=False)
    op.create_table(
        "tavily_api_keys",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("api_key", sa.String(length=200), nullable=False),
        sa.Column("remaining_credits", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint(
            "status IN ('active', 'disabled', 'exhausted')", name=op.f("ck_tavily_api_keys_status")
        ),
        sa.CheckConstraint("remaining_credits >= 0", name=op.f("ck_tavily_api_keys_credits_non_negative")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tavily_api_keys")),
        sa.UniqueConstraint("api_key", name=op.f("uq_tavily_api_keys_api_key")),
    )
    op.create_table(
        "concepts",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("roadmap_id", sa.UUID(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("title", sa.String(length=500), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("content", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint(
            "status IN ('pending', 'generating', 'completed', 'failed')", name=op.f("ck_concepts_status")
        ),
        sa.ForeignKeyConstraint(
            ["roadmap_id"], ["roadmaps.id"], name=op.f("fk_concepts_roadmap_id_roadmaps"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_concepts")),
        sa.UniqueConstraint("roadmap_id", "position", name="uq_concepts_roadmap_position"),
    )
    op.create_index(op.f("ix_concepts_roadmap_id"), "concepts", ["roadmap_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_concepts_roadmap_id"), table_name="concepts")
    op.drop_table("concepts")
    op.drop_table("tavily_api_keys")
    op.drop_index(op.f("ix_task_logs_task_id"), table_name="task_logs")
    op.drop_index(op.f("ix_task_logs_created_at"), table_name="task_logs")
    op.drop_table("task_logs")
    op.drop_table("roadmaps")
