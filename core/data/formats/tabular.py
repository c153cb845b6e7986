"""CSV and Parquet uploads through pyarrow's streaming readers: numeric columns become x, a label column y.

A CSV is judged first from its first row (the header, when it is not all numbers) and one pass that counts lines and
checks UTF-8; a Parquet file from its footer (schema and row count, the footer's length read before the footer) and
its pages' headers (``parquet_pages``: pyarrow inflates a whole page at a time). Rows are then read in record
batches, so memory holds one batch (and, for Parquet, a page of each column) whatever the file's size.
"""

from __future__ import annotations

import codecs
import struct
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from core.data.formats.arrays import ArraysSink
from core.data.formats.inspection import CHUNK_BYTES, MAX_COLUMNS, Inspection, UploadRejected, check_size
from core.data.formats.parquet_pages import check_pages

MAX_CSV_ROW_BYTES = 2 * 1024 * 1024
CSV_BLOCK_BYTES = 256 * 1024  # pyarrow reads a few blocks ahead, each parsed to about 8x its size
MAX_PARQUET_FOOTER_BYTES = 4 * 1024 * 1024  # pyarrow holds about 20x the footer decoded: 4 MiB is ~80 MiB
_PARQUET_MAGIC = b"PAR1"


def convert_csv(raw: Path, out_dir: Path, label_column: str | None, cap: int) -> Inspection:
    names, has_header, body_rows = _csv_layout(raw)
    label = _label_index(names, label_column)
    columns = len(names) - (label is not None)
    check_size(body_rows, columns, label is not None, cap)
    read = pa_csv.ReadOptions(block_size=CSV_BLOCK_BYTES, column_names=names, skip_rows=int(has_header))
    convert = pa_csv.ConvertOptions(
        column_types=dict.fromkeys(names, pa.float64()),
        null_values=[],  # an empty cell is an error, not a silent NaN
        strings_can_be_null=False,
    )
    sink = ArraysSink(out_dir, columns, label is not None, cap, [n for i, n in enumerate(names) if i != label])
    sink.source_dtypes = dict.fromkeys(sink.names, "number")
    try:
        try:
            # an OSFile, not the path: pyarrow would decompress a path ending in .gz or .bz2
            reader = pa_csv.open_csv(pa.OSFile(str(raw)), read_options=read, convert_options=convert)
            for batch in reader:
                _add_batch(sink, batch, label)
        except (pa.ArrowException, OSError) as exc:
            reason = _first_line(exc)
            if "straddl" in reason:  # pyarrow's words for a row longer than the block it parses at a time
                reason = f"a row is longer than {CSV_BLOCK_BYTES} bytes"
            raise UploadRejected(f"file: {reason} (after data row {sink.rows})") from None
        return sink.finish("csv", label_column)
    except BaseException:
        sink.discard()
        raise


