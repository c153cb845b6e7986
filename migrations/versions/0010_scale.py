"""metric_rollups (per-block min/max of each series, for downsampled reads); jobs.pruned_at (retention); indexes for
the filtered job list and for retention

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

UNPRUNED_WHERE = "pruned_at IS NULL AND finished_at IS NOT NULL"
LEVELS = (4, 8, 12, 16, 20, 24, 28, 32)  # core.metrics.rollup.LEVELS when this revision was written

# One level of the rollup from the raw rows: per block its extremes, ties to the least step (as core.metrics.rollup).
# Portable SQL (window functions exist on SQLite >= 3.25); ">>" is an arithmetic shift on both backends.
BACKFILL = """
INSERT INTO metric_rollups (job_id, name, level, block, n, first_step, last_step, min_step, min_value, max_step,
                            max_value)
SELECT job_id, name, {level}, block, count(*), min(step), max(step),
       min(CASE WHEN low = 1 THEN step END), min(CASE WHEN low = 1 THEN value END),
       min(CASE WHEN high = 1 THEN step END), max(CASE WHEN high = 1 THEN value END)
FROM (
    SELECT job_id, name, step, value, step >> {level} AS block,
           row_number() OVER (PARTITION BY job_id, name, step >> {level} ORDER BY value, step) AS low,
           row_number() OVER (PARTITION BY job_id, name, step >> {level} ORDER BY value DESC, step) AS high
    FROM metrics WHERE value IS NOT NULL
) ranked
GROUP BY job_id, name, block
"""

NEW_INDEXES = (
    ("ix_jobs_tenant_status_kind_created", ["tenant", "status", "kind", "created_at", "id"], None),
    ("ix_jobs_status_kind_created", ["status", "kind", "created_at", "id"], None),
    ("ix_jobs_unpruned_finished", ["finished_at"], UNPRUNED_WHERE),
)


def upgrade() -> None:
    op.create_table(
        "metric_rollups",
        sa.Column("job_id", sa.Uuid(), sa.ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("level", sa.Integer(), primary_key=True),
        sa.Column("block", sa.BigInteger(), primary_key=True),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.Column("first_step", sa.BigInteger(), nullable=False),
        sa.Column("last_step", sa.BigInteger(), nullable=False),
        sa.Column("min_step", sa.BigInteger(), nullable=False),
        sa.Column("min_value", sa.Float(), nullable=False),
        sa.Column("max_step", sa.BigInteger(), nullable=False),
        sa.Column("max_value", sa.Float(), nullable=False),
    )
    op.add_column("jobs", sa.Column("pruned_at", sa.DateTime(timezone=True), nullable=True))
    for level in LEVELS:
        op.execute(BACKFILL.format(level=level))
    postgres = op.get_bind().dialect.name == "postgresql"
    if postgres:
        with op.get_context().autocommit_block():
            for name, columns, where in NEW_INDEXES:
                op.create_index(
                    name,
                    "jobs",
                    columns,
                    postgresql_where=sa.text(where) if where else None,
                    postgresql_concurrently=True,
                    if_not_exists=True,
                )
    else:
        for name, columns, where in NEW_INDEXES:
            op.create_index(name, "jobs", columns, sqlite_where=sa.text(where) if where else None)


def downgrade() -> None:
    for name, _, _ in NEW_INDEXES:
        op.drop_index(name, table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("pruned_at")
    op.drop_table("metric_rollups")
