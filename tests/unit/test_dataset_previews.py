"""Every figure of a dataset's preview against an independent count: rows, tokens per row (UTF-8 bytes counted here
with ``str.encode``), their total, min, max, mean and population sd, per-column statistics over many chunks (numpy on
the whole array), label balance, the sample rows and the columns shown; the size check at its limits; the loader's
rows, lengths, windows and batches; and ``ingest``'s sha256 and stored size, from a store that is read in place and
from one that is downloaded. No tokenizer process, no database."""

from __future__ import annotations

import hashlib
import io
import json
import statistics
import uuid
from pathlib import Path

import numpy as np
import pytest

from core.blobs.layout import dataset_file_key, dataset_raw_key
from core.blobs.store import DirectoryStore
from core.data import ingest as ingest_module
from core.data.formats import UploadRejected, convert
from core.data.formats import arrays as arrays_module
from core.data.formats.arrays import ArraysSink
from core.data.formats.inspection import (
    MAX_BALANCE_LABELS,
    PREVIEW_COLUMNS,
    PREVIEW_TEXT_CHARS,
    SAMPLE_ROWS,
    RunningStats,
    check_size,
)
from core.data.formats.tokens import TokenColumn
from core.data.ingest import ingest
from core.data.loader import ArraysView, PairsView, TextView, TokenRows, as_view, open_dataset

CAP = 1 << 24


@pytest.fixture
def out(tmp_path) -> Path:
    d = tmp_path / "out"
    d.mkdir()
    return d


def _jsonl(tmp_path: Path, records: list, blank_after: int | None = None) -> Path:
    lines = [json.dumps(r) for r in records]
    if blank_after is not None:
        lines.insert(blank_after, "   ")
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _texts(n: int) -> list[str]:
    """Rows of 1 to 40 characters, some outside ASCII (2-, 3- and 4-byte UTF-8), so bytes ≠ characters."""
    pieces = ["a", "é", "€", "𝄞", " ", "z"]
    return ["".join(pieces[(i * 7 + j) % len(pieces)] for j in range(1 + (i * 13) % 40)) for i in range(n)]


def _length_figures(texts: list[str]) -> dict:
    counts = [len(t.encode("utf-8")) for t in texts]
    return {
        "tokens": sum(counts),
        "min": min(counts),
        "max": max(counts),
        "mean": pytest.approx(statistics.fmean(counts), rel=1e-12),
        "std": pytest.approx(statistics.pstdev(counts), rel=1e-9),
    }


@pytest.mark.parametrize("rows", [2, 3, 2500])  # 2500 rows: three tokenizer batches of at most 1024 rows
def test_text_preview_counts_utf8_bytes_per_row(tmp_path, out, rows):
    texts = _texts(rows)
    found = convert(_jsonl(tmp_path, [{"text": t} for t in texts], blank_after=1), filename="d.jsonl", out_dir=out,
                    max_stored_bytes=CAP)  # fmt: skip
    p = found.preview
    assert (found.kind, found.rows, found.columns, found.has_labels) == ("text", rows, None, False)
    assert p["rows"] == rows and p["token_length"] == _length_figures(texts)
    assert (p["tokenizer"], p["vocab_size"], p["kind"], p["format"]) == ("utf-8 bytes", 256, "text", "jsonl")
    assert p["dtypes"] == {"tokens.npy": "int32", "offsets.npy": "int64"}
    assert p["sample_rows"] == [{"text": t} for t in texts[:SAMPLE_ROWS]]
    view = open_dataset(found.files, found.meta())
    assert isinstance(view, TextView) and len(view) == rows and view.vocab_size == 256
    assert view.lengths().tolist() == [len(t.encode()) for t in texts]
    assert bytes(view[rows - 1].astype(np.uint8)).decode() == texts[-1]


