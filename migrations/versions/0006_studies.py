"""studies: a grid of settings over seeds, each child an ordinary job

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "studies",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("request", sa.JSON(), nullable=False),
        sa.Column("settings", sa.JSON(), nullable=False),
        sa.Column("seeds", sa.JSON(), nullable=False),
        sa.Column("baseline", sa.Integer(), nullable=False),
        sa.Column("idempotency_key", sa.String(255), nullable=True),
        sa.Column("request_hash", sa.String(64), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("cancelled_at", TS, nullable=True),
        sa.UniqueConstraint("tenant", "idempotency_key", name="uq_studies_tenant_idempotency_key"),
    )
    op.create_index("ix_studies_tenant_created", "studies", ["tenant", "created_at"])
    op.create_table(
        "study_jobs",
        sa.Column("study_id", sa.Uuid(), sa.ForeignKey("studies.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("job_id", sa.Uuid(), sa.ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("setting", sa.Integer(), nullable=False),
        sa.Column("seed", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_study_jobs_job", "study_jobs", ["job_id"])


def downgrade() -> None:
    op.drop_index("ix_study_jobs_job", table_name="study_jobs")
    op.drop_table("study_jobs")
    op.drop_index("ix_studies_tenant_created", table_name="studies")
    op.drop_table("studies")
