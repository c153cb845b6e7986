"""Uploaded datasets: a resumable upload streamed into the blob store, validated by a worker; or, for a small file,
one multipart request validated in place.

The API key was checked before any body was read (``api.auth.KeyFirst``). The dataset's row is made before any of
its bytes are stored (status ``uploading``), so a blob never exists without a row that names it. A chunk streams
from the socket to the store in blocks of a MiB, whatever its size; the bytes received so far are the store's
partial object, so a client resumes from what the store holds (``HEAD``), even after the API process died.
"""

from __future__ import annotations

import io
import os
import re
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from typing import Annotated

import anyio.from_thread
from fastapi import APIRouter, Depends, File, Form, Header, Request, Response, UploadFile
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from api.auth import owns, principal
from api.deps import db, parse_id
from api.problems import Problem
from api.schemas import DatasetOut, UploadOut, UploadStart
from core.blobs import blob_store
from core.blobs.layout import dataset_prefix, dataset_raw_key, dataset_tokenizer_key, upload_partial_key
from core.blobs.store import CHUNK, BlobTooLarge, ChunkTooSmall, OffsetMismatch
from core.data.formats import UploadRejected, format_of
from core.data.ingest import beating, ingest
from core.db.tables import Dataset, DatasetUpload, utcnow
from core.jobs import repository as store
from core.keys.repository import Principal

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])

API_WORKER = f"api:{socket.gethostname()}:{os.getpid()}"  # the validator of one-shot uploads, for the sweeper


def clean_filename(raw: str | None) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", (raw or "upload").rsplit("/", 1)[-1])[:255]


def _rejected(message: str) -> Problem:
    """A 422 naming the field: ``message`` is "<field>: <reason>" (``UploadRejected``'s form)."""
    field = message.split(":", 1)[0]
    return Problem(422, message, errors=[{"field": field, "message": message, "type": "invalid_upload"}])


def _format(filename: str, field: str) -> str:
    """The format its name's extension gives, judged before anything is stored (422 on ``field`` if none)."""
    try:
        return format_of(filename)
    except UploadRejected as exc:
        raise _rejected(f"{field}: {str(exc).split(': ', 1)[1]}") from None


def _new_dataset(who: Principal, filename: str, fmt: str, size: int, label_column: str | None, **state) -> Dataset:
    ds_id = uuid.uuid4()
    return Dataset(
        id=ds_id,
        tenant=who.tenant,
        filename=filename,
        format=fmt,
        label_column=label_column,
        upload_size=size,
        location=dataset_prefix(ds_id),
        created_at=utcnow(),
        **state,
    )


# --- one request, small files -------------------------------------------------------------------------------------


@router.post(
    "",
    status_code=201,
    response_model=DatasetOut,
    responses={413: {"description": "upload too large"}, 422: {"description": "not a dataset"}},
)
def upload(
    request: Request,
    response: Response,
    file: UploadFile = File(...),
    label_column: str | None = Form(None, max_length=128),
    session: Session = Depends(db),
    who: Principal = Depends(principal),
):
    """A file of at most ``GRADLAB_MAX_UPLOAD_BYTES``, validated before the answer (201 ready, or 422 and nothing
    kept). The same pipeline as a resumable upload, with this API process as its validator: if it dies mid-way,
    the sweeper hands the dataset to a worker."""
    settings = request.app.state.settings
    cap = settings.max_upload_bytes
    size = file.file.seek(0, io.SEEK_END)
    if size > cap:
        raise Problem(413, f"file: uploads are capped at {cap} bytes")
    file.file.seek(0)
    filename = clean_filename(file.filename)
    if label_column is not None and "\x00" in label_column:  # nothing with a NUL byte reaches the database
        raise _rejected("label_column: contains a NUL byte")
    ds = _new_dataset(
        who,
        filename,
        _format(filename, "file"),
        size,
        label_column,
        status="validating",
        validation_worker=API_WORKER,
        validation_attempts=1,
    )
    ds.validation_at = ds.created_at
    store.add_dataset(session, ds)
    blobs = blob_store(settings)
    blobs.put(dataset_raw_key(ds.id), file.file)
    try:
        with beating(request.app.state.sessions, settings.heartbeat_interval_s, ds.id, API_WORKER, 1):
            found = ingest(
                blobs,
                ds.id,
                filename=filename,
                label_column=label_column,
                has_tokenizer=False,
                declared_sha256=None,
                max_stored_bytes=min(settings.max_dataset_bytes, settings.max_inline_dataset_bytes),
                work_dir=settings.data_dir / "ingest" / str(ds.id),
            )
    except UploadRejected as exc:
        store.abort_validation(session, ds.id)  # nothing is kept of a refused one-shot upload
        blobs.delete_prefix(dataset_prefix(ds.id))
        raise _rejected(str(exc)) from None
    if store.finish_validation(session, ds.id, API_WORKER, 1, **found):
        blobs.delete(dataset_raw_key(ds.id))
    else:  # this process was taken for dead (a stalled database): a worker validates it now
        response.status_code = 202
    session.refresh(ds)
    return DatasetOut.of(ds)