def test_pairs_preview_counts_each_column(tmp_path, out):
    queries, documents = _texts(7), [t * 2 + "!" for t in _texts(9)[2:]]
    records = [{"query": q, "document": d, "id": i} for i, (q, d) in enumerate(zip(queries, documents, strict=True))]
    found = convert(_jsonl(tmp_path, records), filename="d.ndjson", out_dir=out, max_stored_bytes=CAP)
    p = found.preview
    assert found.kind == "pairs" and found.rows == 7
    assert p["token_length"] == {"query": _length_figures(queries), "document": _length_figures(documents)}
    assert p["sample_rows"] == [{"query": q, "document": d} for q, d in list(zip(queries, documents))[:SAMPLE_ROWS]]
    assert sorted(found.files) == ["document_offsets.npy", "document_tokens.npy", "query_offsets.npy",
                                   "query_tokens.npy"]  # fmt: skip
    view = open_dataset(found.files, found.meta())
    assert isinstance(view, PairsView) and len(view) == 7
    assert view.document.lengths(np.array([0, 6])).tolist() == [len(documents[0].encode()), len(documents[6].encode())]


def test_sample_rows_are_cut_at_the_preview_length(tmp_path, out):
    long = "x" * (PREVIEW_TEXT_CHARS + 50)
    found = convert(_jsonl(tmp_path, [{"text": long}, {"text": "ab"}]), filename="d.jsonl", out_dir=out,
                    max_stored_bytes=CAP)  # fmt: skip
    assert found.preview["sample_rows"] == [{"text": "x" * PREVIEW_TEXT_CHARS}, {"text": "ab"}]
    assert found.preview["token_length"]["max"] == PREVIEW_TEXT_CHARS + 50


def test_one_record_is_too_few_and_a_row_without_tokens_is_named(tmp_path, out):
    with pytest.raises(UploadRejected, match=r"file: 1 record is too few \(at least 2\)"):
        convert(_jsonl(tmp_path, [{"text": "a"}]), filename="d.jsonl", out_dir=out, max_stored_bytes=CAP)
    with pytest.raises(UploadRejected, match="text: line 3 tokenizes to no tokens"):
        convert(_jsonl(tmp_path, [{"text": "a"}, {"text": "b"}, {"text": ""}]), filename="d.jsonl", out_dir=out,
                max_stored_bytes=CAP)  # fmt: skip


def test_text_over_the_stored_cap_is_refused_and_at_the_cap_accepted(tmp_path, out):
    # 10 tokens of 4 bytes and 4 offsets of 8 (the leading 0 and one per row): 72 data bytes as stored
    path = _jsonl(tmp_path, [{"text": t} for t in ("abcd", "efgh", "ij")])
    assert convert(path, filename="d.jsonl", out_dir=out, max_stored_bytes=72).rows == 3
    for f in out.iterdir():
        f.unlink()
    with pytest.raises(UploadRejected, match="file: more than 71 bytes as stored"):
        convert(path, filename="d.jsonl", out_dir=out, max_stored_bytes=71)
    assert list(out.iterdir()) == []


def test_token_column_merges_batches_into_the_whole_columns_statistics(tmp_path):
    rng = np.random.default_rng(3)
    batches = [rng.integers(1, 50, size=n) for n in (1, 7, 300, 2)]
    column = TokenColumn(tmp_path, "query_")
    for lengths in batches:
        column.add(np.zeros(int(lengths.sum()), dtype=np.uint8), lengths)
    column.add(np.zeros(0, dtype=np.uint8), np.zeros(0, dtype=np.int64))  # an empty batch changes nothing
    every = np.concatenate(batches)
    stats = column.length_stats()
    assert (stats["tokens"], stats["min"], stats["max"]) == (int(every.sum()), int(every.min()), int(every.max()))
    assert stats["mean"] == pytest.approx(every.mean(), rel=1e-12) and stats["std"] == pytest.approx(every.std())
    files = column.close()
    offsets = np.load(files["query_offsets.npy"])
    assert (
        offsets.tolist() == [0, *np.cumsum(every).tolist()] and len(np.load(files["query_tokens.npy"])) == every.sum()
    )
    empty = TokenColumn(tmp_path / "..", "empty_").length_stats()
    assert empty == {"tokens": 0, "min": None, "max": None, "mean": None, "std": None}


