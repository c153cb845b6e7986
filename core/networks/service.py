"""Uploaded models' rules: a Hugging Face config.json and optional model.safetensors, checked and inspected before
they are stored. Sizes are checked before bytes are read, the safetensors header before its data, and the model is
built on the ``meta`` device in a child process (torch never loads into the API)."""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import BinaryIO

from pydantic import ValidationError
from sqlalchemy.orm import Session

from core.blobs import blob_store
from core.blobs.layout import model_weights_key
from core.db.tables import StoredModel, utcnow
from core.errors import Invalid, NotFound, TooLarge, Unavailable
from core.keys.repository import Principal
from core.networks import repository as networks
from core.networks.inspector import InspectionFailed, ModelRejected, inspect_model
from core.networks.safetensors_header import PICKLE_SUFFIXES, WeightsRejected, read_header
from core.networks.spec import MAX_CONFIG_BYTES, HFConfigModel
from core.settings import Settings


@dataclass(frozen=True)
class UploadedFile:
    """A file of a multipart request: its name as sent, its size, and its (seekable) bytes."""

    filename: str | None
    size: int
    file: BinaryIO


def _rejected(message: str) -> Invalid:
    return Invalid.said(message, "invalid_model")


def _too_large(message: str) -> TooLarge:
    return TooLarge(message, errors=_rejected(message).errors)


def _name(upload: UploadedFile, fallback: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", (upload.filename or fallback).rsplit("/", 1)[-1])[:255]


def _config(upload: UploadedFile) -> dict:
    if upload.size > MAX_CONFIG_BYTES:
        raise _too_large(f"config: {upload.size} bytes exceed the limit of {MAX_CONFIG_BYTES}")
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


def _weights_header(settings: Settings, weights: UploadedFile) -> dict:
    name = _name(weights, "model.safetensors").lower()
    if name.endswith(PICKLE_SUFFIXES):
        raise _rejected(f"weights: {name} is a pickled checkpoint; only .safetensors is loaded (no pickle)")
    if not name.endswith(".safetensors"):
        raise _rejected(f"weights: {name} is not a .safetensors file")
    if weights.size > settings.max_model_upload_bytes:
        raise _too_large(f"weights: {weights.size} bytes exceed the limit of {settings.max_model_upload_bytes}")
    try:
        header, _ = read_header(weights.file, weights.size)
    except WeightsRejected as exc:
        raise _rejected(str(exc)) from None
    return header


def upload_model(
    session: Session, settings: Settings, tenant: str, config: UploadedFile, weights: UploadedFile | None
) -> StoredModel:
    """Check, inspect and store a model of ``tenant``: the weights' bytes first, then the row that names them."""
    cfg = _config(config)
    header = _weights_header(settings, weights) if weights is not None else None
    spec = {"source": "hf_config", "config": cfg}
    try:
        summary = inspect_model(spec, weights_header=header, timeout_s=settings.inspect_timeout_s)
    except ModelRejected as exc:
        raise _rejected(str(exc)) from None
    except InspectionFailed as exc:
        raise Unavailable(f"model: could not be inspected now ({exc}); retry", headers={"Retry-After": "5"}) from None
    model_id, key, info = uuid.uuid4(), None, None
    if weights is not None:  # streamed from the spooled upload into the store, before the row names it
        weights.file.seek(0)
        key = model_weights_key(model_id)
        info = blob_store(settings).put(key, weights.file)
    row = StoredModel(
        id=model_id,
        tenant=tenant,
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
    return networks.add_model(session, row)


def model_of(session: Session, who: Principal, model_id: uuid.UUID):
    """An uploaded model's row without its weights, if the caller may see it."""
    row = networks.model_meta(session, model_id)
    if row is None or not who.owns(row.tenant):
        raise NotFound(f"model {model_id} not found")
    return row


def models_of(session: Session, who: Principal, limit: int) -> list:
    """The newest uploaded models the caller may see, without weights."""
    return networks.list_models(session, tenant=who.visible_tenant, limit=limit)