# --- resumable uploads --------------------------------------------------------------------------------------------


def _session_of(session: Session, who: Principal, upload_id: str) -> tuple[DatasetUpload, Dataset]:
    """The upload and its dataset, read in a transaction that ends here: a chunk streaming for minutes holds no
    database connection."""
    found = store.upload_session(session, parse_id(upload_id, "upload"))
    session.commit()  # read only; the rows stay loaded (expire_on_commit is off)
    if found is None or not owns(who, found[0].tenant):
        raise Problem(404, f"upload {upload_id} not found")
    return found


def _upload_out(request: Request, up: DatasetUpload, ds: Dataset, offset: int) -> UploadOut:
    settings = request.app.state.settings
    return UploadOut(
        id=up.id,
        dataset_id=ds.id,
        status=ds.status,
        offset=offset,
        size=up.size,
        expires_at=up.expires_at,
        max_chunk_bytes=settings.max_upload_chunk_bytes,
        min_chunk_bytes=blob_store(settings).min_chunk_bytes,
    )


@router.post("/uploads", status_code=201, response_model=UploadOut, responses={413: {"description": "too large"}})
def start_upload(
    body: UploadStart,
    request: Request,
    response: Response,
    session: Session = Depends(db),
    who: Principal = Depends(principal),
):
    """Begin a resumable upload: declare the file's name, size and (optionally) SHA-256 and label column."""
    settings = request.app.state.settings
    filename = clean_filename(body.filename)
    if body.size > settings.max_dataset_upload_bytes:
        raise Problem(413, f"size: uploads are capped at {settings.max_dataset_upload_bytes} bytes")
    ds = _new_dataset(who, filename, _format(filename, "filename"), body.size, body.label_column, status="uploading")
    up = DatasetUpload(
        id=uuid.uuid4(),
        dataset_id=ds.id,
        tenant=who.tenant,
        size=body.size,
        sha256=body.sha256,
        created_at=ds.created_at,
        expires_at=ds.created_at + timedelta(seconds=settings.upload_expiry_s),
    )
    store.add_dataset(session, ds, up)
    response.headers["Location"] = f"/v1/datasets/uploads/{up.id}"
    return _upload_out(request, up, ds, 0)


@router.get("/uploads/{upload_id}", response_model=UploadOut)
def get_upload(upload_id: str, request: Request, session: Session = Depends(db), who: Principal = Depends(principal)):
    up, ds = _session_of(session, who, upload_id)
    return _upload_out(request, up, ds, blob_store(request.app.state.settings).partial_size(upload_partial_key(up.id)))


@router.head("/uploads/{upload_id}", status_code=200)
def upload_offset(
    upload_id: str, request: Request, session: Session = Depends(db), who: Principal = Depends(principal)
) -> Response:
    """Where to resume: ``Upload-Offset`` (bytes received) of ``Upload-Length``."""
    up, _ = _session_of(session, who, upload_id)
    offset = blob_store(request.app.state.settings).partial_size(upload_partial_key(up.id))
    return Response(headers={"Upload-Offset": str(offset), "Upload-Length": str(up.size), "Cache-Control": "no-store"})


async def _blocks(request: Request) -> AsyncIterator[bytes]:
    """The request body in blocks of about a MiB (one thread hop per block, not per network read)."""
    buf = bytearray()
    async for piece in request.stream():
        buf += piece
        if len(buf) >= CHUNK:
            yield bytes(buf)
            buf.clear()
    if buf:
        yield bytes(buf)


def _pull(blocks: AsyncIterator[bytes]) -> Iterator[bytes]:
    """The async body as a plain iterator, for a store writing in a worker thread."""

    async def following() -> bytes:
        return await blocks.__anext__()

    while True:
        try:
            yield anyio.from_thread.run(following)
        except StopAsyncIteration:
            return