def test_running_stats_over_chunks_equal_numpy_on_the_whole_array():
    rng = np.random.default_rng(5)
    x = rng.normal(loc=[3.0, -2.0, 1e4], scale=[1.0, 0.5, 10.0], size=(1000, 3))
    stats = RunningStats(3)
    for start, stop in ((0, 1), (1, 1), (1, 400), (400, 401), (401, 1000)):
        stats.add(x[start:stop])
    summary = stats.summary(["a", "b", "c"])
    assert stats.n == 1000 and [s["column"] for s in summary] == ["a", "b", "c"]
    for i, s in enumerate(summary):
        assert (s["min"], s["max"]) == (x[:, i].min(), x[:, i].max())
        assert s["mean"] == pytest.approx(x[:, i].mean(), rel=1e-12)
        assert s["std"] == pytest.approx(x[:, i].std(), rel=1e-9)  # population sd
    empty = RunningStats(2).summary(["a", "b"])[1]
    assert (empty["column"], empty["min"], empty["max"], empty["std"]) == ("b", None, None, None)


def _labelled(out: Path, x: np.ndarray, y: np.ndarray | None, chunks: int = 3, names=None):
    sink = ArraysSink(out, x.shape[1], y is not None, CAP, names)
    for part in np.array_split(np.arange(len(x)), chunks):
        sink.add(x[part], None if y is None else y[part])
    return sink.finish("npz")


def test_arrays_preview_by_hand(out):
    x = np.array([[1.0, -2.0], [3.0, 0.0], [5.0, 2.0], [7.0, 4.0]])
    y = np.array([2, 0, 2, 2])
    found = _labelled(out, x, y, chunks=2)
    p = found.preview
    assert (found.rows, found.columns, found.has_labels, p["shape"]) == (4, 2, True, [4, 2])
    assert p["label_balance"] == {"0": 1, "2": 3} and p["distinct_labels"] == 2
    assert p["stats"] == [
        {"column": "0", "min": 1.0, "max": 7.0, "mean": 4.0, "std": pytest.approx(5**0.5)},
        {"column": "1", "min": -2.0, "max": 4.0, "mean": 1.0, "std": pytest.approx(5**0.5)},
    ]
    assert p["sample_rows"] == [{"x": [1.0, -2.0], "y": 2}, {"x": [3.0, 0.0], "y": 0}, {"x": [5.0, 2.0], "y": 2},
                                {"x": [7.0, 4.0], "y": 2}]  # fmt: skip
    assert p["dtypes"] == {"x": "float32", "y": "int64"} and p["columns_shown"] == 2


def test_wide_arrays_show_and_summarise_only_the_first_columns(out):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(12, PREVIEW_COLUMNS + 6)).astype(np.float32)
    names = [f"c{i}" for i in range(PREVIEW_COLUMNS + 6)]
    p = _labelled(out, x, None, chunks=4, names=names).preview
    assert p["columns_shown"] == PREVIEW_COLUMNS and [c["name"] for c in p["columns"]] == names[:PREVIEW_COLUMNS]
    assert [s["column"] for s in p["stats"]] == names[:PREVIEW_COLUMNS]
    assert p["stats"][-1]["max"] == pytest.approx(float(x[:, PREVIEW_COLUMNS - 1].max()))
    assert len(p["sample_rows"]) == SAMPLE_ROWS and all(len(r["x"]) == PREVIEW_COLUMNS for r in p["sample_rows"])
    assert p["sample_rows"][4]["x"] == [float(v) for v in x[4, :PREVIEW_COLUMNS]] and "y" not in p["sample_rows"][0]
    assert p["label_balance"] is None and "distinct_labels" not in p


def test_label_balance_stops_at_its_cap_of_distinct_labels(out, tmp_path):
    n = MAX_BALANCE_LABELS
    at_cap = _labelled(out, np.zeros((n, 1)), np.arange(n), chunks=3).preview
    assert at_cap["distinct_labels"] == n and sum(at_cap["label_balance"].values()) == n
    other = tmp_path / "other"
    other.mkdir()
    over = _labelled(other, np.zeros((n + 1, 1)), np.arange(n + 1), chunks=3).preview
    assert over["distinct_labels"] == f"over {MAX_BALANCE_LABELS}" and over["label_balance"] is None


