"""Turning a dataset's raw upload, already in the blob store, into its canonical files (``core.data.formats``).

One function for every path that validates: the worker task after a resumable upload, and the API's one-shot
upload of a small file. The raw bytes are read where they lie when the store is a directory, or downloaded once
into ``work_dir`` (S3); their SHA-256 is computed while they are read, in blocks, never whole in memory.
"""

from __future__ import annotations

import hashlib
import shutil
import uuid
from pathlib import Path

import numpy as np

from core.blobs.layout import dataset_file_key, dataset_raw_key, dataset_tokenizer_key
from core.blobs.store import CHUNK, BlobStore
from core.data.formats import UploadRejected, convert

TOKEN_FILES = {"arrays": ("x.npy",), "text": ("tokens.npy",), "pairs": ("query_tokens.npy", "document_tokens.npy")}
"""The canonical files a token model reads as ids, per dataset kind."""
SCAN_VALUES = 1 << 20


def token_id_range(files: dict[str, Path], kind: str) -> dict | None:
    """{"min", "max"} of the values a token model would read as ids, scanned a block at a time: what a job's
    admission checks against a model's vocabulary before queueing. None when some value is not a whole number
    (an arrays dataset of features, not ids)."""
    low, high = None, None
    for name in TOKEN_FILES.get(kind, ()):
        flat = np.load(files[name], mmap_mode="r", allow_pickle=False).reshape(-1)
        for start in range(0, len(flat), SCAN_VALUES):
            block = np.asarray(flat[start : start + SCAN_VALUES])
            if block.dtype.kind == "f" and not np.array_equal(block, np.round(block)):
                return None  # NaN, infinities and fractions alike
            if len(block):
                low = int(block.min()) if low is None else min(low, int(block.min()))
                high = int(block.max()) if high is None else max(high, int(block.max()))
    return None if low is None else {"min": low, "max": high}


def local_copy(blobs: BlobStore, key: str, work_dir: Path, digest=None) -> Path:
    """A local path holding the blob: the store's own file, or a download into ``work_dir``; ``digest`` (a
    hashlib object) is fed every byte on the way."""
    path = blobs.local_path(key)
    if path is not None:
        if digest is not None:
            with open(path, "rb") as fh:
                while block := fh.read(CHUNK):
                    digest.update(block)
        return path
    target = work_dir / key.rsplit("/", 1)[-1]
    with blobs.open(key) as src, open(target, "wb") as sink:
        while block := src.read(CHUNK):
            if digest is not None:
                digest.update(block)
            sink.write(block)
    return target


def ingest(
    blobs: BlobStore,
    dataset_id: uuid.UUID,
    *,
    filename: str,
    label_column: str | None,
    has_tokenizer: bool,
    declared_sha256: str | None,
    max_stored_bytes: int,
    work_dir: Path,
) -> dict:
    """Validate and convert the dataset's raw upload, store its canonical files, and return what the dataset row
    records once ready (``Inspection.meta()`` with the upload's sha256 and the canonical files' size, the arguments
    of ``core.datasets.repository.finish_validation``); raises ``UploadRejected`` (the message names the field and says
    why). ``work_dir`` is the caller's scratch folder, emptied afterwards."""
    work_dir.mkdir(parents=True, exist_ok=True)
    try:
        digest = hashlib.sha256()
        raw = local_copy(blobs, dataset_raw_key(dataset_id), work_dir, digest)
        sha256 = digest.hexdigest()
        if declared_sha256 is not None and declared_sha256 != sha256:
            raise UploadRejected(
                f"sha256: the upload's bytes hash to {sha256}, not the declared {declared_sha256}; upload it again"
            )
        tokenizer = local_copy(blobs, dataset_tokenizer_key(dataset_id), work_dir) if has_tokenizer else None
        out_dir = work_dir / "canonical"
        out_dir.mkdir()
        found = convert(
            raw,
            filename=filename,
            out_dir=out_dir,
            label_column=label_column,
            tokenizer=tokenizer,
            max_stored_bytes=max_stored_bytes,
        )
        stored = 0
        for name, path in found.files.items():
            with open(path, "rb") as fh:
                stored += blobs.put(dataset_file_key(dataset_id, name), fh).size
        meta = found.meta()
        meta["preview"] = {**meta["preview"], "token_ids": token_id_range(found.files, found.kind)}
        return {**meta, "sha256": sha256, "size": stored}
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
