"""The ``datasets`` and ``dataset_uploads`` tables, and the only module that queries them: a dataset's row from its
upload's start, the upload session, the validation's claim, beats and outcome (compare-and-set on the attempt that
claimed it, like jobs), and the sweep of dead validations and abandoned uploads."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import cast

from sqlalchemy import (
    and_,
    bindparam,
    delete,
    func,
    literal,
    select,
    tuple_,
    update,
)
from sqlalchemy.orm import Session, defer

from core.data.needs import DatasetInfo
from core.db import paging
from core.db.engine import rowcount
from core.db.tables import (
    Dataset,
    DatasetUpload,
    utcnow,
)


def dataset_columns(session: Session, dataset_id: uuid.UUID) -> int | None:
    """How many feature columns an uploaded dataset has; None when there is no such dataset."""
    return session.scalar(select(Dataset.columns).where(Dataset.id == dataset_id))


def dataset_token_ids(session: Session, dataset_id: uuid.UUID) -> tuple[bool, dict | None]:
    """(whether its validation recorded the fact, the {"min", "max"} of the ids a token model would read from the
    dataset: None when some value is not a whole number)."""
    preview = session.scalar(select(Dataset.preview).where(Dataset.id == dataset_id)) or {}
    return "token_ids" in preview, preview.get("token_ids")


def dataset_infos(session: Session, dataset_ids: list[uuid.UUID]) -> dict[uuid.UUID, tuple[str, DatasetInfo]]:
    """(tenant, status and what a job may need of it) of each of these uploaded datasets that exists: what a
    submission checks before queueing."""
    rows = session.execute(
        select(
            Dataset.id,
            Dataset.tenant,
            Dataset.status,
            Dataset.reason,
            Dataset.kind,
            Dataset.rows,
            Dataset.columns,
            Dataset.has_labels,
        ).where(Dataset.id.in_(dataset_ids))
    ).all()
    return {
        r.id: (
            r.tenant,
            DatasetInfo(
                status=r.status,
                reason=r.reason,
                kind=r.kind,
                rows=r.rows,
                columns=r.columns,
                has_labels=r.has_labels,
            ),
        )
        for r in rows
    }


def add_dataset(session: Session, dataset: Dataset, upload: DatasetUpload | None = None) -> Dataset:
    """The row (and its upload session) before any byte is stored: a blob never exists without the row naming it."""
    session.add(dataset)
    if upload is not None:
        session.flush()  # the dataset first: the session references it
        session.add(upload)
    session.commit()
    return dataset


# Serialises one tenant's upload starts on PostgreSQL until commit, so concurrent starts cannot overshoot its caps.
_UPLOADS_LOCK = select(
    func.pg_advisory_xact_lock(func.hashtextextended(literal("dataset-uploads:") + bindparam("tenant"), 0))
)


def add_upload_within(
    session: Session, dataset: Dataset, upload: DatasetUpload, *, max_open: int, max_bytes: int, now: datetime
) -> tuple[int, int] | None:
    """The dataset's row and its upload session, if the tenant's open uploads (uploading, not expired) stay within
    ``max_open`` sessions and ``max_bytes`` declared; else nothing is added and the answer is (open sessions, their
    declared bytes)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(_UPLOADS_LOCK, {"tenant": dataset.tenant})
    count, declared = session.execute(
        select(func.count(), func.coalesce(func.sum(DatasetUpload.size), 0))
        .join(Dataset, Dataset.id == DatasetUpload.dataset_id)
        .where(DatasetUpload.tenant == dataset.tenant, Dataset.status == "uploading", DatasetUpload.expires_at >= now)
    ).one()
    if count + 1 > max_open or declared + upload.size > max_bytes:
        session.rollback()
        return int(count), int(declared)
    add_dataset(session, dataset, upload)
    return None


def get_dataset(session: Session, dataset_id: uuid.UUID) -> Dataset | None:
    return session.get(Dataset, dataset_id)


