"""workers table (presence, device and counters of each worker process); indexes for queue position and ETA

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

QUEUED_WHERE = "status = 'queued'"
SUCCEEDED_WHERE = "status = 'succeeded'"


def upgrade() -> None:
    op.create_table(
        "workers",
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("queues", sa.JSON(), nullable=False),
        sa.Column("device", sa.JSON(), nullable=False),
        sa.Column("stats", sa.JSON(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index(
        "ix_jobs_queued_queue",
        "jobs",
        ["queue", "published_at"],
        postgresql_where=sa.text(QUEUED_WHERE),
        sqlite_where=sa.text(QUEUED_WHERE),
    )
    op.create_index(
        "ix_jobs_succeeded_kind",
        "jobs",
        ["kind", "queue", "finished_at"],
        postgresql_where=sa.text(SUCCEEDED_WHERE),
        sqlite_where=sa.text(SUCCEEDED_WHERE),
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_succeeded_kind", table_name="jobs")
    op.drop_index("ix_jobs_queued_queue", table_name="jobs")
    op.drop_table("workers")