def convert_parquet(raw: Path, out_dir: Path, label_column: str | None, cap: int) -> Inspection:
    _check_footer(raw)
    try:
        pf = pq.ParquetFile(raw, buffer_size=CSV_BLOCK_BYTES, pre_buffer=False)
    except (pa.ArrowException, OSError) as exc:
        raise UploadRejected(f"file: not a readable Parquet file ({_first_line(exc)})") from None
    schema = pf.schema_arrow
    names = list(schema.names)
    if len(set(names)) != len(names):
        raise UploadRejected("file: the Parquet file has duplicate column names")
    label = _label_index(names, label_column)
    for i, f in enumerate(schema):
        if not (pa.types.is_integer(f.type) or pa.types.is_floating(f.type) or pa.types.is_boolean(f.type)):
            role = "the label column" if i == label else "every feature column"
            raise UploadRejected(
                f"file: column {f.name!r} has type {f.type}; {role} must be numeric (drop or encode it first)"
            )
    rows, columns = pf.metadata.num_rows, len(names) - (label is not None)
    check_size(rows, columns, label is not None, cap)
    with open(raw, "rb") as fp:
        check_pages(fp, pf.metadata)
    sink = ArraysSink(out_dir, columns, label is not None, cap, [n for i, n in enumerate(names) if i != label])
    sink.source_dtypes = {f.name: str(f.type) for f in schema}
    batch_rows = max(1, CHUNK_BYTES // (8 * len(names)))
    try:
        try:
            for batch in pf.iter_batches(batch_size=batch_rows):
                _add_batch(sink, batch, label)
        except (pa.ArrowException, OSError) as exc:
            raise UploadRejected(f"file: not a readable Parquet file ({_first_line(exc)})") from None
        if sink.rows != rows:
            raise UploadRejected(f"file: the footer declares {rows} rows but the file holds {sink.rows}")
        return sink.finish("parquet", label_column)
    except BaseException:
        sink.discard()
        raise


def _add_batch(sink: ArraysSink, batch: pa.RecordBatch, label: int | None) -> None:
    for i, column in enumerate(batch.columns):
        if column.null_count:
            raise UploadRejected(
                f"file: column {batch.schema.names[i]!r} has empty (null) values near data row {sink.rows + 1}"
            )
    arrays = [c.to_numpy(zero_copy_only=False).astype(np.float64, copy=False) for c in batch.columns]
    features = [a for i, a in enumerate(arrays) if i != label]
    x = np.column_stack(features) if features else np.empty((batch.num_rows, 0))
    sink.add(x, None if label is None else arrays[label])


def _csv_layout(raw: Path) -> tuple[list[str], bool, int]:
    """Column names (the header's, or 0..n-1), whether the first row is a header, and the number of data lines
    (an upper bound on the rows), from one pass that also checks the file is UTF-8."""
    with open(raw, "rb") as fp:
        first = fp.readline(MAX_CSV_ROW_BYTES)
        if len(first) == MAX_CSV_ROW_BYTES and not first.endswith(b"\n"):
            raise UploadRejected(f"file: the first row is longer than {MAX_CSV_ROW_BYTES} bytes")
        if first.count(b",") >= MAX_COLUMNS:  # refused before its cells are split into strings
            raise UploadRejected(f"file: the first row has {first.count(b',') + 1} cells (at most {MAX_COLUMNS})")
        try:
            cells = [c.strip().strip('"') for c in first.decode("utf-8").strip().split(",")]
        except UnicodeDecodeError:
            raise UploadRejected("file: a .csv must be UTF-8 text (the first row is not)") from None
        if cells == [""]:
            raise UploadRejected("file: the .csv is empty")
        has_header = not all(_is_number(c) for c in cells)
        if has_header and len(set(cells)) != len(cells):
            raise UploadRejected("file: the header has duplicate column names")
        decoder = codecs.getincrementaldecoder("utf-8")()
        lines, last, at = 0 if has_header else 1, first[-1:], len(first)
        while block := fp.read(CHUNK_BYTES):
            try:
                decoder.decode(block)
            except UnicodeDecodeError as exc:
                raise UploadRejected(f"file: a .csv must be UTF-8 text (byte {at + exc.start} is not)") from None
            lines += block.count(b"\n")
            last, at = block[-1:], at + len(block)
        lines += last != b"\n" and at > len(first)
    names = cells if has_header else [str(i) for i in range(len(cells))]
    return names, has_header, lines


def _check_footer(raw: Path) -> None:
    size = raw.stat().st_size
    if size < 12:
        raise UploadRejected("file: empty or too short for a Parquet file")
    with open(raw, "rb") as fp:
        head = fp.read(4)
        fp.seek(size - 8)
        length, magic = struct.unpack("<I4s", fp.read(8))
    if head != _PARQUET_MAGIC or magic != _PARQUET_MAGIC:
        raise UploadRejected("file: not a Parquet file (no PAR1 magic)")
    if length > MAX_PARQUET_FOOTER_BYTES or length > size - 12:
        raise UploadRejected(f"file: a Parquet footer of {length} bytes (at most {MAX_PARQUET_FOOTER_BYTES})")


def _label_index(names: list[str], label_column: str | None) -> int | None:
    if label_column is None:
        return None
    if label_column not in names:
        raise UploadRejected(f"label_column: {label_column!r} is not a column (columns: {names[:20]})")
    if len(names) < 2:
        raise UploadRejected("label_column: the label is the only column; no features are left")
    return names.index(label_column)


def _is_number(cell: str) -> bool:
    try:
        float(cell)
        return True
    except ValueError:
        return False


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