@router.patch(
    "/uploads/{upload_id}",
    response_model=UploadOut,
    responses={409: {"description": "wrong Upload-Offset"}, 413: {"description": "past the declared size"}},
)
async def append_chunk(
    upload_id: str,
    request: Request,
    upload_offset: Annotated[int, Header(ge=0)],
    session: Session = Depends(db),
    who: Principal = Depends(principal),
):
    """Append the body at ``Upload-Offset`` (which must be the bytes received so far)."""
    settings = request.app.state.settings
    up, ds = await run_in_threadpool(_session_of, session, who, upload_id)
    if ds.status != "uploading":
        raise Problem(409, f"upload {upload_id} is complete (dataset {ds.status})")
    blobs, key = blob_store(settings), upload_partial_key(up.id)
    try:
        offset = await run_in_threadpool(blobs.append_partial, key, upload_offset, _pull(_blocks(request)), up.size)
    except OffsetMismatch as exc:
        raise Problem(
            409, f"upload-offset: {exc}; resume at {exc.received}", headers={"Upload-Offset": str(exc.received)}
        ) from None
    except BlobTooLarge as exc:
        raise Problem(413, f"body: {exc}") from None
    except ChunkTooSmall as exc:
        raise Problem(422, f"body: {exc}") from None
    except ClientDisconnect:
        return Response(status_code=400)  # nobody reads it; what arrived is kept and HEAD reports it
    await run_in_threadpool(store.touch_upload, session, up.id, utcnow() + timedelta(seconds=settings.upload_expiry_s))
    return _upload_out(request, up, ds, offset)


@router.put("/uploads/{upload_id}/tokenizer", status_code=204, responses={413: {"description": "too large"}})
async def put_tokenizer(
    upload_id: str, request: Request, session: Session = Depends(db), who: Principal = Depends(principal)
) -> Response:
    """The ``tokenizer.json`` for a JSON Lines text upload (read by the ``tokenizers`` library, no code run)."""
    settings = request.app.state.settings
    up, ds = await run_in_threadpool(_session_of, session, who, upload_id)
    if ds.status != "uploading":
        raise Problem(409, f"upload {upload_id} is complete (dataset {ds.status})")
    if ds.format != "jsonl":
        raise _rejected("tokenizer: only JSON Lines text (.jsonl) takes a tokenizer")
    blobs = blob_store(settings)
    try:
        await run_in_threadpool(
            blobs.put, dataset_tokenizer_key(ds.id), _pull(_blocks(request)), settings.max_tokenizer_bytes
        )
    except BlobTooLarge:
        raise Problem(413, f"tokenizer: capped at {settings.max_tokenizer_bytes} bytes") from None
    await run_in_threadpool(store.set_tokenizer, session, ds.id)
    return Response(status_code=204)


@router.post(
    "/uploads/{upload_id}/complete",
    status_code=202,
    response_model=DatasetOut,
    responses={409: {"description": "not all bytes received"}},
)
def complete_upload(
    upload_id: str,
    request: Request,
    response: Response,
    session: Session = Depends(db),
    who: Principal = Depends(principal),
):
    """All bytes are in: a worker validates the upload (``status: validating``, then ``ready`` or ``rejected``).
    Completing again answers the dataset as it now is."""
    up, ds = _session_of(session, who, upload_id)
    response.headers["Location"] = f"/v1/datasets/{ds.id}"
    if ds.status != "uploading":
        response.status_code = 200
        return DatasetOut.of(ds)
    received = blob_store(request.app.state.settings).partial_size(upload_partial_key(up.id))
    if received != up.size:
        raise Problem(
            409,
            f"upload-offset: {received} of the declared {up.size} bytes received; send the rest first",
            headers={"Upload-Offset": str(received)},
        )
    if store.complete_upload(session, ds.id, utcnow()):
        request.app.state.publisher.publish_validation(ds.id)  # if that fails, the sweeper publishes it again
    session.refresh(ds)
    return DatasetOut.of(ds)


@router.delete("/uploads/{upload_id}", status_code=204)
def abort_upload(
    upload_id: str, request: Request, session: Session = Depends(db), who: Principal = Depends(principal)
) -> Response:
    """Give up an upload: its bytes and its dataset row go (only while it is still uploading)."""
    up, ds = _session_of(session, who, upload_id)
    if not store.abort_upload(session, up.id, ds.id):
        raise Problem(409, f"upload {upload_id} is complete (dataset {ds.status})")
    blobs = blob_store(request.app.state.settings)
    blobs.delete_partial(upload_partial_key(up.id))
    blobs.delete_prefix(dataset_prefix(ds.id))
    return Response(status_code=204)


@router.get("/{dataset_id}", response_model=DatasetOut)
def get_dataset(dataset_id: str, session: Session = Depends(db), who: Principal = Depends(principal)):
    """Status (``uploading``, ``validating``, ``ready`` or ``rejected`` with the reason), kind, format, shape
    and the preview: columns and dtypes, label balance, a few rows and basic statistics."""
    ds = store.get_dataset(session, parse_id(dataset_id, "dataset"))
    if ds is None or not owns(who, ds.tenant):
        raise Problem(404, f"dataset {dataset_id} not found")
    return DatasetOut.of(ds)