def ready_dataset(session: Session, dataset_id: uuid.UUID) -> Dataset | None:
    """A ready dataset's row (where its files are, and its metadata), or None."""
    return session.scalar(select(Dataset).where(Dataset.id == dataset_id, Dataset.status == "ready"))


def upload_session(session: Session, upload_id: uuid.UUID) -> tuple[DatasetUpload, Dataset] | None:
    row = session.execute(
        select(DatasetUpload, Dataset)
        .join(Dataset, Dataset.id == DatasetUpload.dataset_id)
        .where(DatasetUpload.id == upload_id)
    ).first()
    return (row[0], row[1]) if row else None


def touch_upload(session: Session, upload_id: uuid.UUID, expires_at: datetime) -> bool:
    """A chunk arrived: the session lives on. False when the session is gone (given up or expired meanwhile)."""
    res = session.execute(update(DatasetUpload).where(DatasetUpload.id == upload_id).values(expires_at=expires_at))
    session.commit()
    return rowcount(res) == 1


def complete_upload(session: Session, dataset_id: uuid.UUID, now: datetime) -> bool:
    """uploading -> validating (compare-and-set); the session row stays until validation ends (its declared
    SHA-256 is checked by the worker). False when the dataset had already left ``uploading``."""
    res = session.execute(
        update(Dataset)
        .where(Dataset.id == dataset_id, Dataset.status == "uploading")
        .values(status="validating", validation_at=now)
    )
    session.commit()
    return rowcount(res) == 1


def abort_upload(session: Session, upload_id: uuid.UUID, dataset_id: uuid.UUID) -> bool:
    """An upload the client gave up: the dataset row goes with its session (only while still uploading)."""
    res = session.execute(delete(Dataset).where(Dataset.id == dataset_id, Dataset.status == "uploading"))
    session.execute(delete(DatasetUpload).where(DatasetUpload.id == upload_id))
    session.commit()
    return rowcount(res) == 1


def set_tokenizer(session: Session, dataset_id: uuid.UUID, place: Callable[[], None]) -> str | None:
    """Mark the dataset as having a tokenizer and run ``place`` (which stores it) while the row is locked, only while
    it is still uploading: a concurrent ``complete``, give-up or expiry waits for the commit, so the tokenizer is
    in place before any validation can start, and nothing is written for a dataset already gone. None when done;
    else the dataset's status (``"gone"``: no such dataset)."""
    res = session.execute(
        update(Dataset).where(Dataset.id == dataset_id, Dataset.status == "uploading").values(has_tokenizer=True)
    )
    if rowcount(res) != 1:  # nothing changed: ending the transaction by commit keeps the caller's rows loaded
        status = session.scalar(select(Dataset.status).where(Dataset.id == dataset_id))
        session.commit()
        return status or "gone"
    try:
        place()
    except BaseException:
        session.rollback()
        raise
    session.commit()
    return None


def delete_dataset(session: Session, dataset_id: uuid.UUID) -> tuple[bool, list[uuid.UUID]]:
    """The row goes with its upload sessions (their ids returned: their partial bytes go next, by the caller), unless
    a worker is validating it. (deleted, upload ids); False when it is validating or already gone."""
    uploads = list(session.scalars(select(DatasetUpload.id).where(DatasetUpload.dataset_id == dataset_id)))
    res = session.execute(delete(Dataset).where(Dataset.id == dataset_id, Dataset.status != "validating"))
    if rowcount(res) == 1:
        session.execute(delete(DatasetUpload).where(DatasetUpload.dataset_id == dataset_id))  # SQLite without FKs
    session.commit()
    return rowcount(res) == 1, uploads


def abort_validation(session: Session, dataset_id: uuid.UUID) -> None:
    """A one-shot upload refused in the request: nothing of it is kept."""
    session.execute(delete(Dataset).where(Dataset.id == dataset_id))
    session.commit()


