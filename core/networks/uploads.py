"""Resumable model uploads: the files of one model (a config.json with one safetensors file, or with a sharded
checkpoint's index and shards; or one .pt2) declared by name and size, each appended in chunks at offsets into a
partial object of the blob store, resumed from what the store holds, and checked when the client completes.

The session row is made before any byte is stored and names every partial object, and the model (its id and blob
prefix) that completing makes, so a blob never exists without a row that names it. A safetensors file's header is
checked before its data is stored: the chunk at offset 0 is held back until the whole header is in and passes
(``safetensors_header``). Completing moves each file under the model's prefix and checks the whole model there
(``intake``, ``checkpoint``); a refused model is removed with every byte of its upload, an accepted one gets its row
as its upload session ends (one transaction).
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterable, Iterator
from datetime import timedelta

from sqlalchemy.orm import Session

from core.blobs import blob_store
from core.blobs.layout import model_file_key, model_prefix, model_upload_partial_key, model_upload_prefix
from core.blobs.store import BlobStore, BlobTooLarge, ChunkTooSmall, OffsetMismatch
from core.db.tables import ModelUpload, StoredModel, utcnow
from core.errors import Conflict, Invalid, NotFound, TooLarge
from core.keys.repository import Principal
from core.networks import intake
from core.networks import repository as networks
from core.networks.checkpoint import MAX_INDEX_BYTES, CheckpointRejected, Layout, layout_of, merge_shards, weight_map
from core.networks.safetensors_header import WeightsRejected, header_length, read_header
from core.networks.spec import MAX_CONFIG_BYTES
from core.settings import Settings

CLAIM_STALE_S = 900.0
"""A completing request that has not finished after this long is taken for dead: another may complete the upload."""
_SMALL = {"config.json": MAX_CONFIG_BYTES}


def start_upload(session: Session, settings: Settings, tenant: str, files: list[tuple[str, int]]) -> ModelUpload:
    """Begin a resumable upload of these (name, size) files; refused from the names and sizes alone."""
    names = [name for name, _ in files]
    try:
        layout = layout_of(names)
    except CheckpointRejected as exc:
        raise intake.rejected(str(exc)) from None
    if layout.format == "config":
        raise intake.rejected("files: only config.json; a config alone is sent with POST /v1/models")
    for i, (name, size) in enumerate(files):
        cap = MAX_INDEX_BYTES if name == layout.index else _SMALL.get(name)
        if cap is not None and size > cap:
            raise intake.too_large(f"files[{i}].size: {name} of {size} bytes exceeds the limit of {cap}")
    total = sum(size for _, size in files)
    if total > settings.max_model_bytes:
        raise intake.too_large(f"files: {total} bytes in all exceed the limit of {settings.max_model_bytes}")
    now = utcnow()
    upload = ModelUpload(
        id=uuid.uuid4(),
        model_id=uuid.uuid4(),
        tenant=tenant,
        format=layout.format,
        files=[{"name": name, "size": size} for name, size in files],
        status="uploading",
        created_at=now,
        expires_at=now + timedelta(seconds=settings.upload_expiry_s),
    )
    return networks.add_upload(session, upload)


def upload_of(session: Session, who: Principal, upload_id: uuid.UUID) -> ModelUpload:
    """The upload, read in a transaction that ends here: a chunk streaming for minutes holds no connection."""
    up = networks.get_upload(session, upload_id)
    session.commit()  # read only; the row stays loaded (expire_on_commit is off)
    if up is None or not who.owns(up.tenant):
        raise NotFound(f"upload {upload_id} not found")
    return up


def file_index(up: ModelUpload, name: str) -> int:
    for i, f in enumerate(up.files):
        if f["name"] == name:
            return i
    raise NotFound(f"upload {up.id} has no file {name[:120]!r}")


def received(settings: Settings, up: ModelUpload, index: int) -> int:
    """Bytes of one file the store holds: where to resume it (its whole size once completing has moved it)."""
    blobs = blob_store(settings)
    got = blobs.partial_size(model_upload_partial_key(up.id, index))
    if got == 0 and blobs.exists(model_file_key(up.model_id, up.files[index]["name"])):
        return int(up.files[index]["size"])
    return got


def append(
    session: Session, settings: Settings, up: ModelUpload, index: int, offset: int, blocks: Iterable[bytes]
) -> int:
    """Append ``blocks`` to one file at ``offset`` (the bytes received so far); returns the bytes received."""
    if up.status != "uploading":
        raise Conflict(f"upload {up.id} is being completed; no more bytes are taken")
    name, size = up.files[index]["name"], int(up.files[index]["size"])
    if offset == 0:
        blocks = _checked_start(name, size, blocks)
    blobs, key = blob_store(settings), model_upload_partial_key(up.id, index)
    try:
        total = blobs.append_partial(key, offset, blocks, size)
    except OffsetMismatch as exc:
        raise Conflict(
            f"upload-offset: {exc}; resume {name} at {exc.received}", headers={"Upload-Offset": str(exc.received)}
        ) from None
    except BlobTooLarge as exc:
        raise TooLarge(f"body: {name}: {exc}") from None
    except ChunkTooSmall as exc:
        raise Invalid.of("body", f"{name}: {exc}") from None
    if not networks.upload_exists(session, up.id):  # given up, expired or completed while this chunk streamed
        blobs.delete_partial(key)
        session.commit()
        raise NotFound(f"upload {up.id} not found")
    networks.touch_upload(session, up.id, utcnow() + timedelta(seconds=settings.upload_expiry_s))
    return total


def _checked_start(name: str, size: int, blocks: Iterable[bytes]) -> Iterator[bytes]:
    """The first chunk of a file, held back until what can be checked of its start is in and passes: a safetensors
    file's whole header (its data is never stored under a bad header), a .pt2's zip signature."""
    lower = name.lower()
    need = 8 if lower.endswith(".safetensors") else 4 if lower.endswith(".pt2") else 0
    held, stream = bytearray(), iter(blocks)
    for block in stream:
        held += block
        if lower.endswith(".safetensors") and need == 8 and len(held) >= 8:
            need = 8 + _header_length(bytes(held[:8]), size, name)
        if len(held) >= need:
            _check_start(lower, name, size, bytes(held[:need]))
            yield bytes(held)
            yield from stream
            return
    if held:
        raise intake.rejected(
            f"{name}: the first chunk holds {len(held)} bytes, and what is checked before the data takes {need}: "
            f"send at least that much at offset 0"
        )


def _header_length(head: bytes, size: int, name: str) -> int:
    try:
        return header_length(head, size, name)
    except WeightsRejected as exc:
        raise intake.rejected(str(exc)) from None


def _check_start(lower: str, name: str, size: int, start: bytes) -> None:
    if lower.endswith(".safetensors"):
        try:
            read_header(io.BytesIO(start), size, name)
        except WeightsRejected as exc:
            raise intake.rejected(str(exc)) from None
    elif lower.endswith(".pt2") and start != b"PK\x03\x04":
        raise intake.rejected(f"{name}: not a zip archive; a .pt2 is written by torch.export.save")


def complete(session: Session, settings: Settings, up: ModelUpload) -> StoredModel:
    """All bytes are in: check the model and store it (its row made as the upload ends). ``Invalid``: refused, and
    every byte of the upload removed; ``Conflict``: bytes are missing, or another request is completing it."""
    now = utcnow()
    if not networks.claim_upload(session, up.id, now, stale_before=now - timedelta(seconds=CLAIM_STALE_S)):
        raise Conflict(f"upload {up.id} is being completed by another request; GET /v1/models/{up.model_id} later")
    blobs = blob_store(settings)
    try:
        _move_received(settings, blobs, up)
        row = _checked_row(settings, blobs, up)
    except Invalid:
        discard(session, blobs, up)
        raise
    except BaseException:
        networks.release_upload(session, up.id, utcnow() + timedelta(seconds=settings.upload_expiry_s))
        raise
    try:
        stored = networks.finish_upload(session, up.id, row)
    except BaseException:
        session.rollback()
        networks.release_upload(session, up.id, utcnow() + timedelta(seconds=settings.upload_expiry_s))
        raise
    blobs.delete_prefix(model_upload_prefix(up.id))  # empty partials a chunk racing completion may have left
    return stored


def _move_received(settings: Settings, blobs: BlobStore, up: ModelUpload) -> None:
    """Each file's partial object becomes a blob under the model's prefix, once every file is whole."""
    for i, f in enumerate(up.files):
        got = received(settings, up, i)
        if got != f["size"]:
            raise Conflict(
                f"upload-offset: {f['name']}: {got} of the declared {f['size']} bytes received; send the rest first",
                headers={"Upload-Offset": str(got)},
            )
    for i, f in enumerate(up.files):
        partial = model_upload_partial_key(up.id, i)
        if blobs.partial_size(partial) == f["size"]:
            blobs.finish_partial(partial, model_file_key(up.model_id, f["name"]))


def _read(blobs: BlobStore, key: str, limit: int) -> bytes:
    with blobs.open(key) as fh:
        return fh.read(limit + 1)


def _header(blobs: BlobStore, key: str, size: int, name: str) -> dict[str, list]:
    try:
        with blobs.open(key) as fh:
            return read_header(fh, size, name)[0]
    except WeightsRejected as exc:
        raise intake.rejected(str(exc)) from None


def _checked_row(settings: Settings, blobs: BlobStore, up: ModelUpload) -> StoredModel:
    """The model's row once its files, now under its prefix, pass every check."""
    layout = layout_of([f["name"] for f in up.files])
    sizes = {f["name"]: int(f["size"]) for f in up.files}

    def key(name: str) -> str:
        return model_file_key(up.model_id, name)

    fields = {
        "id": up.model_id,
        "tenant": up.tenant,
        "format": layout.format,
        "files": up.files,
        "weights_size": sum(sizes.values()),
        "weights_sha256": None,
        "created_at": utcnow(),
    }
    if layout.archive is not None:
        with blobs.open(key(layout.archive)) as fh:
            summary = intake.check_exported(fh, settings, layout.archive)
        return intake.exported_row(summary, filename=layout.archive, weights_location=key(layout.archive), **fields)
    assert layout.config is not None  # every layout but an exported one has a config
    config = intake.check_config(_read(blobs, key(layout.config), MAX_CONFIG_BYTES), layout.config)
    header = _merged_header(blobs, layout, sizes, key)
    summary = intake.inspect_config(settings, config, header)
    first = layout.index or layout.weights[0]
    return intake.hf_row(config, summary, filename=layout.config, weights_location=key(first), **fields)