def test_csv_preview_counts_rows_and_columns_independently(tmp_path, out):
    rows = [[i, i * 0.5, (i * 7) % 3] for i in range(23)]
    path = tmp_path / "d.csv"
    path.write_text("a,b,label\n" + "".join(f"{a},{b},{c}\n" for a, b, c in rows))
    found = convert(path, filename="d.csv", out_dir=out, label_column="label", max_stored_bytes=CAP)
    p = found.preview
    assert (found.rows, found.columns, p["shape"]) == (23, 2, [23, 2])
    labels = [c for _, _, c in rows]
    assert p["label_balance"] == {str(k): labels.count(k) for k in sorted(set(labels))}
    assert p["stats"][1]["mean"] == pytest.approx(statistics.fmean(b for _, b, _ in rows))
    assert [c["name"] for c in p["columns"]] == ["a", "b"] and p["label_column"] == "label"


@pytest.mark.parametrize(("rows", "columns"), [(2, 1), (1, 1), (2, 0)])
def test_size_check_needs_two_rows_and_a_column(rows, columns):
    if rows >= 2 and columns >= 1:
        check_size(rows, columns, False, CAP)
    else:
        with pytest.raises(UploadRejected, match="too few"):
            check_size(rows, columns, False, CAP)


def test_size_check_at_the_cap():
    # 10 rows × 3 columns of float32, and 8 bytes a label: 120, 200 with labels
    check_size(10, 3, False, 120)
    check_size(10, 3, True, 200)
    with pytest.raises(UploadRejected, match="would store 120 bytes as float32, over the limit of 119"):
        check_size(10, 3, False, 119)
    with pytest.raises(UploadRejected, match="would store 200 bytes"):
        check_size(10, 3, True, 199)


def test_size_check_at_the_row_and_column_limits():
    from core.data.formats.inspection import MAX_COLUMNS, MAX_ROWS

    check_size(2, MAX_COLUMNS, False, 1 << 40)
    check_size(MAX_ROWS, 1, False, 1 << 40)
    for rows, columns in ((2, MAX_COLUMNS + 1), (MAX_ROWS + 1, 1)):
        with pytest.raises(UploadRejected, match="exceed the limits"):
            check_size(rows, columns, False, 1 << 40)


# --- the loader --------------------------------------------------------------------------------------------------
def _rows(texts: list[bytes]) -> TokenRows:
    tokens = np.frombuffer(b"".join(texts), dtype=np.uint8).astype(np.int32)
    offsets = np.array([0, *np.cumsum([len(t) for t in texts])], dtype=np.int64)
    return TokenRows(tokens, offsets)


def test_token_rows_by_hand():
    rows = _rows([b"abc", b"d", b"efgh"])
    assert len(rows) == 3 and rows.lengths().tolist() == [3, 1, 4]
    assert rows.lengths(np.array([2, 0])).tolist() == [4, 3]
    assert bytes(rows[-1].astype(np.uint8)) == b"efgh" and bytes(rows[-3].astype(np.uint8)) == b"abc"
    for bad in (3, 4, 7, -4):  # 4 and 7 would wrap to rows 1 and 1 if only the index 3 were refused
        with pytest.raises(IndexError):
            rows[bad]
    assert rows.tiled(np.array([1, 0]), 5).tolist() == [[100] * 5, [97, 98, 99, 97, 98]]
    assert rows.windows(np.array([0, 4]), 4).tolist() == [[97, 98, 99, 100], [101, 102, 103, 104]]
    assert [[bytes(r.astype(np.uint8)) for r in b] for b in rows.batches(2)] == [[b"abc", b"d"], [b"efgh"]]
    with pytest.raises(ValueError, match="8 tokens are fewer than one window of 9"):
        rows.windows(np.array([0]), 9)
    rows.windows(np.array([0]), 8)


