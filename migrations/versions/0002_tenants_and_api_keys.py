"""tenants on jobs and datasets, hashed API keys

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("admin", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
    )
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("tenant", sa.String(64), nullable=False, server_default="local"))
        batch.drop_constraint("uq_jobs_idempotency_key", type_="unique")
        batch.create_unique_constraint("uq_jobs_tenant_idempotency_key", ["tenant", "idempotency_key"])
        batch.create_index("ix_jobs_tenant_created", ["tenant", "created_at"])
    with op.batch_alter_table("jobs") as batch:
        batch.alter_column("tenant", server_default=None)
    with op.batch_alter_table("datasets") as batch:
        batch.add_column(sa.Column("tenant", sa.String(64), nullable=False, server_default="local"))
        batch.create_index("ix_datasets_tenant", ["tenant"])
    with op.batch_alter_table("datasets") as batch:
        batch.alter_column("tenant", server_default=None)


def downgrade() -> None:
    with op.batch_alter_table("datasets") as batch:
        batch.drop_index("ix_datasets_tenant")
        batch.drop_column("tenant")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_tenant_created")
        batch.drop_constraint("uq_jobs_tenant_idempotency_key", type_="unique")
        batch.create_unique_constraint("uq_jobs_idempotency_key", ["idempotency_key"])
        batch.drop_column("tenant")
    op.drop_table("api_keys")
