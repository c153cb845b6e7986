"""Stored models' rules: a model sent in one request (a Hugging Face config.json with an optional model.safetensors,
or a .pt2 exported program), checked before it is stored (``intake``); reading and listing a tenant's models;
deleting one with its bytes. Resumable uploads of large and sharded checkpoints: ``uploads``."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import BinaryIO

from sqlalchemy.orm import Session

from core.blobs import blob_store
from core.blobs.layout import model_file_key, model_prefix
from core.db.tables import StoredModel, utcnow
from core.errors import Invalid, Malformed, NotFound
from core.keys.repository import Principal
from core.networks import intake
from core.networks import repository as networks
from core.networks.safetensors_header import PICKLE_SUFFIXES, WeightsRejected, read_header
from core.networks.spec import MAX_CONFIG_BYTES
from core.settings import Settings

FORMATS = {"uploaded": ("config", "safetensors", "sharded"), "exported": ("exported",)}
"""The formats stored under each source a job names them by (``use_as``)."""


@dataclass(frozen=True)
class UploadedFile:
    """A file of a multipart request: its name as sent, its size, and its (seekable) bytes."""

    filename: str | None
    size: int
    file: BinaryIO


def _name(upload: UploadedFile, fallback: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", (upload.filename or fallback).rsplit("/", 1)[-1])[:255]


def _weights_header(settings: Settings, weights: UploadedFile) -> dict:
    name = _name(weights, "model.safetensors").lower()
    if name.endswith(PICKLE_SUFFIXES):
        raise intake.rejected(f"weights: {name} is a pickled checkpoint; only .safetensors is loaded (no pickle)")
    if not name.endswith(".safetensors"):
        raise intake.rejected(f"weights: {name} is not a .safetensors file")
    if weights.size > settings.max_model_upload_bytes:
        raise intake.too_large(
            f"weights: {weights.size} bytes exceed the limit of {settings.max_model_upload_bytes}; send larger "
            "checkpoints with POST /v1/models/uploads"
        )
    try:
        header, _ = read_header(weights.file, weights.size)
    except WeightsRejected as exc:
        raise intake.rejected(str(exc)) from None
    return header


def upload_model(
    session: Session,
    settings: Settings,
    tenant: str,
    config: UploadedFile | None,
    weights: UploadedFile | None,
    program: UploadedFile | None = None,
) -> StoredModel:
    """Check, inspect and store a model of ``tenant`` sent in one request: the bytes first, then the row that names
    them (undone together when the row cannot be written)."""
    if program is not None:
        if config is not None or weights is not None:
            raise intake.rejected("program: an exported program is sent alone (it holds its weights)")
        return _upload_program(session, settings, tenant, program)
    if config is None:
        raise Invalid.of("config", "required: a config.json (with weights, optionally), or a .pt2 as program")
    if config.size > MAX_CONFIG_BYTES:
        raise intake.too_large(f"config: {config.size} bytes exceed the limit of {MAX_CONFIG_BYTES}")
    cfg = intake.check_config(config.file.read(MAX_CONFIG_BYTES + 1))
    header = _weights_header(settings, weights) if weights is not None else None
    summary = intake.inspect_config(settings, cfg, header)
    model_id, blobs = uuid.uuid4(), blob_store(settings)
    fields: dict = {"files": None, "weights_location": None, "weights_size": None, "weights_sha256": None}
    if weights is not None:
        weights.file.seek(0)
        key = model_file_key(model_id, "model.safetensors")
        info = blobs.put(key, weights.file)
        files = [{"name": "model.safetensors", "size": info.size}]
        fields = {"files": files, "weights_location": key, "weights_size": info.size, "weights_sha256": info.sha256}
    row = intake.hf_row(
        cfg,
        summary,
        id=model_id,
        tenant=tenant,
        filename=_name(config, "config.json"),
        format="safetensors" if weights is not None else "config",
        created_at=utcnow(),
        **fields,
    )
    return intake.keep(session, blobs, row, lambda: networks.add_model(session, row))


def _upload_program(session: Session, settings: Settings, tenant: str, program: UploadedFile) -> StoredModel:
    name = _name(program, "model.pt2")
    if not name.lower().endswith(".pt2"):
        raise intake.rejected(f"program: {name} is not a .pt2 file (torch.export.save)")
    if program.size > settings.max_model_upload_bytes:
        raise intake.too_large(
            f"program: {program.size} bytes exceed the limit of {settings.max_model_upload_bytes}; send larger "
            "programs with POST /v1/models/uploads"
        )
    summary = intake.check_exported(program.file, settings, "program")
    model_id, blobs = uuid.uuid4(), blob_store(settings)
    program.file.seek(0)
    key = model_file_key(model_id, "model.pt2")
    info = blobs.put(key, program.file)
    row = intake.exported_row(
        summary,
        id=model_id,
        tenant=tenant,
        filename=name,
        format="exported",
        files=[{"name": "model.pt2", "size": info.size}],
        weights_location=key,
        weights_size=info.size,
        weights_sha256=info.sha256,
        created_at=utcnow(),
    )
    return intake.keep(session, blobs, row, lambda: networks.add_model(session, row))


def model_of(session: Session, who: Principal, model_id: uuid.UUID):
    """A stored model's row, if the caller may see it (another tenant's is "not found", like a missing one)."""
    row = networks.model_meta(session, model_id)
    if row is None or not who.owns(row.tenant):
        raise NotFound(f"model {model_id} not found")
    return row


def models_of(
    session: Session, who: Principal, *, source: str | None, fmt: str | None, limit: int, cursor: str | None
) -> tuple[list, str | None]:
    """A page of the models the caller may see, newest first, and the cursor of the next page."""
    formats = FORMATS[source] if source is not None else None
    if fmt is not None:
        formats = tuple(f for f in (formats or (fmt,)) if f == fmt)
    try:
        return networks.list_models(session, tenant=who.visible_tenant, formats=formats, limit=limit, cursor=cursor)
    except ValueError:
        raise Malformed("cursor: not a cursor returned by this API") from None


def delete_model(session: Session, settings: Settings, row) -> None:
    """The model's row, then its bytes (a row never names missing bytes). The caller checked that no queued or
    running job uses it (``core.jobs.holds``)."""
    if networks.delete_model(session, row.id):
        blob_store(settings).delete_prefix(model_prefix(row.id))
