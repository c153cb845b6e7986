"""Uploaded datasets' rules: whether the datasets a job names can serve it, an upload's life (its row made before any
byte is stored, so a blob never exists without a row that names it; resumed from the bytes the store holds;
completed into a validation; given up), and the beat that keeps a validator's claim alive.

A one-shot upload of a small file is validated in the API process, through the same pipeline as a worker's
validation (``core.data.ingest``) with the API process as its validator: if it dies mid-way, the sweeper hands the
dataset to a worker.
"""

from __future__ import annotations

import io
import logging
import os
import re
import socket
import threading
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import BinaryIO, Protocol

from pydantic import BaseModel
from sqlalchemy.exc import InvalidRequestError
from sqlalchemy.orm import Session, sessionmaker

from core.blobs import blob_store
from core.blobs.layout import (
    dataset_prefix,
    dataset_raw_key,
    dataset_tokenizer_key,
    tokenizer_staging_key,
    tokenizer_staging_prefix,
    upload_partial_key,
)
from core.blobs.store import BlobStore, BlobTooLarge, ChunkTooSmall, OffsetMismatch
from core.data import uploaded_dataset_ids
from core.data.formats import UploadRejected, format_of
from core.data.ingest import ingest
from core.data.needs import dataset_refusal
from core.datasets import repository as datasets
from core.db.tables import Dataset, DatasetUpload, utcnow
from core.errors import Conflict, Invalid, Malformed, NotFound, TooLarge
from core.keys.repository import Principal
from core.settings import Settings
from core.techniques import specs

log = logging.getLogger(__name__)

API_WORKER = f"api:{socket.gethostname()}:{os.getpid()}"  # the validator of one-shot uploads, for the sweeper


class ValidationPublisher(Protocol):
    def publish_validation(self, dataset_id: uuid.UUID | str) -> bool: ...


def check_datasets(session: Session, tenant: str, kind: str, params: BaseModel, field: str) -> None:
    """``Invalid`` on ``field`` naming the first uploaded dataset the params name that cannot serve a job of
    ``tenant`` and ``kind``, and why: each must exist, be the tenant's, be ``ready`` (not validating, not rejected)
    and be what the kind needs of it (``KindSpec.dataset_needs``). Decided from the rows, in one query."""
    named = uploaded_dataset_ids(params)
    if not named:
        return
    needs = specs()[kind].dataset_needs(params)
    found = datasets.dataset_infos(session, [uuid.UUID(ds) for ds in named])
    for ds in named:
        owner, info = found.get(uuid.UUID(ds), (None, None))
        if info is None or owner != tenant:
            why, error = f"dataset {ds} not found", "not_found"
        elif info.status == "rejected":
            why, error = f"dataset {ds} was rejected: {info.reason}", "dataset_rejected"
        elif info.status != "ready":
            why, error = f"dataset {ds} is not ready yet ({info.status})", "dataset_not_ready"
        elif (refused := dataset_refusal(needs, info, ds)) is not None:
            why, error = refused, "wrong_dataset"
        else:
            continue
        raise Invalid.of(field, why, error)


def clean_filename(raw: str | None) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", (raw or "upload").rsplit("/", 1)[-1])[:255]


def _rejected(message: str) -> Invalid:
    """``message`` is "<field>: <reason>" (``UploadRejected``'s form)."""
    return Invalid.said(message, "invalid_upload")


def _format(filename: str, field: str) -> str:
    """The format its name's extension gives, judged before anything is stored (``Invalid`` on ``field`` if none)."""
    try:
        return format_of(filename)
    except UploadRejected as exc:
        raise _rejected(f"{field}: {str(exc).split(': ', 1)[1]}") from None


def _new_dataset(tenant: str, filename: str, fmt: str, size: int, label_column: str | None, **state) -> Dataset:
    ds_id = uuid.uuid4()
    return Dataset(
        id=ds_id,
        tenant=tenant,
        filename=filename,
        format=fmt,
        label_column=label_column,
        upload_size=size,
        location=dataset_prefix(ds_id),
        created_at=utcnow(),
        **state,
    )


def dataset_of(session: Session, who: Principal, dataset_id: uuid.UUID) -> Dataset:
    ds = datasets.get_dataset(session, dataset_id)
    if ds is None or not who.owns(ds.tenant):
        raise NotFound(f"dataset {dataset_id} not found")
    return ds


