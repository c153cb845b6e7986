"""The ``models`` and ``model_uploads`` tables, and the only module that queries them: stored models (config,
inspected summary, where the files are), the sessions of resumable uploads, their claim by the request that
completes them, and the sweep of abandoned ones."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import cast

from sqlalchemy import (
    and_,
    delete,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Session

from core.db import paging
from core.db.engine import rowcount
from core.db.tables import (
    ModelUpload,
    StoredModel,
)

_MODEL_META = list(StoredModel.__table__.c)


def add_model(session: Session, model: StoredModel) -> StoredModel:
    session.add(model)
    session.commit()
    return model


def model_meta(session: Session, model_id: uuid.UUID):
    """Everything of a stored model (a Row with the columns as attributes), or None."""
    return session.execute(select(*_MODEL_META).where(StoredModel.id == model_id)).first()


def list_models(
    session: Session, *, tenant: str | None, formats: tuple[str, ...] | None, limit: int, cursor: str | None
) -> tuple[list, str | None]:
    """Newest first, keyset-paginated on (created_at, id) like jobs; ``tenant`` None: every tenant's (admin);
    ``formats``: only these. ValueError on a cursor this service did not make."""
    query = select(*_MODEL_META)
    if tenant is not None:
        query = query.where(StoredModel.tenant == tenant)
    if formats is not None:
        query = query.where(StoredModel.format.in_(formats))
    rows = session.execute(paging.newest_first(query, StoredModel.created_at, StoredModel.id, limit, cursor)).all()
    return paging.page(rows, limit)


def delete_model(session: Session, model_id: uuid.UUID) -> bool:
    """The row goes (its bytes right after, by the caller); False when it was already gone."""
    res = session.execute(delete(StoredModel).where(StoredModel.id == model_id))
    session.commit()
    return rowcount(res) == 1


def stored_bytes(session: Session) -> int:
    """Bytes of every stored model's files in the blob store (from the rows' recorded sizes)."""
    return cast(int, session.execute(select(func.coalesce(func.sum(StoredModel.weights_size), 0))).scalar_one())


# --- resumable uploads --------------------------------------------------------------------------------------------


def add_upload(session: Session, upload: ModelUpload) -> ModelUpload:
    """The session row before any byte is stored: every partial object, and the model prefix that completing fills,
    is named by it."""
    session.add(upload)
    session.commit()
    return upload


def get_upload(session: Session, upload_id: uuid.UUID) -> ModelUpload | None:
    return session.get(ModelUpload, upload_id)


def upload_exists(session: Session, upload_id: uuid.UUID) -> bool:
    """Read afresh (not from the session's identity map): whether the session row is still there."""
    return session.execute(select(ModelUpload.id).where(ModelUpload.id == upload_id)).first() is not None


def touch_upload(session: Session, upload_id: uuid.UUID, expires_at: datetime) -> None:
    """A chunk arrived: the session lives on."""
    session.execute(update(ModelUpload).where(ModelUpload.id == upload_id).values(expires_at=expires_at))
    session.commit()


def claim_upload(session: Session, upload_id: uuid.UUID, now: datetime, stale_before: datetime) -> bool:
    """uploading -> checking, by one completing request (compare-and-set); a claim older than ``stale_before``
    (its request died) may be taken over."""
    res = session.execute(
        update(ModelUpload)
        .where(
            ModelUpload.id == upload_id,
            or_(
                ModelUpload.status == "uploading",
                and_(ModelUpload.status == "checking", ModelUpload.checking_since < stale_before),
            ),
        )
        .values(status="checking", checking_since=now)
    )
    session.commit()
    return rowcount(res) == 1


def release_upload(session: Session, upload_id: uuid.UUID, expires_at: datetime) -> None:
    """checking -> uploading: the check could not finish now (bytes missing, the inspector busy); retry later."""
    session.execute(
        update(ModelUpload)
        .where(ModelUpload.id == upload_id)
        .values(status="uploading", checking_since=None, expires_at=expires_at)
    )
    session.commit()


def finish_upload(session: Session, upload_id: uuid.UUID, model: StoredModel) -> StoredModel:
    """The model's row is made and its upload session ends, in one transaction."""
    session.add(model)
    session.execute(delete(ModelUpload).where(ModelUpload.id == upload_id))
    session.commit()
    return model


def drop_upload(session: Session, upload_id: uuid.UUID, *, only_uploading: bool) -> bool:
    """The session row goes (its bytes right after, by the caller); ``only_uploading``: not while a request is
    checking it. False when nothing was deleted."""
    where = [ModelUpload.id == upload_id]
    if only_uploading:
        where.append(ModelUpload.status == "uploading")
    res = session.execute(delete(ModelUpload).where(*where))
    session.commit()
    return rowcount(res) == 1


def expired_uploads(session: Session, now: datetime) -> list[tuple[uuid.UUID, uuid.UUID]]:
    """(upload id, model id) of each upload that got no chunk before its expiry, its row deleted here: the caller
    removes their bytes."""
    found = session.execute(select(ModelUpload.id, ModelUpload.model_id).where(ModelUpload.expires_at < now)).all()
    out = []
    for upload_id, model_id in found:
        res = session.execute(delete(ModelUpload).where(ModelUpload.id == upload_id, ModelUpload.expires_at < now))
        session.commit()
        if rowcount(res) == 1:
            out.append((upload_id, model_id))
    return out
