"""models.task holds "sequence_classification": the column widens from 16 to 32 characters

A Hugging Face config is now built with any native head its task names (causal LM, masked LM or sequence
classification). The downgrade narrows it back: the earlier schema cannot name a sequence classifier, so those
models are removed, each row first and then its bytes (no row ever names missing bytes).

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import context, op

from core.blobs.layout import model_prefix
from core.blobs.store import open_store
from core.settings import get_settings

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

_models = sa.table("models", sa.column("id", sa.Uuid), sa.column("task", sa.String))


def upgrade() -> None:
    with op.batch_alter_table("models") as batch:
        batch.alter_column("task", type_=sa.String(32), existing_type=sa.String(16), existing_nullable=True)


def downgrade() -> None:
    conn = op.get_bind()
    wide = conn.execute(sa.select(_models.c.id).where(sa.func.length(_models.c.task) > 16)).scalars().all()
    if wide:
        settings = get_settings()
        url = context.config.get_main_option("blob_url") or settings.resolved_blob_url
        store = open_store(url, settings.blob_s3_endpoint_url)
        for ident in wide:
            conn.execute(sa.delete(_models).where(_models.c.id == ident))
            store.delete_prefix(model_prefix(ident))
    with op.batch_alter_table("models") as batch:
        batch.alter_column("task", type_=sa.String(16), existing_type=sa.String(32), existing_nullable=True)
