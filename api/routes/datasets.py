"""Uploaded datasets: a resumable upload streamed into the blob store, validated by a worker; or, for a small file,
one multipart request validated in place.

The API key was checked before any body was read (``api.auth.KeyFirst``). The dataset's row is made before any of
its bytes are stored (status ``uploading``), so a blob never exists without a row that names it. A chunk streams
from the socket to the store in blocks of a MiB, whatever its size; the bytes received so far are the store's
partial object, so a client resumes from what the store holds (``HEAD``), even after the API process died.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

from fastapi import APIRouter, Depends, File, Form, Header, Query, Request, Response, UploadFile
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from api import bodies
from api.auth import principal
from api.deps import app_settings, db, parse_id, publisher, session_factory
from api.schemas import DatasetOut, DatasetPage, UploadOut, UploadStart
from core.blobs import blob_store
from core.data.formats import FORMATS
from core.datasets import service
from core.db.tables import Dataset, DatasetUpload
from core.jobs import holds
from core.keys.repository import Principal
from core.settings import Settings
from workers.publish import Publisher

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])

DatasetStatus = Literal["uploading", "validating", "ready", "rejected"]
if TYPE_CHECKING:
    DatasetFormat = str
else:
    DatasetFormat = Literal[FORMATS]  # the formats an upload may have, as the query parameter's choices


# --- one request, small files -------------------------------------------------------------------------------------


@router.post(
    "",
    status_code=201,
    response_model=DatasetOut,
    responses={413: {"description": "upload too large"}, 422: {"description": "not a dataset"}},
)
def upload(
    response: Response,
    file: UploadFile = File(...),
    label_column: str | None = Form(None, max_length=128),
    session: Session = Depends(db),
    who: Principal = Depends(principal),
    settings: Settings = Depends(app_settings),
    sessions: sessionmaker = Depends(session_factory),
):
    """A file of at most ``GRADLAB_MAX_UPLOAD_BYTES``, validated before the answer (201 ready, or 422 and nothing
    kept). The same pipeline as a resumable upload, with this API process as its validator: if it dies mid-way,
    the sweeper hands the dataset to a worker (202)."""
    ds, validated = service.upload_whole(
        session, sessions, settings, who.tenant, file.file, file.filename, label_column
    )
    if not validated:
        response.status_code = 202
    return DatasetOut.of(ds)


# --- resumable uploads --------------------------------------------------------------------------------------------


def _upload_of(
    session: Session, who: Principal, upload_id: str, writing: bool = False
) -> tuple[DatasetUpload, Dataset]:
    return service.upload_of(session, who, parse_id(upload_id, "upload"), writing=writing)


def _upload_out(settings: Settings, up: DatasetUpload, ds: Dataset, offset: int) -> UploadOut:
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
    response: Response,
    session: Session = Depends(db),
    who: Principal = Depends(principal),
    settings: Settings = Depends(app_settings),
):
    """Begin a resumable upload: declare the file's name, size and (optionally) SHA-256 and label column."""
    up, ds = service.start_upload(
        session, settings, who.tenant, body.filename, body.size, body.sha256, body.label_column
    )
    response.headers["Location"] = f"/v1/datasets/uploads/{up.id}"
    return _upload_out(settings, up, ds, 0)


@router.get("/uploads/{upload_id}", response_model=UploadOut)
def get_upload(
    upload_id: str,
    session: Session = Depends(db),
    who: Principal = Depends(principal),
    settings: Settings = Depends(app_settings),
):
    up, ds = _upload_of(session, who, upload_id)
    return _upload_out(settings, up, ds, service.received(settings, up))


@router.head("/uploads/{upload_id}", status_code=200)
def upload_offset(
    upload_id: str,
    session: Session = Depends(db),
    who: Principal = Depends(principal),
    settings: Settings = Depends(app_settings),
) -> Response:
    """Where to resume: ``Upload-Offset`` (bytes received) of ``Upload-Length``."""
    up, _ = _upload_of(session, who, upload_id)
    offset = service.received(settings, up)
    return Response(headers={"Upload-Offset": str(offset), "Upload-Length": str(up.size), "Cache-Control": "no-store"})


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
    settings: Settings = Depends(app_settings),
):
    """Append the body at ``Upload-Offset`` (which must be the bytes received so far)."""
    up, ds = await run_in_threadpool(_upload_of, session, who, upload_id, True)
    declared = request.headers.get("content-length")
    length = int(declared) if declared is not None and declared.isdigit() else None
    try:
        offset = await run_in_threadpool(
            service.append, session, settings, up, ds, upload_offset, bodies.pull(bodies.blocks(request)), length
        )
    except ClientDisconnect:
        return Response(status_code=400)  # nobody reads it; what arrived is kept and HEAD reports it
    return _upload_out(settings, up, ds, offset)