def test_token_rows_refuse_offsets_that_do_not_span_the_tokens():
    tokens = np.arange(4, dtype=np.int32)
    for offsets in ([1, 4], [0, 3], [0, 5]):
        with pytest.raises(ValueError, match="do not span its 4 tokens"):
            TokenRows(tokens, np.array(offsets))
    with pytest.raises(ValueError, match="must be 1-D"):
        TokenRows(tokens, np.array([], dtype=np.int64))
    assert len(TokenRows(tokens, np.array([0, 4]))) == 1
    assert len(TokenRows(tokens[:0], np.array([0]))) == 0  # a column of no rows: one offset
    with pytest.raises(ValueError, match="must be 1-D"):
        TokenRows(np.zeros((2, 2), dtype=np.int32), np.array([0, 2]))


def test_arrays_view_rows_columns_and_labels():
    view = as_view({"x": np.zeros((6, 2, 3)), "y": np.arange(6)})
    assert isinstance(view, ArraysView) and (view.rows, view.columns) == (6, 6) and view.files == ["x", "y"]
    assert ArraysView({"x": np.zeros(5)}).columns == 1 and as_view(view) is view
    with pytest.raises(ValueError, match="not one label per row of x \\(6 rows\\)"):
        ArraysView({"x": np.zeros((6, 2)), "y": np.arange(5)})
    with pytest.raises(ValueError, match="not one label per row"):
        ArraysView({"x": np.zeros((6, 2)), "y": np.zeros((6, 1))})
    pairs = PairsView(_rows([b"a", b"b"]), _rows([b"c", b"d"]), 256)
    assert len(pairs) == 2
    with pytest.raises(ValueError, match="2 queries but 1 documents"):
        PairsView(_rows([b"a", b"b"]), _rows([b"c"]), 256)


def test_open_dataset_of_each_kind_and_the_missing_file_named(tmp_path, out):
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    np.save(out / "x.npy", x)
    np.save(out / "y.npy", np.arange(4))
    arrays = open_dataset({"x.npy": out / "x.npy", "y.npy": out / "y.npy"}, {"kind": "arrays"})
    assert arrays["x"].tolist() == x.tolist() and "y" in arrays
    assert "y" not in open_dataset({"x.npy": out / "x.npy"}, {})
    with pytest.raises(ValueError, match=r"a text dataset needs tokens.npy \(has \['x.npy'\]\)"):
        open_dataset({"x.npy": out / "x.npy"}, {"kind": "text"})
    with pytest.raises(ValueError, match="unknown dataset kind 'audio'"):
        open_dataset({}, {"kind": "audio"})


# --- ingest ------------------------------------------------------------------------------------------------------
class DownloadedStore(DirectoryStore):
    """A directory store that does not hand out its files' paths, as an S3 store does not: ``ingest`` downloads."""

    def local_path(self, key: str) -> Path | None:
        return None


@pytest.mark.parametrize("store", [DirectoryStore, DownloadedStore])
def test_ingest_reports_the_uploads_sha256_and_the_stored_size(tmp_path, store):
    blobs = store(tmp_path / "blobs")
    dataset = uuid.uuid4()
    raw = b"a,b\n" + b"".join(f"{i},{i * i}\n".encode() for i in range(40))
    blobs.put(dataset_raw_key(dataset), io.BytesIO(raw))
    meta = ingest(blobs, dataset, filename="d.csv", label_column=None, has_tokenizer=False, declared_sha256=None,
                  max_stored_bytes=CAP, work_dir=tmp_path / "work")  # fmt: skip
    assert meta["sha256"] == hashlib.sha256(raw).hexdigest() and meta["rows"] == 40 and meta["columns"] == 2
    stored = [dataset_file_key(dataset, "x.npy")]
    assert meta["files"] == ["x.npy"]
    assert meta["size"] == sum(blobs.open(k).seek(0, 2) for k in stored)
    assert np.load(io.BytesIO(blobs.open(stored[0]).read())).tolist() == [[i, i * i] for i in range(40)]
    assert not (tmp_path / "work").exists()  # the scratch folder is emptied
    (tmp_path / "ready").mkdir()  # a scratch folder that already exists is used
    again = ingest(blobs, dataset, filename="d.csv", label_column=None, has_tokenizer=False, declared_sha256=None,
                   max_stored_bytes=CAP, work_dir=tmp_path / "ready")  # fmt: skip
    assert again["sha256"] == meta["sha256"] and again["size"] == meta["size"]