def upload_whole(
    session: Session,
    sessions: sessionmaker,
    settings: Settings,
    tenant: str,
    file: BinaryIO,
    filename: str | None,
    label_column: str | None,
) -> tuple[Dataset, bool]:
    """A file of at most ``max_upload_bytes``, validated before the answer: (its dataset, True) once ready, or
    ``Invalid`` and nothing kept; (the dataset, False) when this process was taken for dead meanwhile (a stalled
    database) and a worker validates it now."""
    cap = settings.max_upload_bytes
    size = file.seek(0, io.SEEK_END)
    if size > cap:
        raise TooLarge(f"file: uploads are capped at {cap} bytes")
    file.seek(0)
    name = clean_filename(filename)
    if label_column is not None and "\x00" in label_column:  # nothing with a NUL byte reaches the database
        raise _rejected("label_column: contains a NUL byte")
    fields = {"status": "validating", "validation_worker": API_WORKER, "validation_attempts": 1}
    ds = _new_dataset(tenant, name, _format(name, "file"), size, label_column, **fields)
    ds.validation_at = ds.created_at
    datasets.add_dataset(session, ds)
    blobs = blob_store(settings)
    blobs.put(dataset_raw_key(ds.id), file)
    try:
        with beating(sessions, settings.heartbeat_interval_s, ds.id, API_WORKER, 1):
            found = ingest(
                blobs,
                ds.id,
                filename=name,
                label_column=label_column,
                has_tokenizer=False,
                declared_sha256=None,
                max_stored_bytes=min(settings.max_dataset_bytes, settings.max_inline_dataset_bytes),
                work_dir=settings.data_dir / "ingest" / str(ds.id),
            )
    except UploadRejected as exc:
        datasets.abort_validation(session, ds.id)  # nothing is kept of a refused one-shot upload
        blobs.delete_prefix(dataset_prefix(ds.id))
        raise _rejected(str(exc)) from None
    validated = datasets.finish_validation(session, ds.id, API_WORKER, 1, **found)
    if validated:
        blobs.delete(dataset_raw_key(ds.id))
    session.refresh(ds)
    return ds, validated


def start_upload(
    session: Session,
    settings: Settings,
    tenant: str,
    filename: str,
    size: int,
    sha256: str | None,
    label_column: str | None,
) -> tuple[DatasetUpload, Dataset]:
    """Begin a resumable upload of a declared name, size and (optionally) SHA-256 and label column, within the
    tenant's caps on open uploads (``max_open_uploads_per_tenant``, ``max_open_upload_bytes_per_tenant``)."""
    name = clean_filename(filename)
    if size > settings.max_dataset_upload_bytes:
        raise TooLarge(f"size: uploads are capped at {settings.max_dataset_upload_bytes} bytes")
    ds = _new_dataset(tenant, name, _format(name, "filename"), size, label_column, status="uploading")
    up = DatasetUpload(
        id=uuid.uuid4(),
        dataset_id=ds.id,
        tenant=tenant,
        size=size,
        sha256=sha256,
        created_at=ds.created_at,
        expires_at=ds.created_at + timedelta(seconds=settings.upload_expiry_s),
    )
    max_open, max_bytes = settings.max_open_uploads_per_tenant, settings.max_open_upload_bytes_per_tenant
    over = datasets.add_upload_within(session, ds, up, max_open=max_open, max_bytes=max_bytes, now=ds.created_at)
    if over is not None:
        count, declared = over
        if count >= max_open:
            why = f"the tenant has {count} open uploads, the most GRADLAB_MAX_OPEN_UPLOADS_PER_TENANT allows"
        else:
            why = (
                f"the tenant's open uploads declare {declared} bytes; {size} more is over "
                f"GRADLAB_MAX_OPEN_UPLOAD_BYTES_PER_TENANT ({max_bytes})"
            )
        raise Conflict(f"size: {why}; complete or delete one (DELETE /v1/datasets/uploads/{{id}}) first")
    return up, ds


def upload_of(
    session: Session, who: Principal, upload_id: uuid.UUID, *, writing: bool = False
) -> tuple[DatasetUpload, Dataset]:
    """The upload and its dataset, read in a transaction that ends here: a chunk streaming for minutes holds no
    database connection. ``writing`` (a chunk, a tokenizer, completing): an expired upload is gone already, whether
    or not the sweeper has removed it yet."""
    found = datasets.upload_session(session, upload_id)
    session.commit()  # read only; the rows stay loaded (expire_on_commit is off)
    if found is None or not who.owns(found[0].tenant):
        raise NotFound(f"upload {upload_id} not found")
    up, ds = found
    if writing and ds.status == "uploading" and up.expires_at < utcnow():
        raise NotFound(f"upload {upload_id} expired at {up.expires_at.isoformat()} (no chunk for a while)")
    return found


