"""partial index of each tenant's queued and running jobs, for admission

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

ACTIVE_WHERE = "status IN ('queued', 'running')"


def upgrade() -> None:
    op.create_index(
        "ix_jobs_tenant_active",
        "jobs",
        ["tenant"],
        postgresql_where=sa.text(ACTIVE_WHERE),
        sqlite_where=sa.text(ACTIVE_WHERE),
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_tenant_active", table_name="jobs")
