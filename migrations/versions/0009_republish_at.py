"""jobs.republish_at: when the sweeper publishes a still-queued job again (the interval doubles each time)

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("republish_at", sa.DateTime(timezone=True), nullable=True))
    # jobs queued before this change are published once more at the next sweep, then on the doubling schedule
    op.execute("UPDATE jobs SET republish_at = published_at WHERE status = 'queued'")


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("republish_at")