def received(settings: Settings, up: DatasetUpload) -> int:
    """Bytes of the upload the store holds: where to resume."""
    return blob_store(settings).partial_size(upload_partial_key(up.id))


def _still_uploading(up: DatasetUpload, ds: Dataset) -> None:
    if ds.status != "uploading":
        raise Conflict(f"upload {up.id} is complete (dataset {ds.status})")


def _gone(upload_id: uuid.UUID) -> NotFound:
    return NotFound(f"upload {upload_id} not found (given up or expired while this request ran)")


def append(
    session: Session,
    settings: Settings,
    up: DatasetUpload,
    ds: Dataset,
    offset: int,
    blocks: Iterable[bytes],
    length: int | None = None,
) -> int:
    """Append ``blocks`` (``length`` bytes, when the request declares it) at ``offset`` (which must be the bytes
    received so far); returns the bytes received. A chunk that would run past the declared size is refused whole
    (413 with the ``Upload-Offset`` to resume at). If the upload was given up or expired while the chunk streamed,
    its bytes go too: no partial object outlives its row."""
    _still_uploading(up, ds)
    up_id, key = up.id, upload_partial_key(up.id)
    blobs = blob_store(settings)
    if length is not None and offset + length > up.size:
        raise TooLarge(
            f"body: {length} bytes at offset {offset} run past the declared size of {up.size} bytes",
            headers={"Upload-Offset": str(blobs.partial_size(key))},
        )
    try:
        total = blobs.append_partial(key, offset, blocks, up.size)
    except OffsetMismatch as exc:
        raise Conflict(
            f"upload-offset: {exc}; resume at {exc.received}", headers={"Upload-Offset": str(exc.received)}
        ) from None
    except BlobTooLarge as exc:
        raise TooLarge(
            f"body: {exc}; nothing of this chunk was kept", headers={"Upload-Offset": str(blobs.partial_size(key))}
        ) from None
    except ChunkTooSmall as exc:
        raise Invalid(f"body: {exc}") from None
    if not datasets.touch_upload(session, up.id, utcnow() + timedelta(seconds=settings.upload_expiry_s)):
        if datasets.get_dataset(session, ds.id) is None:
            blobs.delete_partial(key)  # the give-up removed its bytes before this chunk landed
        session.commit()
        raise _gone(up_id)
    return total


def put_tokenizer(
    session: Session, settings: Settings, up: DatasetUpload, ds: Dataset, blocks: Iterator[bytes]
) -> None:
    """The ``tokenizer.json`` of a JSON Lines text upload (read by the ``tokenizers`` library, no code run). It
    streams to a key of its own, then is put in place under the dataset's row lock, only while the dataset is still
    uploading (``repository.set_tokenizer``): a 204 means the validation reads it."""
    _still_uploading(up, ds)
    if ds.format != "jsonl":
        raise _rejected("tokenizer: only JSON Lines text (.jsonl) takes a tokenizer")
    blobs, up_id, ds_id = blob_store(settings), up.id, ds.id
    staged = tokenizer_staging_key(up_id, uuid.uuid4().hex)
    try:
        try:
            blobs.put(staged, blocks, settings.max_tokenizer_bytes)
        except BlobTooLarge:
            raise TooLarge(f"tokenizer: capped at {settings.max_tokenizer_bytes} bytes") from None
        except FileNotFoundError:  # its folder went under it: the upload was given up, deleted or swept meanwhile
            raise _gone(up_id) from None

        def place() -> None:
            with blobs.open(staged) as fh:
                blobs.put(dataset_tokenizer_key(ds_id), fh)

        status = datasets.set_tokenizer(session, ds_id, place)
    finally:
        blobs.delete(staged)
    if status == "gone":
        raise _gone(up_id)
    if status is not None:
        raise Conflict(f"upload {up_id} is complete (dataset {status}); the tokenizer was not kept")