@dataclass(frozen=True)
class ValidationClaim:
    dataset_id: uuid.UUID
    filename: str
    label_column: str | None
    has_tokenizer: bool
    size: int
    declared_sha256: str | None
    upload_id: uuid.UUID | None  # None for a one-shot upload, whose raw bytes were stored whole at once
    attempt: int


def claim_validation(session: Session, dataset_id: uuid.UUID, worker: str, now: datetime) -> ValidationClaim | None:
    """validating and unclaimed -> claimed by ``worker`` (a duplicate message claims nothing)."""
    res = session.execute(
        update(Dataset)
        .where(Dataset.id == dataset_id, Dataset.status == "validating", Dataset.validation_worker.is_(None))
        .values(validation_worker=worker, validation_attempts=Dataset.validation_attempts + 1, validation_at=now)
    )
    session.commit()
    if rowcount(res) != 1:
        return None
    ds = session.get(Dataset, dataset_id)
    assert ds is not None
    up = session.execute(
        select(DatasetUpload.id, DatasetUpload.sha256).where(DatasetUpload.dataset_id == dataset_id)
    ).first()
    return ValidationClaim(
        dataset_id,
        ds.filename,
        ds.label_column,
        ds.has_tokenizer,
        ds.upload_size,
        up.sha256 if up else None,
        up.id if up else None,
        ds.validation_attempts,
    )


def _validating_by(dataset_id: uuid.UUID, worker: str, attempt: int):
    return and_(
        Dataset.id == dataset_id,
        Dataset.status == "validating",
        Dataset.validation_worker == worker,
        Dataset.validation_attempts == attempt,
    )


def beat_validation(session: Session, dataset_id: uuid.UUID, worker: str, attempt: int, now: datetime) -> bool:
    """The validating worker is alive; False when the dataset is no longer its to validate."""
    res = session.execute(update(Dataset).where(_validating_by(dataset_id, worker, attempt)).values(validation_at=now))
    session.commit()
    return rowcount(res) == 1


def finish_validation(session: Session, dataset_id: uuid.UUID, worker: str, attempt: int, **outcome) -> bool:
    """validating -> ready (``outcome``: kind, format, rows, columns, has_labels, files, preview, sha256) or
    rejected (``reason``), by the attempt that claimed it; its upload session ends with it."""
    status = "rejected" if "reason" in outcome else "ready"
    res = session.execute(
        update(Dataset)
        .where(_validating_by(dataset_id, worker, attempt))
        .values(status=status, validation_worker=None, validation_at=None, **outcome)
    )
    if rowcount(res) == 1:
        session.execute(delete(DatasetUpload).where(DatasetUpload.dataset_id == dataset_id))
    session.commit()
    return rowcount(res) == 1


@dataclass
class DatasetSweep:
    republish: list[uuid.UUID]  # validations whose worker died, or whose message may be lost
    rejected: list[uuid.UUID]  # validations that killed their worker too often
    expired: list[tuple[uuid.UUID, uuid.UUID]]  # (upload id, dataset id) of abandoned uploads: delete their bytes


