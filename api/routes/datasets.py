"""Uploaded datasets: .npz or .csv, size-capped, parsed without pickle, stored as a canonical .npz in the blob store.

The API key was checked before the body was read (``api.auth.KeyFirst``); the file arrives spooled by the multipart
parser (to disk past 1 MiB) and is parsed from there in bounded memory."""

from __future__ import annotations

import io
import re
import uuid

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from sqlalchemy.orm import Session

from api.auth import owns, principal
from api.deps import db, parse_id
from api.problems import Problem
from api.schemas import DatasetOut
from core.blobs import blob_store
from core.blobs.keys import dataset_key
from core.data.uploads import UploadRejected, parse_upload
from core.jobs import store
from core.jobs.keys import Principal
from core.jobs.models import Dataset, utcnow

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])


def _out(ds: Dataset) -> DatasetOut:
    return DatasetOut(
        id=ds.id,
        filename=ds.filename,
        format=ds.format,
        rows=ds.rows,
        columns=ds.columns,
        has_labels=ds.has_labels,
        size=ds.size,
        sha256=ds.sha256,
        created_at=ds.created_at,
    )


@router.post(
    "",
    status_code=201,
    response_model=DatasetOut,
    responses={413: {"description": "upload too large"}, 422: {"description": "not a dataset"}},
)
def upload(
    request: Request,
    file: UploadFile = File(...),
    label_column: str | None = Form(None, max_length=128),
    session: Session = Depends(db),
    who: Principal = Depends(principal),
):
    settings = request.app.state.settings
    cap = settings.max_upload_bytes
    if file.file.seek(0, io.SEEK_END) > cap:
        raise Problem(413, f"file: uploads are capped at {cap} bytes")
    filename = re.sub(r"[^A-Za-z0-9._-]", "_", (file.filename or "upload").rsplit("/", 1)[-1])[:255]
    try:
        parsed = parse_upload(filename, file.file, label_column, settings.max_dataset_bytes)
    except UploadRejected as exc:
        field = str(exc).split(":", 1)[0]
        raise Problem(422, str(exc), errors=[{"field": field, "message": str(exc), "type": "invalid_upload"}]) from None
    ds_id = uuid.uuid4()
    key = dataset_key(ds_id)
    info = blob_store(settings).put(key, [parsed.npz])  # bytes first: a row never names a missing blob
    ds = Dataset(
        id=ds_id,
        tenant=who.tenant,
        filename=filename,
        format=filename.rsplit(".", 1)[-1].lower(),
        rows=parsed.rows,
        columns=parsed.columns,
        has_labels=parsed.has_labels,
        size=info.size,
        sha256=info.sha256,
        location=key,
        created_at=utcnow(),
    )
    return _out(store.add_dataset(session, ds))


@router.get("/{dataset_id}", response_model=DatasetOut)
def get_dataset(dataset_id: str, session: Session = Depends(db), who: Principal = Depends(principal)):
    ds = session.get(Dataset, parse_id(dataset_id, "dataset"))
    if ds is None or not owns(who, ds.tenant):
        raise Problem(404, f"dataset {dataset_id} not found")
    return _out(ds)
