"""Uploaded models: a Hugging Face config.json and optional model.safetensors, checked and inspected before
they are stored. Sizes are checked before bytes are read, the safetensors header before its data, and the model
is built on the ``meta`` device in a child process (torch never loads into the API)."""

from __future__ import annotations

import json
import re
import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, File, Query, Request, UploadFile
from pydantic import ValidationError
from sqlalchemy.orm import Session

from api.auth import owns, principal, visible_tenant
from api.deps import db, parse_id
from api.problems import Problem
from api.schemas import ModelOut
from core.blobs import blob_store
from core.blobs.layout import model_weights_key
from core.db.tables import StoredModel, utcnow
from core.jobs import repository as store
from core.keys.repository import Principal
from core.networks.inspector import InspectionFailed, ModelRejected, inspect_model
from core.networks.safetensors_header import PICKLE_SUFFIXES, WeightsRejected, read_header
from core.networks.spec import MAX_CONFIG_BYTES, HFConfigModel

router = APIRouter(prefix="/v1/models", tags=["models"])


def _rejected(message: str, status: int = 422) -> Problem:
    field = message.split(":", 1)[0] if ":" in message else "body"
    return Problem(status, message, errors=[{"field": field, "message": message, "type": "invalid_model"}])


def _size(upload: UploadFile) -> int:
    if upload.size is not None:
        return upload.size
    upload.file.seek(0, 2)
    size = upload.file.tell()
    upload.file.seek(0)
    return size


def _name(upload: UploadFile, fallback: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", (upload.filename or fallback).rsplit("/", 1)[-1])[:255]


def _config(upload: UploadFile) -> dict:
    if _size(upload) > MAX_CONFIG_BYTES:
        raise _rejected(f"config: {_size(upload)} bytes exceed the limit of {MAX_CONFIG_BYTES}", 413)
    try:
        config = json.loads(upload.file.read(MAX_CONFIG_BYTES + 1))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _rejected(f"config: not JSON ({exc})") from None
    if not isinstance(config, dict):
        raise _rejected("config: a config.json holds one JSON object")
    try:
        HFConfigModel(source="hf_config", config=config)
    except ValidationError as exc:
        raise _rejected(exc.errors()[0]["msg"].removeprefix("Value error, ")) from None
    return config


@router.post(
    "",
    status_code=201,
    response_model=ModelOut,
    response_model_exclude_none=True,
    responses={413: {"description": "upload too large"}, 422: {"description": "not a model we build"}},
)
def upload(
    request: Request,
    config: UploadFile = File(..., description="config.json of a Hugging Face model"),
    weights: UploadFile | None = File(None, description="model.safetensors (safetensors only, no pickle)"),
    session: Session = Depends(db),
    who: Principal = Depends(principal),
):
    settings = request.app.state.settings
    cfg = _config(config)
    header = size = None
    if weights is not None:
        name = _name(weights, "model.safetensors").lower()
        if name.endswith(PICKLE_SUFFIXES):
            raise _rejected(f"weights: {name} is a pickled checkpoint; only .safetensors is loaded (no pickle)")
        if not name.endswith(".safetensors"):
            raise _rejected(f"weights: {name} is not a .safetensors file")
        size = _size(weights)
        if size > settings.max_model_upload_bytes:
            raise _rejected(f"weights: {size} bytes exceed the limit of {settings.max_model_upload_bytes}", 413)
        try:
            header, _ = read_header(weights.file, size)
        except WeightsRejected as exc:
            raise _rejected(str(exc)) from None
    spec = {"source": "hf_config", "config": cfg}
    try:
        summary = inspect_model(spec, weights_header=header, timeout_s=settings.inspect_timeout_s)
    except ModelRejected as exc:
        raise _rejected(str(exc)) from None
    except InspectionFailed as exc:
        raise Problem(503, f"model: could not be inspected now ({exc}); retry", headers={"Retry-After": "5"}) from None
    model_id, key, info = uuid.uuid4(), None, None
    if weights is not None:  # streamed from the spooled upload into the store, before the row names it
        weights.file.seek(0)
        key = model_weights_key(model_id)
        info = blob_store(settings).put(key, weights.file)
    row = StoredModel(
        id=model_id,
        tenant=who.tenant,
        filename=_name(config, "config.json"),
        format="hf_config",
        model_type=cfg["model_type"],
        task=summary["task"],
        config=cfg,
        n_params=summary["n_params"],
        summary=summary,
        weights_location=key,
        weights_size=info and info.size,
        weights_sha256=info and info.sha256,
        created_at=utcnow(),
    )
    store.add_model(session, row)
    return ModelOut.of(row, detail=True)


@router.get("/{model_id}", response_model=ModelOut, response_model_exclude_none=True)
def get_model(model_id: str, session: Session = Depends(db), who: Principal = Depends(principal)):
    row = store.model_meta(session, parse_id(model_id, "model"))
    if row is None or not owns(who, row.tenant):
        raise Problem(404, f"model {model_id} not found")
    return ModelOut.of(row, detail=True)


@router.get("", response_model=list[ModelOut], response_model_exclude_none=True)
def list_models(
    session: Session = Depends(db),
    who: Principal = Depends(principal),
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
):
    return [ModelOut.of(r) for r in store.list_models(session, tenant=visible_tenant(who), limit=limit)]