def sweep_datasets(
    session: Session,
    *,
    heartbeat_timeout_s: float,
    republish_after_s: float,
    max_attempts: int,
    now: datetime | None = None,
) -> DatasetSweep:
    """Recover validations like jobs (``sweep``): a claimed one whose worker stopped beating is released and
    published again, or rejected after ``max_attempts``; an unclaimed one is published again every
    ``republish_after_s`` (a duplicate claims nothing). Uploads past their expiry are deleted with their row."""
    now = now or utcnow()
    out = DatasetSweep([], [], [])
    stale = now - timedelta(seconds=heartbeat_timeout_s)
    dead = session.execute(
        select(Dataset.id, Dataset.validation_worker, Dataset.validation_attempts).where(
            Dataset.status == "validating", Dataset.validation_worker.is_not(None), Dataset.validation_at < stale
        )
    ).all()
    for ds_id, worker, attempt in dead:
        assert worker is not None  # selected so
        where = and_(_validating_by(ds_id, worker, attempt), Dataset.validation_at < stale)
        if attempt >= max_attempts:
            res = session.execute(
                update(Dataset)
                .where(where)
                .values(
                    status="rejected",
                    validation_worker=None,
                    reason=f"file: the worker validating it stopped responding on each of {attempt} attempts "
                    f"(killed or out of memory); giving up",
                )
            )
            if rowcount(res) == 1:
                session.execute(delete(DatasetUpload).where(DatasetUpload.dataset_id == ds_id))
                out.rejected.append(ds_id)
        else:
            res = session.execute(update(Dataset).where(where).values(validation_worker=None, validation_at=now))
            if rowcount(res) == 1:
                out.republish.append(ds_id)
        session.commit()
    lost = now - timedelta(seconds=republish_after_s)
    waiting = session.execute(
        select(Dataset.id).where(
            Dataset.status == "validating", Dataset.validation_worker.is_(None), Dataset.validation_at < lost
        )
    ).scalars()
    for ds_id in list(waiting):
        res = session.execute(
            update(Dataset)
            .where(
                Dataset.id == ds_id,
                Dataset.status == "validating",
                Dataset.validation_worker.is_(None),
                Dataset.validation_at < lost,
            )
            .values(validation_at=now)
        )
        if rowcount(res) == 1:
            out.republish.append(ds_id)
        session.commit()
    expired = session.execute(
        select(DatasetUpload.id, DatasetUpload.dataset_id)
        .join(Dataset, Dataset.id == DatasetUpload.dataset_id)
        .where(DatasetUpload.expires_at < now, Dataset.status == "uploading")
    ).all()
    for upload_id, ds_id in expired:
        res = session.execute(
            delete(Dataset).where(Dataset.id == ds_id, Dataset.status == "uploading")
        )  # the session goes with it (ON DELETE CASCADE); a dataset past uploading keeps its session until validated
        if rowcount(res) == 1:
            session.execute(delete(DatasetUpload).where(DatasetUpload.id == upload_id))  # SQLite without FKs
            out.expired.append((upload_id, ds_id))
        session.commit()
    return out


def stored_bytes(session: Session) -> int:
    """Bytes of every dataset's canonical files in the blob store (from the rows' recorded sizes)."""
    return cast(int, session.execute(select(func.coalesce(func.sum(Dataset.size), 0))).scalar_one())


# --- the list, and a validation's place in line -------------------------------------------------------------------


def list_datasets(
    session: Session, *, tenant: str | None, status: str | None, fmt: str | None, limit: int, cursor: str | None
) -> tuple[list[Dataset], str | None]:
    """A page of datasets newest first (tenant None: every tenant's), without their previews: a range of
    ``ix_datasets_tenant_status_created`` or ``..._format_created`` (both filters: one range, the other filtered)."""
    q = select(Dataset).options(defer(Dataset.preview), defer(Dataset.files))
    if tenant is not None:
        q = q.where(Dataset.tenant == tenant)
    if status:
        q = q.where(Dataset.status == status)
    if fmt:
        q = q.where(Dataset.format == fmt)
    rows = session.scalars(paging.newest_first(q, Dataset.created_at, Dataset.id, limit, cursor)).all()
    return paging.page(rows, limit)


def validation_place(session: Session, ds: Dataset) -> int | None:
    """1 + the validations waiting ahead of this one, while it waits unclaimed (those whose upload began before
    it: ``validation_at`` moves at every republish, the order of first messages does not); None once a worker
    validates it, or when it is not validating. Read from ``ix_datasets_status_validation``'s waiting rows."""
    if ds.status != "validating" or ds.validation_worker is not None:
        return None
    ahead = session.scalar(
        select(func.count()).where(
            Dataset.status == "validating",
            Dataset.validation_worker.is_(None),
            tuple_(Dataset.created_at, Dataset.id) < tuple_(ds.created_at, ds.id),
        )
    )
    return 1 + (ahead or 0)
