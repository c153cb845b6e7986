"""artifacts.recipe: an artifact rendered when first asked for (a plot's renderer and its JSON arguments)

A row with a recipe has no bytes yet: the API renders them on the first GET, stores them at the row's location
and clears the recipe. The downgrade renders nothing: rows still waiting for their bytes are removed.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("artifacts", sa.Column("recipe", sa.JSON(), nullable=True))


def downgrade() -> None:
    op.execute("DELETE FROM artifacts WHERE recipe IS NOT NULL")
    with op.batch_alter_table("artifacts") as batch:
        batch.drop_column("recipe")