def _merged_header(blobs: BlobStore, layout: Layout, sizes: dict[str, int], key) -> dict[str, list]:
    """Every tensor of the checkpoint ({name: [dtype, shape]}): one file's header, or the shards' once they agree
    with the index."""
    headers = {name: _header(blobs, key(name), sizes[name], name) for name in layout.weights}
    if layout.index is None:
        return headers[layout.weights[0]]
    try:
        mapping = weight_map(_read(blobs, key(layout.index), MAX_INDEX_BYTES), layout.index)
        return merge_shards(layout.index, mapping, headers)
    except CheckpointRejected as exc:
        raise intake.rejected(str(exc)) from None


def discard(session: Session, blobs: BlobStore, up: ModelUpload) -> None:
    """The upload ends with nothing kept: its row, then its partial objects and whatever was moved under the model's
    prefix."""
    networks.drop_upload(session, up.id, only_uploading=False)
    blobs.delete_prefix(model_upload_prefix(up.id))
    blobs.delete_prefix(model_prefix(up.model_id))


def abort(session: Session, settings: Settings, up: ModelUpload) -> None:
    """Give up an upload (not while a request is completing it): its row and every byte go."""
    if not networks.drop_upload(session, up.id, only_uploading=True):
        raise Conflict(f"upload {up.id} is being completed; it cannot be given up now")
    blobs = blob_store(settings)
    blobs.delete_prefix(model_upload_prefix(up.id))
    blobs.delete_prefix(model_prefix(up.model_id))