def test_ingest_refuses_a_declared_sha256_that_does_not_match(tmp_path):
    blobs = DownloadedStore(tmp_path / "blobs")
    dataset = uuid.uuid4()
    raw = json.dumps({"text": "ab"}).encode() + b"\n" + json.dumps({"text": "cd"}).encode() + b"\n"
    blobs.put(dataset_raw_key(dataset), io.BytesIO(raw))
    digest = hashlib.sha256(raw).hexdigest()
    kw = {"filename": "d.jsonl", "label_column": None, "has_tokenizer": False, "max_stored_bytes": CAP}
    for declared in ("0" * 64, "f" * 64):  # sorting before the true digest, and after it
        with pytest.raises(UploadRejected, match=f"hash to {digest}, not the declared {declared}"):
            ingest(blobs, dataset, declared_sha256=declared, work_dir=tmp_path / "w1", **kw)
    meta = ingest(blobs, dataset, declared_sha256=digest, work_dir=tmp_path / "w2", **kw)
    assert meta["rows"] == 2 and meta["preview"]["token_length"]["tokens"] == 4
    files = ["offsets.npy", "tokens.npy"]
    assert meta["size"] == sum(blobs.open(dataset_file_key(dataset, f)).seek(0, 2) for f in files)


def test_rows_past_the_stored_cap_are_refused_naming_the_last_row(out):
    # 3 float32 columns and an int64 label: 20 bytes a row; chunks of 4 and 3 rows store 80, then 140 bytes
    x, y = np.ones((7, 3)), np.zeros(7, dtype=np.int64)

    def fill(cap: int):
        for f in out.iterdir():
            f.unlink()
        sink = ArraysSink(out, 3, True, cap)
        sink.add(x[:4], y[:4])
        sink.add(x[4:], y[4:])
        return sink.finish("npz")

    assert fill(140).rows == 7
    with pytest.raises(UploadRejected, match=r"^file: more than 139 bytes as stored \(after row 7\)$"):
        fill(139)
    with pytest.raises(UploadRejected, match=r"^file: more than 79 bytes as stored \(after row 4\)$"):
        fill(79)


def test_token_id_range_spans_every_block_and_is_none_without_values(tmp_path, monkeypatch):
    monkeypatch.setattr(ingest_module, "SCAN_VALUES", 3)  # blocks [5, 9, 2], [7, 4, 11], [3]
    np.save(tmp_path / "tokens.npy", np.array([5, 9, 2, 7, 4, 11, 3], dtype=np.int64))
    files = {"tokens.npy": tmp_path / "tokens.npy"}
    assert ingest_module.token_id_range(files, "text") == {"min": 2, "max": 11}
    assert ingest_module.token_id_range(files, "csv") is None  # no file of ids for the kind
    np.save(tmp_path / "tokens.npy", np.array([], dtype=np.int64))
    assert ingest_module.token_id_range(files, "text") is None  # no value: no range


def test_arrays_sink_takes_exactly_max_rows_and_refuses_labels_missing_or_unasked(out, monkeypatch):
    monkeypatch.setattr(arrays_module, "MAX_ROWS", 5)  # the boundary, not the constant (pinned in check_size's test)
    sink = ArraysSink(out, 1, False, CAP)
    sink.add(np.ones((3, 1)))
    sink.add(np.ones((2, 1)))  # 5 rows exactly
    with pytest.raises(UploadRejected, match=r"^x: more than 5 rows$"):
        sink.add(np.ones((1, 1)))
    assert sink.finish("npy").rows == 5
    with pytest.raises(ValueError, match="labels given for an unlabelled dataset"):
        ArraysSink(out, 1, False, CAP).add(np.ones((2, 1)), np.zeros(2, dtype=np.int64))
    with pytest.raises(ValueError, match="or missing for a labelled one"):
        ArraysSink(out, 1, True, CAP).add(np.ones((2, 1)))
