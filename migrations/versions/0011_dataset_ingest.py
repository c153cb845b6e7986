"""datasets are uploaded resumably and validated by a worker: status, kind, canonical files, preview; upload sessions

Existing datasets were accepted by the old parser, so they become ``ready`` arrays. Their one canonical .npz (stored,
not compressed: numpy's ``x.npy``/``y.npy`` entries are whole .npy files) is copied entry by entry into the new
layout, ``datasets/<id>/x.npy`` and ``y.npy``, streamed (never a whole array in memory); the .npz is left where it
was, for the downgrade. The downgrade keeps only ready arrays datasets, writing an .npz for those made after the
upgrade.

Revision ID: 0011
Revises: 0009
Create Date: 2026-11-29
"""

import functools
import io
import zipfile

import sqlalchemy as sa
from alembic import context, op

from core.blobs.layout import dataset_file_key, dataset_key, dataset_prefix
from core.blobs.store import BlobStore, open_store
from core.settings import get_settings

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
CHUNK = 1024 * 1024


@functools.cache
def _store() -> BlobStore:
    """Opened on the first row that has bytes to move (an empty database touches no store)."""
    settings = get_settings()
    url = context.config.get_main_option("blob_url") or settings.resolved_blob_url
    return open_store(url, settings.blob_s3_endpoint_url)


_datasets = sa.table(
    "datasets",
    sa.column("id", sa.Uuid),
    sa.column("location", sa.String),
    sa.column("files", sa.JSON),
    sa.column("kind", sa.String),
    sa.column("status", sa.String),
    sa.column("has_labels", sa.Boolean),
)


def _entries(npz: zipfile.ZipFile, name: str):
    with npz.open(name) as entry:
        while block := entry.read(CHUNK):
            yield block


def upgrade() -> None:
    _store.cache_clear()  # the URL may differ between two runs in one process
    with op.batch_alter_table("datasets") as batch:
        batch.add_column(sa.Column("status", sa.String(16), nullable=False, server_default="ready"))
        batch.add_column(sa.Column("reason", sa.Text(), nullable=True))
        batch.add_column(sa.Column("kind", sa.String(16), nullable=True))
        batch.add_column(sa.Column("label_column", sa.String(128), nullable=True))
        batch.add_column(sa.Column("has_tokenizer", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("files", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("preview", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("validation_worker", sa.String(255), nullable=True))
        batch.add_column(sa.Column("validation_attempts", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("validation_at", TS, nullable=True))
        batch.add_column(sa.Column("upload_size", sa.BigInteger(), nullable=False, server_default="0"))
        batch.alter_column("size", existing_type=sa.BigInteger(), nullable=True)
        batch.alter_column("rows", existing_type=sa.Integer(), type_=sa.BigInteger(), nullable=True)
        batch.alter_column("columns", existing_type=sa.Integer(), nullable=True)
        batch.alter_column("has_labels", existing_type=sa.Boolean(), nullable=True)
        batch.alter_column("sha256", existing_type=sa.String(64), nullable=True)
        batch.create_index("ix_datasets_status_validation", ["status", "validation_at"])
    op.create_table(
        "dataset_uploads",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("dataset_id", sa.Uuid(), sa.ForeignKey("datasets.id", ondelete="CASCADE"), nullable=False),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
    )
    op.create_index("ix_dataset_uploads_expires", "dataset_uploads", ["expires_at"])
    op.create_index("ix_dataset_uploads_dataset_id", "dataset_uploads", ["dataset_id"])

    conn = op.get_bind()
    conn.execute(sa.text("UPDATE datasets SET upload_size = size"))
    for ident, location in conn.execute(sa.select(_datasets.c.id, _datasets.c.location)).all():
        files = []
        with _store().open(location) as fh, zipfile.ZipFile(fh) as npz:
            for name in ("x.npy", "y.npy"):
                if name in npz.namelist():
                    _store().put(dataset_file_key(ident, name), _entries(npz, name))
                    files.append(name)
        conn.execute(
            sa.update(_datasets)
            .where(_datasets.c.id == ident)
            .values(location=dataset_prefix(ident), files=files, kind="arrays")
        )


def _write_npz(ident) -> None:
    """The pre-0011 layout of an arrays dataset made after the upgrade: one stored .npz of its x and y."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as out:
        for name in ("x.npy", "y.npy"):
            key = dataset_file_key(ident, name)
            if _store().exists(key):
                with _store().open(key) as src, out.open(name, "w", force_zip64=True) as entry:
                    while block := src.read(CHUNK):
                        entry.write(block)
    _store().put(dataset_key(ident), [buf.getvalue()])


def downgrade() -> None:
    _store.cache_clear()
    conn = op.get_bind()
    op.drop_table("dataset_uploads")
    keep = sa.and_(_datasets.c.status == "ready", _datasets.c.kind == "arrays")
    conn.execute(sa.delete(_datasets).where(sa.not_(keep)))
    for (ident,) in conn.execute(sa.select(_datasets.c.id)).all():
        if not _store().exists(dataset_key(ident)):
            _write_npz(ident)
        conn.execute(sa.update(_datasets).where(_datasets.c.id == ident).values(location=dataset_key(ident)))
    with op.batch_alter_table("datasets") as batch:
        batch.drop_index("ix_datasets_status_validation")
        for column in (
            "status",
            "reason",
            "kind",
            "label_column",
            "has_tokenizer",
            "files",
            "preview",
            "validation_worker",
            "validation_attempts",
            "validation_at",
            "upload_size",
        ):
            batch.drop_column(column)
        batch.alter_column("rows", existing_type=sa.BigInteger(), type_=sa.Integer(), nullable=False)
        batch.alter_column("columns", existing_type=sa.Integer(), nullable=False)
        batch.alter_column("has_labels", existing_type=sa.Boolean(), nullable=False)
        batch.alter_column("sha256", existing_type=sa.String(64), nullable=False)
        batch.alter_column("size", existing_type=sa.BigInteger(), nullable=False)
