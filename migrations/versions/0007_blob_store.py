"""bytes leave the database: datasets, model weights and artifacts move to the blob store

Each row's bytes are written to the store (GRADLAB_BLOB_URL, default file://<data_dir>/blobs, or the Alembic config's
``blob_url`` option) before its location is set, one row in memory at a time; the byte columns are dropped last.
A downgrade reads the bytes back into the rows and leaves the blobs where they are.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29
"""

import functools

import sqlalchemy as sa
from alembic import context, op

from core.blobs.layout import artifact_key, dataset_key, model_weights_key
from core.blobs.store import BlobStore, open_store, read_blob
from core.settings import get_settings

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# (table, byte column, location column, nullable bytes)
MOVED = [
    ("datasets", "data", "location", False),
    ("artifacts", "data", "location", False),
    ("models", "weights", "weights_location", True),
]


@functools.cache
def _store() -> BlobStore:
    """Opened on the first row that has bytes to move (an empty database touches no store)."""
    settings = get_settings()
    url = context.config.get_main_option("blob_url") or settings.resolved_blob_url
    return open_store(url, settings.blob_s3_endpoint_url)


def _key(conn, table: str, row) -> str:
    if table == "datasets":
        return dataset_key(row.id)
    if table == "models":
        return model_weights_key(row.id)
    jobs = sa.table("jobs", sa.column("id", sa.Uuid), sa.column("attempt", sa.Integer))
    attempt = conn.execute(sa.select(jobs.c.attempt).where(jobs.c.id == row.job_id)).scalar_one()
    return artifact_key(row.job_id, attempt, row.name)


def _table(name: str, *columns: sa.Column) -> sa.TableClause:
    ident = sa.column("id", sa.Integer if name == "artifacts" else sa.Uuid)
    return sa.table(name, ident, *columns)


def upgrade() -> None:
    conn = op.get_bind()
    _store.cache_clear()  # the URL may differ between two runs in one process
    for table, data_col, loc_col, nullable in MOVED:
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column(loc_col, sa.String(512), nullable=True))
        extra = [sa.column("job_id", sa.Uuid), sa.column("name", sa.String)] if table == "artifacts" else []
        t = _table(table, sa.column(data_col, sa.LargeBinary), sa.column(loc_col, sa.String), *extra)
        ids = conn.execute(sa.select(t.c.id).where(t.c[data_col].is_not(None))).scalars().all()
        for ident in ids:
            row = conn.execute(sa.select(t).where(t.c.id == ident)).one()
            key = _key(conn, table, row)
            _store().put(key, [getattr(row, data_col)])
            conn.execute(sa.update(t).where(t.c.id == ident).values({loc_col: key}))
        with op.batch_alter_table(table) as batch:
            if not nullable:
                batch.alter_column(loc_col, existing_type=sa.String(512), nullable=False)
            batch.drop_column(data_col)


def downgrade() -> None:
    conn = op.get_bind()
    _store.cache_clear()
    for table, data_col, loc_col, nullable in MOVED:
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column(data_col, sa.LargeBinary(), nullable=True))
        t = _table(table, sa.column(data_col, sa.LargeBinary), sa.column(loc_col, sa.String))
        for ident, key in conn.execute(sa.select(t.c.id, t.c[loc_col]).where(t.c[loc_col].is_not(None))).all():
            conn.execute(sa.update(t).where(t.c.id == ident).values({data_col: read_blob(_store(), key)}))
        with op.batch_alter_table(table) as batch:
            if not nullable:
                batch.alter_column(data_col, existing_type=sa.LargeBinary(), nullable=False)
            batch.drop_column(loc_col)
