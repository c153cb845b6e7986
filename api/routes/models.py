"""Stored models: a Hugging Face config.json with optional safetensors weights, or a .pt2 exported program; sent in
one request when small, or uploaded resumably (any size, sharded checkpoints) and checked when completed. Listed,
shown and deleted per tenant.

Nothing a user sends is executed or unpickled: JSON is parsed with bounds, safetensors headers are checked before
their data, configs are built on the ``meta`` device in a child process (torch never loads into the API), and
exported programs are read by the checked reader (``core.networks.exported``). The API key was checked before any
body was read (``api.auth.KeyFirst``).
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, File, Header, Query, Request, Response, UploadFile
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from api.auth import principal
from api.bodies import blocks, pull
from api.deps import app_settings, db, parse_id
from api.schemas import ModelOut, ModelPage, ModelUploadFile, ModelUploadOut, ModelUploadStart
from core.blobs import blob_store
from core.db.tables import ModelUpload
from core.errors import Invalid
from core.jobs import holds
from core.keys.repository import Principal
from core.networks import service, uploads
from core.networks.service import UploadedFile
from core.settings import Settings

router = APIRouter(prefix="/v1/models", tags=["models"])


# --- one request, small files -------------------------------------------------------------------------------------


def _file(upload: UploadFile | None) -> UploadedFile | None:
    if upload is None:
        return None
    if upload.size is not None:
        size = upload.size
    else:
        upload.file.seek(0, 2)
        size = upload.file.tell()
        upload.file.seek(0)
    return UploadedFile(upload.filename, size, upload.file)


async def _one_file_per_field(request: Request) -> None:
    """Each file field holds one file: a second ``weights`` part (a checkpoint's shards, say) would otherwise be
    dropped without a word."""
    form = await request.form()
    for field in ("config", "weights", "program"):
        sent = len(form.getlist(field))
        if sent > 1:
            raise Invalid.of(
                field,
                f"{sent} files sent under one field, which takes one; a sharded checkpoint is sent with "
                "POST /v1/models/uploads (config.json, its index and every shard)",
                "invalid_model",
            )


@router.post(
    "",
    status_code=201,
    response_model=ModelOut,
    response_model_exclude_none=True,
    responses={413: {"description": "upload too large"}, 422: {"description": "not a model we build"}},
    dependencies=[Depends(_one_file_per_field)],
)
def upload(
    config: UploadFile | None = File(None, description="config.json of a Hugging Face model"),
    weights: UploadFile | None = File(None, description="model.safetensors (safetensors only, no pickle)"),
    program: UploadFile | None = File(None, description="a .pt2 from torch.export.save, instead of a config"),
    session: Session = Depends(db),
    who: Principal = Depends(principal),
    settings: Settings = Depends(app_settings),
):
    """A model of at most ``GRADLAB_MAX_MODEL_UPLOAD_BYTES``, checked before the answer (201, or 422 and nothing
    kept): ``config`` with optional ``weights``, or ``program``. Larger and sharded ones: ``/v1/models/uploads``."""
    row = service.upload_model(session, settings, who.tenant, _file(config), _file(weights), _file(program))
    return ModelOut.of(row, detail=True)


# --- resumable uploads --------------------------------------------------------------------------------------------


def _upload_of(session: Session, who: Principal, upload_id: str) -> ModelUpload:
    return uploads.upload_of(session, who, parse_id(upload_id, "upload"))


def _upload_out(settings: Settings, up: ModelUpload, offsets: list[int] | None = None) -> ModelUploadOut:
    got = offsets if offsets is not None else [uploads.received(settings, up, i) for i in range(len(up.files))]
    return ModelUploadOut(
        id=up.id,
        model_id=up.model_id,
        status=up.status,  # type: ignore[arg-type]  # the column holds one of the Literal's values
        format=up.format,
        files=[ModelUploadFile(name=f["name"], size=f["size"], offset=n) for f, n in zip(up.files, got)],
        expires_at=up.expires_at,
        max_chunk_bytes=settings.max_upload_chunk_bytes,
        min_chunk_bytes=blob_store(settings).min_chunk_bytes,
    )


@router.post(
    "/uploads",
    status_code=201,
    response_model=ModelUploadOut,
    responses={413: {"description": "too large"}, 422: {"description": "not the files of a model"}},
)
def start_upload(
    body: ModelUploadStart,
    response: Response,
    session: Session = Depends(db),
    who: Principal = Depends(principal),
    settings: Settings = Depends(app_settings),
):
    """Begin a resumable upload: declare each file's name and size (no limit on one request's body: each chunk is
    at most ``max_chunk_bytes``, the model at most ``GRADLAB_MAX_MODEL_BYTES``)."""
    up = uploads.start_upload(session, settings, who.tenant, [(f.name, f.size) for f in body.files])
    response.headers["Location"] = f"/v1/models/uploads/{up.id}"
    return _upload_out(settings, up, [0] * len(up.files))


@router.get("/uploads/{upload_id}", response_model=ModelUploadOut)
def get_upload(
    upload_id: str,
    session: Session = Depends(db),
    who: Principal = Depends(principal),
    settings: Settings = Depends(app_settings),
):
    """Each file's bytes received (``offset``): where to resume."""
    return _upload_out(settings, _upload_of(session, who, upload_id))