@router.put("/uploads/{upload_id}/tokenizer", status_code=204, responses={413: {"description": "too large"}})
async def put_tokenizer(
    upload_id: str,
    request: Request,
    session: Session = Depends(db),
    who: Principal = Depends(principal),
    settings: Settings = Depends(app_settings),
) -> Response:
    """The ``tokenizer.json`` for a JSON Lines text upload (read by the ``tokenizers`` library, no code run)."""
    up, ds = await run_in_threadpool(_upload_of, session, who, upload_id, True)
    await run_in_threadpool(service.put_tokenizer, session, settings, up, ds, bodies.pull(bodies.blocks(request)))
    return Response(status_code=204)


@router.post(
    "/uploads/{upload_id}/complete",
    status_code=202,
    response_model=DatasetOut,
    responses={409: {"description": "not all bytes received"}},
)
def complete_upload(
    upload_id: str,
    response: Response,
    session: Session = Depends(db),
    who: Principal = Depends(principal),
    settings: Settings = Depends(app_settings),
    wakeups: Publisher = Depends(publisher),
):
    """All bytes are in: a worker validates the upload (``status: validating``, then ``ready`` or ``rejected``).
    Completing again answers the dataset as it now is."""
    up, ds = _upload_of(session, who, upload_id, writing=True)
    response.headers["Location"] = f"/v1/datasets/{ds.id}"
    if not service.complete(session, settings, wakeups, up, ds):
        response.status_code = 200
    return DatasetOut.of(ds)


@router.delete("/uploads/{upload_id}", status_code=204)
def abort_upload(
    upload_id: str,
    session: Session = Depends(db),
    who: Principal = Depends(principal),
    settings: Settings = Depends(app_settings),
) -> Response:
    """Give up an upload: its bytes and its dataset row go (only while it is still uploading)."""
    up, ds = _upload_of(session, who, upload_id)
    service.abort(session, settings, up, ds)
    return Response(status_code=204)


@router.get("", response_model=DatasetPage)
def list_datasets(
    session: Session = Depends(db),
    who: Principal = Depends(principal),
    status: DatasetStatus | None = None,
    format: DatasetFormat | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
):
    """The caller's datasets (an admin key: every tenant's), newest first, ``next_cursor`` to the next page; an
    interrupted upload shows as ``uploading``. Without the previews: ``GET /v1/datasets/{id}`` has them."""
    rows, nxt = service.list_datasets(session, who, status=status, fmt=format, limit=limit, cursor=cursor)
    return DatasetPage(items=[DatasetOut.of(ds, detail=False) for ds in rows], next_cursor=nxt)


@router.get("/{dataset_id}", response_model=DatasetOut)
def get_dataset(dataset_id: str, session: Session = Depends(db), who: Principal = Depends(principal)):
    """Status (``uploading``, ``validating``, ``ready`` or ``rejected`` with the reason), kind, format, shape
    and the preview: columns and dtypes, label balance, a few rows and basic statistics; while the validation
    waits for a worker, its ``queue_position``."""
    ds, place = service.dataset_with_place(session, who, parse_id(dataset_id, "dataset"))
    return DatasetOut.of(ds, queue_position=place)


@router.delete("/{dataset_id}", status_code=204, responses={409: {"description": "a queued or running job uses it"}})
def delete_dataset(
    dataset_id: str,
    session: Session = Depends(db),
    who: Principal = Depends(principal),
    settings: Settings = Depends(app_settings),
) -> Response:
    """Delete a dataset and its bytes (an interrupted upload's too); refused (409) while a queued or running job
    uses it, or while a worker validates it."""
    holds.delete_dataset(session, settings, who, parse_id(dataset_id, "dataset"))
    return Response(status_code=204)
