"""JSON Lines text: ``{"text": ...}`` per line (a text dataset, for language modelling) or ``{"query": ...,
"document": ...}`` (a pairs dataset, for contrastive training). The first record decides which; every line must then
have the same keys (other keys are ignored). Lines are read one at a time (each at most ``MAX_LINE_BYTES``) and
tokenized in batches, so memory holds one batch whatever the file's size."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from core.data.formats.inspection import (
    CHUNK_BYTES,
    MAX_ROWS,
    PREVIEW_TEXT_CHARS,
    SAMPLE_ROWS,
    Inspection,
    UploadRejected,
)
from core.data.formats.tokens import TextEncoder, TokenColumn

MAX_LINE_BYTES = 16 * 1024 * 1024
BATCH_ROWS = 1024
FIELDS = {"text": ("text",), "pairs": ("query", "document")}


def convert_jsonl(raw: Path, out_dir: Path, tokenizer: Path | None, cap: int) -> Inspection:
    if raw.stat().st_size == 0:
        raise UploadRejected("file: the .jsonl is empty")
    encoder = TextEncoder(tokenizer)
    kind: str | None = None
    columns: list[TokenColumn] = []
    samples: list[dict] = []
    batch: list[tuple[int, list[str]]] = []  # (line number, the record's texts)
    batch_bytes = rows = 0

    def flush(last_line: int) -> None:
        nonlocal batch, batch_bytes
        if not batch:
            return
        assert kind is not None
        for i, column in enumerate(columns):
            flat, lengths = encoder.encode([texts[i] for _, texts in batch])
            if not lengths.all():
                line = batch[int(np.argmin(lengths))][0]
                raise UploadRejected(f"{FIELDS[kind][i]}: line {line} tokenizes to no tokens")
            column.add(flat, lengths)
        stored = sum(c.bytes for c in columns)
        if stored > cap:
            raise UploadRejected(f"file: more than {cap} bytes as stored (tokens after line {last_line})")
        batch, batch_bytes = [], 0

    try:
        with open(raw, "rb") as fp:
            line_no = 0
            while line := fp.readline(MAX_LINE_BYTES + 1):
                line_no += 1
                if len(line) > MAX_LINE_BYTES:
                    raise UploadRejected(f"file: line {line_no} is longer than {MAX_LINE_BYTES} bytes")
                if not line.strip():
                    continue
                record = _record(line, line_no)
                escaped = b"\\u" in line  # only a \u escape can make a string that UTF-8 cannot encode
                if kind is None:
                    kind = _kind_of(record, line_no)
                    columns = [TokenColumn(out_dir, "" if kind == "text" else f"{f}_") for f in FIELDS[kind]]
                values = []
                for field in FIELDS[kind]:
                    if field not in record:
                        raise UploadRejected(f"{field}: line {line_no} has no {field!r} key (line 1 set the keys)")
                    if not isinstance(record[field], str):
                        raise UploadRejected(f"{field}: line {line_no} holds {type(record[field]).__name__}, not text")
                    if escaped and not _encodable(record[field]):
                        raise UploadRejected(f"{field}: line {line_no} holds an unpaired surrogate escape")
                    values.append(record[field])
                rows += 1
                if rows > MAX_ROWS:
                    raise UploadRejected(f"file: more than {MAX_ROWS} rows")
                if len(samples) < SAMPLE_ROWS:
                    samples.append({f: v[:PREVIEW_TEXT_CHARS] for f, v in zip(FIELDS[kind], values, strict=True)})
                batch.append((line_no, values))
                batch_bytes += len(line)
                if len(batch) >= BATCH_ROWS or batch_bytes >= CHUNK_BYTES:
                    flush(line_no)
            flush(line_no)
        if kind is None:
            raise UploadRejected("file: the .jsonl holds no records (only blank lines)")
        if rows < 2:
            raise UploadRejected(f"file: {rows} record is too few (at least 2)")
        files: dict[str, Path] = {}
        lengths = {}
        for field, column in zip(FIELDS[kind], columns, strict=True):
            lengths[field] = column.length_stats()
            files.update(column.close())
    except BaseException:
        for column in columns:
            column.discard()
        raise
    preview = {
        "kind": kind,
        "format": "jsonl",
        "rows": rows,
        "tokenizer": encoder.name,
        "vocab_size": encoder.vocab_size,
        "dtypes": {name: "int64" if name.endswith("offsets.npy") else "int32" for name in files},
        "sample_rows": samples,
        "token_length": lengths["text"] if kind == "text" else lengths,
    }
    return Inspection("jsonl", kind, rows, None, False, preview, files)


def _record(line: bytes, line_no: int) -> dict:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UploadRejected(f"file: line {line_no} is not UTF-8 (byte {exc.start} of the line)") from None
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UploadRejected(f"file: line {line_no} is not JSON ({exc.msg} at column {exc.colno})") from None
    except (ValueError, RecursionError) as exc:  # an integer of over 4300 digits, or nesting Python cannot follow
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc).split(";")[0][:120]
        raise UploadRejected(f"file: line {line_no} is not JSON this service reads ({reason})") from None
    if not isinstance(record, dict):
        raise UploadRejected(f"file: line {line_no} is a JSON {type(record).__name__}, not an object")
    return record


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _kind_of(record: dict, line_no: int) -> str:
    if "text" in record:
        return "text"
    if "query" in record or "document" in record:
        return "pairs"
    raise UploadRejected(
        f"text: line {line_no} has neither a 'text' key (language modelling) nor 'query' and 'document' (pairs)"
    )