@router.head("/uploads/{upload_id}/files/{name}", status_code=200)
def file_offset(
    upload_id: str,
    name: str,
    session: Session = Depends(db),
    who: Principal = Depends(principal),
    settings: Settings = Depends(app_settings),
) -> Response:
    """Where to resume one file: ``Upload-Offset`` (bytes received) of ``Upload-Length``."""
    up = _upload_of(session, who, upload_id)
    index = uploads.file_index(up, name)
    offset = uploads.received(settings, up, index)
    length = str(up.files[index]["size"])
    return Response(headers={"Upload-Offset": str(offset), "Upload-Length": length, "Cache-Control": "no-store"})


@router.patch(
    "/uploads/{upload_id}/files/{name}",
    response_model=ModelUploadFile,
    responses={
        409: {"description": "wrong Upload-Offset"},
        413: {"description": "past the declared size"},
        422: {"description": "a safetensors header (checked before its data) refused"},
    },
)
async def append_chunk(
    upload_id: str,
    name: str,
    request: Request,
    upload_offset: Annotated[int, Header(ge=0)],
    session: Session = Depends(db),
    who: Principal = Depends(principal),
    settings: Settings = Depends(app_settings),
):
    """Append the body to one file at ``Upload-Offset`` (which must be its bytes received so far). The chunk at
    offset 0 of a .safetensors file must hold its whole header, which is checked before any data is stored."""
    up = await run_in_threadpool(_upload_of, session, who, upload_id)
    index = uploads.file_index(up, name)
    try:
        offset = await run_in_threadpool(
            uploads.append, session, settings, up, index, upload_offset, pull(blocks(request))
        )
    except ClientDisconnect:
        return Response(status_code=400)  # nobody reads it; what arrived is kept and HEAD reports it
    return ModelUploadFile(name=name, size=up.files[index]["size"], offset=offset)


@router.post(
    "/uploads/{upload_id}/complete",
    status_code=201,
    response_model=ModelOut,
    response_model_exclude_none=True,
    responses={409: {"description": "not all bytes received"}, 422: {"description": "refused; nothing kept"}},
)
def complete_upload(
    upload_id: str,
    response: Response,
    session: Session = Depends(db),
    who: Principal = Depends(principal),
    settings: Settings = Depends(app_settings),
):
    """All bytes are in: the model is checked and stored (201, the model as ``GET /v1/models/{id}`` shows it), or
    refused (422 naming the file and the reason; the upload and its bytes are gone)."""
    row = uploads.complete(session, settings, _upload_of(session, who, upload_id))
    response.headers["Location"] = f"/v1/models/{row.id}"
    return ModelOut.of(row, detail=True)


@router.delete("/uploads/{upload_id}", status_code=204)
def abort_upload(
    upload_id: str,
    session: Session = Depends(db),
    who: Principal = Depends(principal),
    settings: Settings = Depends(app_settings),
) -> Response:
    """Give up an upload: its bytes go."""
    uploads.abort(session, settings, _upload_of(session, who, upload_id))
    return Response(status_code=204)


# --- stored models ------------------------------------------------------------------------------------------------


@router.get("", response_model=ModelPage)
def list_models(
    session: Session = Depends(db),
    who: Principal = Depends(principal),
    source: Literal["uploaded", "exported"] | None = None,
    format: Literal["config", "safetensors", "sharded", "exported"] | None = None,  # noqa: A002 (the query name)
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
):
    """The tenant's models, newest first, a page at a time (``next_cursor``)."""
    rows, nxt = service.models_of(session, who, source=source, fmt=format, limit=limit, cursor=cursor)
    return ModelPage(items=[ModelOut.of(r) for r in rows], next_cursor=nxt)


@router.get("/{model_id}", response_model=ModelOut, response_model_exclude_none=True)
def get_model(model_id: str, session: Session = Depends(db), who: Principal = Depends(principal)):
    """A model with its config and layers, or for an exported program its inputs, outputs, parameters and
    operators."""
    return ModelOut.of(service.model_of(session, who, parse_id(model_id, "model")), detail=True)


@router.delete("/{model_id}", status_code=204, responses={409: {"description": "a queued or running job uses it"}})
def delete_model(
    model_id: str,
    session: Session = Depends(db),
    who: Principal = Depends(principal),
    settings: Settings = Depends(app_settings),
) -> Response:
    """Delete a model and its bytes; refused (409) while a queued or running job uses it."""
    holds.delete_model(session, settings, who, parse_id(model_id, "model"))
    return Response(status_code=204)
