"""What a model's files must pass before its row is made, whichever way they came (one request, or a resumable
upload): each JSON file parsed with bounds, each safetensors header checked before its data, the config built on
the ``meta`` device in the inspector process against those headers, an exported program read by the checked reader
(``core.networks.exported``, no torch here) and described; then the row, made after the bytes it names and undone
with them when it cannot be written."""

from __future__ import annotations

from collections.abc import Callable
from typing import IO, Any

from pydantic import ValidationError
from sqlalchemy.orm import Session

from core.blobs.layout import model_prefix
from core.blobs.store import BlobStore
from core.db.tables import StoredModel
from core.errors import Busy, Invalid, TooLarge, Unavailable
from core.networks.exported.archive import read_archive
from core.networks.exported.describe import describe
from core.networks.exported.errors import ArchiveRejected
from core.networks.inspector import InspectionFailed, InspectorBusy, ModelRejected, inspect_model
from core.networks.spec import MAX_CONFIG_BYTES, HFConfigModel
from core.networks.stored import archive_limits
from core.networks.strict_json import JsonRefused, parse
from core.settings import Settings

MAX_CONFIG_DEPTH = 32
MAX_LISTED = 1000
"""Parameters, buffers and constants of an exported program listed in its summary (the counts are always whole)."""


def rejected(message: str) -> Invalid:
    """``message`` is "<field>: <reason>"."""
    return Invalid.said(message, "invalid_model")


def too_large(message: str) -> TooLarge:
    return TooLarge(message, errors=rejected(message).errors)


def inspector_busy(field: str, exc: InspectorBusy) -> Busy:
    """429: the inspector's queue is full; Retry-After is how long the requests ahead should take."""
    return Busy(f"{field}: could not be inspected now ({exc}); retry", headers={"Retry-After": str(exc.retry_after)})


def check_config(raw: bytes, where: str = "config") -> dict[str, Any]:
    """A config.json's object, parsed with bounds and checked as an ``hf_config`` spec (names ``where``)."""
    if len(raw) > MAX_CONFIG_BYTES:
        raise too_large(f"{where}: {len(raw)} bytes exceed the limit of {MAX_CONFIG_BYTES}")
    try:
        config = parse(raw, where, MAX_CONFIG_DEPTH)
    except JsonRefused as exc:
        raise rejected(str(exc)) from None
    if not isinstance(config, dict):
        raise rejected(f"{where}: a config.json holds one JSON object")
    try:
        HFConfigModel(source="hf_config", config=config)
    except ValidationError as exc:
        raise rejected(exc.errors()[0]["msg"].removeprefix("Value error, ")) from None
    return config


def inspect_config(settings: Settings, config: dict, header: dict[str, list] | None) -> dict:
    """The inspector's summary of the config built on ``meta`` (task, parameters, layers), the safetensors tensors
    in ``header`` ({name: [dtype, shape]}) matched against it."""
    spec = {"source": "hf_config", "config": config}
    try:
        return inspect_model(
            spec, weights_header=header, timeout_s=settings.inspect_timeout_s, max_waiting=settings.inspect_queue
        )
    except ModelRejected as exc:
        raise rejected(str(exc)) from None
    except InspectorBusy as exc:
        raise inspector_busy("model", exc) from None
    except InspectionFailed as exc:
        raise Unavailable(f"model: could not be inspected now ({exc}); retry", headers={"Retry-After": "5"}) from None


def check_exported(stream: IO[bytes], settings: Settings, where: str) -> dict:
    """The summary of a .pt2 archive that the checked reader accepts: what ``GET /v1/models/{id}`` shows."""
    try:
        with read_archive(stream, limits=archive_limits(settings.max_model_bytes)) as archive:
            described = describe(archive)
    except ArchiveRejected as exc:
        raise rejected(f"{where}: {exc}") from None
    for key in ("parameters", "buffers", "constants"):
        described[f"n_{key}"] = len(described[key])
        described[key] = described[key][:MAX_LISTED]
    return {"n_params": described["n_params"], "n_tensors": described["n_parameters"], "exported": described}


def hf_row(config: dict, summary: dict, **fields: Any) -> StoredModel:
    """The row of a config model (with or without weights); ``fields``: id, tenant, filename, format, where the
    files are."""
    return StoredModel(
        model_type=config["model_type"],
        task=summary["task"],
        config=config,
        n_params=summary["n_params"],
        summary=summary,
        **fields,
    )


def exported_row(summary: dict, **fields: Any) -> StoredModel:
    return StoredModel(model_type=None, task=None, config=None, n_params=summary["n_params"], summary=summary, **fields)


def keep(session: Session, blobs: BlobStore, row: StoredModel, add: Callable[[], StoredModel]) -> StoredModel:
    """``add()`` the row that names bytes already stored; if it cannot be written, the bytes go too (a blob never
    stays without its row)."""
    try:
        return add()
    except BaseException:
        session.rollback()
        blobs.delete_prefix(model_prefix(row.id))
        raise
