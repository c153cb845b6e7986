"""Uploaded models: a Hugging Face config.json and optional model.safetensors, checked and inspected before
they are stored. Sizes are checked before bytes are read, the safetensors header before its data, and the model
is built on the ``meta`` device in a child process (torch never loads into the API)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, File, Query, UploadFile
from sqlalchemy.orm import Session

from api.auth import principal
from api.deps import app_settings, db, parse_id
from api.schemas import ModelOut
from core.keys.repository import Principal
from core.networks import service
from core.networks.service import UploadedFile
from core.settings import Settings

router = APIRouter(prefix="/v1/models", tags=["models"])


def _file(upload: UploadFile) -> UploadedFile:
    if upload.size is not None:
        size = upload.size
    else:
        upload.file.seek(0, 2)
        size = upload.file.tell()
        upload.file.seek(0)
    return UploadedFile(upload.filename, size, upload.file)


@router.post(
    "",
    status_code=201,
    response_model=ModelOut,
    response_model_exclude_none=True,
    responses={413: {"description": "upload too large"}, 422: {"description": "not a model we build"}},
)
def upload(
    config: UploadFile = File(..., description="config.json of a Hugging Face model"),
    weights: UploadFile | None = File(None, description="model.safetensors (safetensors only, no pickle)"),
    session: Session = Depends(db),
    who: Principal = Depends(principal),
    settings: Settings = Depends(app_settings),
):
    row = service.upload_model(session, settings, who.tenant, _file(config), _file(weights) if weights else None)
    return ModelOut.of(row, detail=True)


@router.get("/{model_id}", response_model=ModelOut, response_model_exclude_none=True)
def get_model(model_id: str, session: Session = Depends(db), who: Principal = Depends(principal)):
    return ModelOut.of(service.model_of(session, who, parse_id(model_id, "model")), detail=True)


@router.get("", response_model=list[ModelOut], response_model_exclude_none=True)
def list_models(
    session: Session = Depends(db),
    who: Principal = Depends(principal),
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
):
    return [ModelOut.of(r) for r in service.models_of(session, who, limit)]
