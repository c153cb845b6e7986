"""Uploaded datasets in their users' formats, converted to canonical memory-mappable ``.npy`` files.

``convert`` validates a raw upload (format from the file name's extension) in bounded memory and writes, into
``out_dir``, the files of one of three dataset kinds:

- ``arrays`` (from .npy, .npz, CSV, Parquet): ``x.npy`` float32 (rows, columns) and ``y.npy`` int64 when labelled;
- ``text`` (JSON Lines ``{"text": ...}``): ``tokens.npy`` int32 flat ids and ``offsets.npy`` int64 (rows + 1);
- ``pairs`` (JSON Lines ``{"query": ..., "document": ...}``): ``query_tokens.npy``, ``query_offsets.npy``,
  ``document_tokens.npy``, ``document_offsets.npy``.

Every refusal is an ``UploadRejected`` whose message is ``"<field>: <reason>"``, a library's panic on the file
included. Nothing is unpickled or executed; an uploaded tokenizer runs in a bounded child process.
The converters are imported by ``convert`` only (pyarrow; tokenizers only in the tokenizer's child): the API
imports this package for ``format_of`` and ``UploadRejected`` and parses nothing while it streams uploads.
"""

from __future__ import annotations

from pathlib import Path

from core.data.formats.inspection import Inspection, UploadRejected

FORMATS = ("npy", "npz", "csv", "parquet", "jsonl")
LABELLED_FORMATS = ("csv", "parquet")

__all__ = ["FORMATS", "Inspection", "UploadRejected", "convert", "format_of"]


def format_of(filename: str) -> str:
    """The format named by the file's extension (``.parquet`` or ``.pq``; ``.jsonl`` or ``.ndjson``)."""
    ext = filename.lower().rsplit(".", 1)[-1] if "." in filename else ""
    fmt = {"pq": "parquet", "ndjson": "jsonl"}.get(ext, ext)
    if fmt not in FORMATS:
        raise UploadRejected(f"file: {filename!r} is not one of .npy, .npz, .csv, .parquet, .jsonl")
    return fmt


def convert(
    raw: Path,
    *,
    filename: str,
    out_dir: Path,
    label_column: str | None = None,
    tokenizer: Path | None = None,
    max_stored_bytes: int,
) -> Inspection:
    """Validate the raw upload at ``raw`` and write its canonical files into ``out_dir`` (which must exist);
    on refusal nothing is left there."""
    from core.data.formats.jsonl import convert_jsonl
    from core.data.formats.numpy_files import convert_npy, convert_npz
    from core.data.formats.tabular import convert_csv, convert_parquet

    fmt = format_of(filename)
    if label_column is not None and fmt not in LABELLED_FORMATS:
        raise UploadRejected("label_column: only for .csv and .parquet uploads (a .npz names its labels 'y')")
    if tokenizer is not None and fmt != "jsonl":
        raise UploadRejected("tokenizer: only for .jsonl text uploads")
    if raw.stat().st_size == 0:
        raise UploadRejected("file: the upload is empty")
    try:
        if fmt == "npy":
            return convert_npy(raw, out_dir, max_stored_bytes)
        if fmt == "npz":
            return convert_npz(raw, out_dir, max_stored_bytes)
        if fmt == "csv":
            return convert_csv(raw, out_dir, label_column, max_stored_bytes)
        if fmt == "parquet":
            return convert_parquet(raw, out_dir, label_column, max_stored_bytes)
        return convert_jsonl(raw, out_dir, tokenizer, max_stored_bytes)
    except (Exception, KeyboardInterrupt, SystemExit):  # refusals, bugs, and what is the process's own
        raise
    except BaseException as exc:  # a library's panic (pyo3's PanicException) on this file: the file's fault
        reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise UploadRejected(f"file: the {fmt} reader failed on it ({reason})") from None
