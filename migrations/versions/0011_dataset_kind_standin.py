"""STAND-IN (branch `formats`): datasets.kind and a nullable datasets.columns, only so that this branch's tests of
the submit-time dataset-kind check run. The `ingest` branch owns the real migration 0011 (with these columns and
more); at merge the lead keeps ingest's and drops this file.

Revision ID: 0011
Revises: 0009
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("datasets") as batch:
        batch.add_column(sa.Column("kind", sa.String(16), nullable=False, server_default="arrays"))
        batch.alter_column("columns", existing_type=sa.Integer(), nullable=True)


def downgrade() -> None:
    op.execute("DELETE FROM datasets WHERE kind <> 'arrays'")  # text and pairs datasets have no columns
    with op.batch_alter_table("datasets") as batch:
        batch.alter_column("columns", existing_type=sa.Integer(), nullable=False)
        batch.drop_column("kind")
