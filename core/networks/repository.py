"""The ``models`` table (uploaded models: config, inspected summary, where the weights are), and the only module
that queries it."""

from __future__ import annotations

import uuid
from typing import cast

from sqlalchemy import (
    func,
    select,
)
from sqlalchemy.orm import Session

from core.db.tables import (
    StoredModel,
)

_MODEL_META = list(StoredModel.__table__.c)


def add_model(session: Session, model: StoredModel) -> StoredModel:
    session.add(model)
    session.commit()
    return model


def model_meta(session: Session, model_id: uuid.UUID):
    """Everything of an uploaded model but its weights (a Row with the columns as attributes), or None."""
    return session.execute(select(*_MODEL_META).where(StoredModel.id == model_id)).first()


def list_models(session: Session, *, tenant: str | None, limit: int) -> list:
    """Newest first, without weights; ``tenant`` None: every tenant's (admin)."""
    query = select(*_MODEL_META).order_by(StoredModel.created_at.desc(), StoredModel.id.desc()).limit(limit)
    if tenant is not None:
        query = query.where(StoredModel.tenant == tenant)
    return list(session.execute(query).all())


def stored_bytes(session: Session) -> int:
    """Bytes of every uploaded model's weights in the blob store (from the rows' recorded sizes)."""
    return cast(int, session.execute(select(func.coalesce(func.sum(StoredModel.weights_size), 0))).scalar_one())
