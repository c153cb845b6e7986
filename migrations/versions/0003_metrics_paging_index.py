"""index for paging a job's metrics by row id

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_metrics_job_id_id", "metrics", ["job_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_metrics_job_id_id", table_name="metrics")