def complete(
    session: Session, settings: Settings, publisher: ValidationPublisher, up: DatasetUpload, ds: Dataset
) -> bool:
    """All bytes are in: a worker validates the upload. False when it was completed before (``ds`` as it now is)."""
    if ds.status != "uploading":
        return False
    got = received(settings, up)
    if got != up.size:
        raise Conflict(
            f"upload-offset: {got} of the declared {up.size} bytes received; send the rest first",
            headers={"Upload-Offset": str(got)},
        )
    up_id = up.id
    if datasets.complete_upload(session, ds.id, utcnow()):
        publisher.publish_validation(ds.id)  # if that fails, the sweeper publishes it again
    try:
        session.refresh(ds)
    except InvalidRequestError:  # given up or expired meanwhile
        raise _gone(up_id) from None
    return True


def abort(session: Session, settings: Settings, up: DatasetUpload, ds: Dataset) -> None:
    """Give up an upload: its bytes and its dataset row go (only while it is still uploading)."""
    if not datasets.abort_upload(session, up.id, ds.id):
        raise Conflict(f"upload {up.id} is complete (dataset {ds.status})")
    drop_upload_bytes(blob_store(settings), up.id, ds.id)


def drop_upload_bytes(blobs: BlobStore, upload_id: uuid.UUID, dataset_id: uuid.UUID) -> None:
    """Every byte of an upload whose row is gone: its partial object, tokenizers a request left half-placed (an API
    process killed mid-request) and the dataset's files."""
    blobs.delete_partial(upload_partial_key(upload_id))
    blobs.delete_prefix(tokenizer_staging_prefix(upload_id))
    blobs.delete_prefix(dataset_prefix(dataset_id))


def delete_dataset(session: Session, settings: Settings, ds: Dataset) -> None:
    """The dataset's row (with its upload session), then its bytes: canonical files, and a partial upload's
    (a row never names missing bytes). ``Conflict`` while a worker validates it. The caller checked that no queued
    or running job uses it (``core.jobs.holds``)."""
    ds_id = ds.id
    deleted, uploads = datasets.delete_dataset(session, ds_id)
    if not deleted:
        if datasets.get_dataset(session, ds_id) is None:
            raise NotFound(f"dataset {ds_id} not found")
        raise Conflict(f"dataset {ds_id} is being validated; delete it once it is ready or rejected")
    blobs = blob_store(settings)
    for upload_id in uploads:
        drop_upload_bytes(blobs, upload_id, ds_id)
    blobs.delete_prefix(dataset_prefix(ds_id))


def drop_upload_leftovers(blobs: BlobStore, dataset_id: uuid.UUID, upload_id: uuid.UUID | None = None) -> None:
    """Once a validation has settled (ready or rejected), the upload as sent and its tokenizer are of no more use:
    jobs read the canonical files only."""
    blobs.delete(dataset_raw_key(dataset_id))
    blobs.delete(dataset_tokenizer_key(dataset_id))
    if upload_id is not None:
        blobs.delete_prefix(tokenizer_staging_prefix(upload_id))


@contextmanager
def beating(sessions: sessionmaker, interval_s: float, dataset_id: uuid.UUID, worker: str, attempt: int):
    """A thread that beats for the validator's claim while the block runs (a worker's validation, and the API's
    one-shot uploads)."""
    stopping = threading.Event()

    def beat() -> None:
        while not stopping.wait(interval_s):
            try:
                with sessions() as s:
                    datasets.beat_validation(s, dataset_id, worker, attempt, utcnow())
            except Exception as exc:  # the database is briefly away: the next beat tries again
                log.warning("validation beat for dataset %s failed: %s", dataset_id, exc)

    thread = threading.Thread(target=beat, name=f"validation-beat-{dataset_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stopping.set()
        thread.join()


# --- reading: the list, and where a validation waits --------------------------------------------------------------


def list_datasets(
    session: Session, who: Principal, *, status: str | None, fmt: str | None, limit: int, cursor: str | None
) -> tuple[list[Dataset], str | None]:
    """The datasets the caller may see (an admin: every tenant's), newest first, a page at a time."""
    try:
        return datasets.list_datasets(
            session, tenant=who.visible_tenant, status=status, fmt=fmt, limit=limit, cursor=cursor
        )
    except (ValueError, UnicodeDecodeError):
        raise Malformed("cursor: not a cursor returned by this API") from None


def dataset_with_place(session: Session, who: Principal, dataset_id: uuid.UUID) -> tuple[Dataset, int | None]:
    """A dataset the caller may see and, while its validation waits for a worker, its place in line (1: next)."""
    ds = dataset_of(session, who, dataset_id)
    return ds, datasets.validation_place(session, ds)
