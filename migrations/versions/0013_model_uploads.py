"""models: sharded checkpoints and exported programs (files, nullable config/model_type/task); model_uploads sessions

Existing models are a config with at most one ``model.safetensors``: their format becomes ``safetensors`` (with
weights) or ``config`` (without), and ``files`` lists the one file. The downgrade keeps only those: sharded and
exported models, and uploads in progress, are removed with their bytes (the earlier schema cannot name them).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-08
"""

import functools

import sqlalchemy as sa
from alembic import context, op

from core.blobs.layout import model_prefix, model_upload_prefix
from core.blobs.store import BlobStore, open_store
from core.settings import get_settings

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)

_models = sa.table(
    "models",
    sa.column("id", sa.Uuid),
    sa.column("format", sa.String),
    sa.column("weights_location", sa.String),
    sa.column("weights_size", sa.BigInteger),
    sa.column("files", sa.JSON),
)
_uploads = sa.table("model_uploads", sa.column("id", sa.Uuid), sa.column("model_id", sa.Uuid))


@functools.cache
def _store() -> BlobStore:
    """Opened on the first row whose bytes go (an empty database touches no store)."""
    settings = get_settings()
    url = context.config.get_main_option("blob_url") or settings.resolved_blob_url
    return open_store(url, settings.blob_s3_endpoint_url)


def upgrade() -> None:
    _store.cache_clear()
    with op.batch_alter_table("models") as batch:
        batch.add_column(sa.Column("files", sa.JSON(), nullable=True))
        batch.alter_column("model_type", existing_type=sa.String(64), nullable=True)
        batch.alter_column("task", existing_type=sa.String(16), nullable=True)
        batch.alter_column("config", existing_type=sa.JSON(), nullable=True)
    op.create_table(
        "model_uploads",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("model_id", sa.Uuid(), nullable=False, unique=True),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("format", sa.String(16), nullable=False),
        sa.Column("files", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("checking_since", TS, nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
    )
    op.create_index("ix_model_uploads_expires", "model_uploads", ["expires_at"])
    conn = op.get_bind()
    conn.execute(sa.update(_models).where(_models.c.weights_location.is_(None)).values(format="config"))
    weighted = conn.execute(
        sa.select(_models.c.id, _models.c.weights_size).where(_models.c.weights_location.is_not(None))
    ).all()
    for ident, size in weighted:
        files = [{"name": "model.safetensors", "size": size}]
        conn.execute(sa.update(_models).where(_models.c.id == ident).values(format="safetensors", files=files))


def downgrade() -> None:
    _store.cache_clear()
    conn = op.get_bind()
    for upload_id, model_id in conn.execute(sa.select(_uploads.c.id, _uploads.c.model_id)).all():
        _store().delete_prefix(model_upload_prefix(upload_id))
        _store().delete_prefix(model_prefix(model_id))
    op.drop_table("model_uploads")
    newer = _models.c.format.in_(("sharded", "exported"))
    for (ident,) in conn.execute(sa.select(_models.c.id).where(newer)).all():
        conn.execute(sa.delete(_models).where(_models.c.id == ident))  # the row first: no row names missing bytes
        _store().delete_prefix(model_prefix(ident))
    conn.execute(sa.update(_models).values(format="hf_config"))
    with op.batch_alter_table("models") as batch:
        batch.drop_column("files")
        batch.alter_column("model_type", existing_type=sa.String(64), nullable=False)
        batch.alter_column("task", existing_type=sa.String(16), nullable=False)
        batch.alter_column("config", existing_type=sa.JSON(), nullable=False)
