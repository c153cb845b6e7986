"""JSON Lines text: ``{"text": ...}`` per line (a text dataset, for language modelling) or ``{"query": ...,
"document": ...}`` (a pairs dataset, for contrastive training). The first record decides which; every line must then
have the same keys (other keys are ignored). Lines are read one at a time (each at most ``MAX_LINE_BYTES``, with at
most ``MAX_STRUCTURE_BYTES`` of it outside strings) and tokenized in batches, so memory holds one batch whatever the
file's size."""

from __future__ import annotations

import json
import re
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
from core.data.formats.tokenizer_process import TokenizerFailed
from core.data.formats.tokens import OFFSET_DTYPE, TOKEN_DTYPE, TextEncoder, TokenColumn

MAX_LINE_BYTES = 16 * 1024 * 1024
MAX_STRUCTURE_BYTES = 256 * 1024
"""JSON outside strings in one line: what bounds the Python objects its parse makes (a 16 MiB line of ``{},``
would make 5.6 million dicts, over 400 MiB), while a line of text may be as long as ``MAX_LINE_BYTES``."""
BATCH_ROWS = 1024
FIELDS = {"text": ("text",), "pairs": ("query", "document")}
_STRING = re.compile(rb'"[^"\\]*+(?:\\.[^"\\]*+)*+"')  # possessive: a string is matched in one pass


def convert_jsonl(raw: Path, out_dir: Path, tokenizer: Path | None, cap: int) -> Inspection:
    if raw.stat().st_size == 0:
        raise UploadRejected("file: the .jsonl is empty")
    texts = _Texts(out_dir, TextEncoder(tokenizer), cap)
    try:
        with open(raw, "rb") as fp:
            line_no = 0
            while line := fp.readline(MAX_LINE_BYTES + 1):
                line_no += 1
                if len(line) > MAX_LINE_BYTES:
                    raise UploadRejected(f"file: line {line_no} is longer than {MAX_LINE_BYTES} bytes")
                if line.strip():
                    texts.add(line_no, line)
            texts.flush()
        return texts.finish()
    except BaseException:
        texts.discard()
        raise
    finally:
        texts.encoder.close()


class _Texts:
    """The records' texts, checked line by line and tokenized a batch at a time into their token columns."""

    def __init__(self, out_dir: Path, encoder: TextEncoder, cap: int):
        self.out_dir, self.encoder, self.cap = out_dir, encoder, cap
        self.kind: str | None = None
        self.columns: list[TokenColumn] = []
        self.samples: list[dict] = []
        self.batch: list[tuple[int, list[str]]] = []  # (line number, the record's texts)
        self.batch_bytes = self.rows = 0

    def add(self, line_no: int, line: bytes) -> None:
        record = _record(line, line_no)
        escaped = b"\\u" in line  # only a \u escape can make a string that UTF-8 cannot encode
        if self.kind is None:
            self.kind = _kind_of(record, line_no)
            self.columns = [TokenColumn(self.out_dir, "" if self.kind == "text" else f"{f}_") for f in self.fields]
        values = []
        for field in self.fields:
            if field not in record:
                raise UploadRejected(f"{field}: line {line_no} has no {field!r} key (line 1 set the keys)")
            if not isinstance(record[field], str):
                raise UploadRejected(f"{field}: line {line_no} holds {type(record[field]).__name__}, not text")
            if escaped and not _encodable(record[field]):
                raise UploadRejected(f"{field}: line {line_no} holds an unpaired surrogate escape")
            values.append(record[field])
        self.rows += 1
        if self.rows > MAX_ROWS:
            raise UploadRejected(f"file: more than {MAX_ROWS} rows")
        if len(self.samples) < SAMPLE_ROWS:
            self.samples.append({f: v[:PREVIEW_TEXT_CHARS] for f, v in zip(self.fields, values, strict=True)})
        self.batch.append((line_no, values))
        self.batch_bytes += len(line)
        if len(self.batch) >= BATCH_ROWS or self.batch_bytes >= CHUNK_BYTES:
            self.flush()

    @property
    def fields(self) -> tuple[str, ...]:
        assert self.kind is not None
        return FIELDS[self.kind]

    def flush(self) -> None:
        if not self.batch:
            return
        first, last = self.batch[0][0], self.batch[-1][0]
        for i, column in enumerate(self.columns):
            stored = sum(c.bytes for c in self.columns) + OFFSET_DTYPE.itemsize * len(self.batch)
            room = (self.cap - stored) // TOKEN_DTYPE.itemsize
            try:
                encoded = self.encoder.encode([texts[i] for _, texts in self.batch], room)
            except TokenizerFailed as exc:
                raise UploadRejected(f"tokenizer: {exc} on lines {first} to {last}") from None
            if encoded is None:
                raise UploadRejected(f"file: more than {self.cap} bytes as stored (tokens after line {last})")
            flat, lengths = encoded
            if not lengths.all():
                line = self.batch[int(np.argmin(lengths))][0]
                raise UploadRejected(f"{self.fields[i]}: line {line} tokenizes to no tokens")
            column.add(flat, lengths)
        if sum(c.bytes for c in self.columns) > self.cap:
            raise UploadRejected(f"file: more than {self.cap} bytes as stored (tokens after line {last})")
        self.batch, self.batch_bytes = [], 0

    def finish(self) -> Inspection:
        if self.kind is None:
            raise UploadRejected("file: the .jsonl holds no records (only blank lines)")
        if self.rows < 2:
            raise UploadRejected(f"file: {self.rows} record is too few (at least 2)")
        files: dict[str, Path] = {}
        lengths = {}
        for field, column in zip(self.fields, self.columns, strict=True):
            lengths[field] = column.length_stats()
            files.update(column.close())
        preview = {
            "kind": self.kind,
            "format": "jsonl",
            "rows": self.rows,
            "tokenizer": self.encoder.name,
            "vocab_size": self.encoder.vocab_size,
            "dtypes": {name: "int64" if name.endswith("offsets.npy") else "int32" for name in files},
            "sample_rows": self.samples,
            "token_length": lengths["text"] if self.kind == "text" else lengths,
        }
        return Inspection("jsonl", self.kind, self.rows, None, False, preview, files)

    def discard(self) -> None:
        for column in self.columns:
            column.discard()


def _record(line: bytes, line_no: int) -> dict:
    if len(line) > MAX_STRUCTURE_BYTES and _outside_strings(line) > MAX_STRUCTURE_BYTES:
        raise UploadRejected(
            f"file: line {line_no} holds over {MAX_STRUCTURE_BYTES} bytes of JSON outside its strings "
            "(a record is its texts and a few small fields)"
        )
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


def _outside_strings(line: bytes) -> int:
    """Bytes of the line outside its JSON strings, each string counting one (as its separator would), counted
    until they pass MAX_STRUCTURE_BYTES; an unterminated string's bytes count as outside. One pass over the line."""
    outside = at = 0
    while outside <= MAX_STRUCTURE_BYTES and (quote := line.find(b'"', at)) >= 0:
        string = _STRING.match(line, quote)
        if string is None:
            return outside + len(line) - at
        outside, at = outside + quote - at + 1, string.end()
    return outside + len(line) - at


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
