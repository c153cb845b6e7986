"""Each upload format converts to the canonical files with values equal to the source's, and each malformed upload
is refused with the field and the reason; previews are checked against statistics computed here with numpy."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from core.data.formats import UploadRejected, convert

CAP = 1 << 24
VOCAB = {"[UNK]": 0, "hello": 1, "world": 2, "the": 3, "cat": 4}


@pytest.fixture
def out(tmp_path) -> Path:
    d = tmp_path / "out"
    d.mkdir()
    return d


def _convert(path: Path, out: Path, **kw):
    return convert(path, filename=kw.pop("filename", path.name), out_dir=out, max_stored_bytes=kw.pop("cap", CAP), **kw)


def _rejected(path: Path, out: Path, match: str, **kw) -> None:
    with pytest.raises(UploadRejected, match=match):
        _convert(path, out, **kw)
    assert list(out.iterdir()) == []  # a refusal leaves nothing behind


def _data(rows=50, cols=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(rows, cols)), rng.integers(0, 3, size=rows)


def _tokenizer(tmp_path) -> Path:
    tok = Tokenizer(models.WordLevel(VOCAB, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    return path


def _jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


# --- arrays ------------------------------------------------------------------------------------------------------


def _check_arrays(ins, x, y=None):
    got = np.load(ins.files["x.npy"], mmap_mode="r", allow_pickle=False)
    assert isinstance(got, np.memmap) and got.dtype == np.dtype("<f4")
    np.testing.assert_array_equal(got, x.astype(np.float32))
    assert (ins.kind, ins.rows, ins.columns, ins.has_labels) == ("arrays", len(x), x.shape[1], y is not None)
    stats = ins.preview["stats"]
    x32 = x.astype(np.float32).astype(np.float64)
    np.testing.assert_allclose([s["mean"] for s in stats], x32.mean(axis=0), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose([s["std"] for s in stats], x32.std(axis=0), rtol=1e-9)
    np.testing.assert_array_equal([s["min"] for s in stats], x32.min(axis=0))
    np.testing.assert_array_equal([s["max"] for s in stats], x32.max(axis=0))
    assert len(ins.preview["sample_rows"]) == 5
    np.testing.assert_array_equal(ins.preview["sample_rows"][1]["x"], x32[1])
    if y is not None:
        np.testing.assert_array_equal(np.load(ins.files["y.npy"], allow_pickle=False), y)
        values, counts = np.unique(y, return_counts=True)
        assert ins.preview["label_balance"] == {str(v): int(c) for v, c in zip(values, counts, strict=True)}
    json.dumps(ins.preview)  # JSON-serialisable


def test_npy_float64_and_1d(tmp_path, out):
    x, _ = _data()
    np.save(tmp_path / "a.npy", x)
    ins = _convert(tmp_path / "a.npy", out)
    _check_arrays(ins, x)
    assert ins.format == "npy" and ins.preview["columns"][0]["source_dtype"] == "float64"
    np.save(tmp_path / "b.npy", np.arange(7, dtype=">i2"))  # big-endian integers, one column
    (out / "x.npy").unlink()
    _check_arrays(_convert(tmp_path / "b.npy", out), np.arange(7).reshape(7, 1))


@pytest.mark.parametrize("compressed", [False, True])
def test_npz_with_labels(tmp_path, out, compressed):
    x, y = _data(rows=3000)  # more than one chunk of labels
    (np.savez_compressed if compressed else np.savez)(tmp_path / "a.npz", x=x, y=y.astype(np.float32))
    _check_arrays(_convert(tmp_path / "a.npz", out), x, y)
    assert sorted(p.name for p in out.iterdir()) == ["x.npy", "y.npy"]  # the label spool is gone


def test_csv_header_and_label_column(tmp_path, out):
    x, y = _data()
    lines = ["a,b,label,c,d"] + [
        ",".join(map(repr, [*map(float, r[:2]), int(lab), *map(float, r[2:])])) for r, lab in zip(x, y, strict=True)
    ]
    (tmp_path / "t.csv").write_text("\n".join(lines))  # no final newline
    ins = _convert(tmp_path / "t.csv", out, label_column="label")
    _check_arrays(ins, x, y)
    assert [c["name"] for c in ins.preview["columns"]] == ["a", "b", "c", "d"]
    assert ins.preview["label_column"] == "label"


def test_csv_without_header(tmp_path, out):
    x, _ = _data(rows=6, cols=2)
    (tmp_path / "t.csv").write_text("".join(f"{float(a)!r},{float(b)!r}\n" for a, b in x))
    _check_arrays(_convert(tmp_path / "t.csv", out), x)


def test_parquet_numeric_columns_and_label(tmp_path, out):
    x, y = _data(rows=2500)
    table = pa.table({"f": x[:, 0], "g": x[:, 1].astype(np.float32), "i": np.arange(2500), "label": y})
    pq.write_table(table, tmp_path / "t.parquet", row_group_size=700)
    ins = _convert(tmp_path / "t.parquet", out, label_column="label")
    expect = np.column_stack([x[:, 0], x[:, 1].astype(np.float32), np.arange(2500)])
    _check_arrays(ins, expect, y)
    assert [c["source_dtype"] for c in ins.preview["columns"]] == ["double", "float", "int64"]


# --- text and pairs ----------------------------------------------------------------------------------------------


def _rows(ins, prefix=""):
    tokens = np.load(ins.files[f"{prefix}tokens.npy"], mmap_mode="r")
    offsets = np.load(ins.files[f"{prefix}offsets.npy"], mmap_mode="r")
    assert tokens.dtype == np.dtype("<i4") and offsets.dtype == np.dtype("<i8") and offsets[0] == 0
    return [tokens[offsets[i] : offsets[i + 1]].tolist() for i in range(len(offsets) - 1)]


def test_jsonl_text_as_utf8_bytes(tmp_path, out):
    texts = ["héllo", "", "a" * 300, "日本"]
    path = _jsonl(tmp_path / "t.jsonl", [{"text": t, "id": i} for i, t in enumerate(texts) if t])
    ins = _convert(path, out)
    kept = [t for t in texts if t]
    assert (ins.kind, ins.rows, ins.columns, ins.has_labels) == ("text", 3, None, False)
    assert _rows(ins) == [list(t.encode("utf-8")) for t in kept]
    lengths = np.array([len(t.encode("utf-8")) for t in kept])
    stats = ins.preview["token_length"]
    assert (stats["tokens"], stats["min"], stats["max"]) == (lengths.sum(), lengths.min(), lengths.max())
    assert stats["mean"] == pytest.approx(lengths.mean()) and stats["std"] == pytest.approx(lengths.std())
    assert [s["text"] for s in ins.preview["sample_rows"]] == [t[:200] for t in kept]
    assert ins.preview["vocab_size"] == 256


def test_jsonl_text_with_tokenizer(tmp_path, out):
    path = _jsonl(tmp_path / "t.jsonl", [{"text": "hello world"}, {"text": "the cat the dog"}])
    ins = _convert(path, out, tokenizer=_tokenizer(tmp_path))
    assert _rows(ins) == [[1, 2], [3, 4, 3, 0]]
    assert ins.preview["tokenizer"] == "tokenizer.json" and ins.preview["vocab_size"] == len(VOCAB)


@pytest.mark.parametrize("with_tokenizer", [False, True])
def test_jsonl_pairs(tmp_path, out, with_tokenizer):
    records = [{"query": "hello", "document": "the world"}, {"query": "cat", "document": "hello the cat"}]
    tok = _tokenizer(tmp_path) if with_tokenizer else None
    ins = _convert(_jsonl(tmp_path / "p.jsonl", records), out, tokenizer=tok)
    assert ins.kind == "pairs" and ins.rows == 2
    assert sorted(ins.files) == ["document_offsets.npy", "document_tokens.npy", "query_offsets.npy", "query_tokens.npy"]
    if with_tokenizer:
        assert _rows(ins, "query_") == [[1], [4]] and _rows(ins, "document_") == [[3, 2], [1, 3, 4]]
    else:
        assert _rows(ins, "document_") == [list(r["document"].encode()) for r in records]
    assert ins.preview["token_length"]["query"]["tokens"] == (2 if with_tokenizer else 8)


# --- refusals ----------------------------------------------------------------------------------------------------


def _npy_bytes(array) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("a.exe", b"MZ", r"^file: 'a.exe' is not one of"),
        ("a.npy", b"", r"^file: the upload is empty"),
        ("a.npy", b"\x93NUMPY\x01\x00garbage", r"^x: not a readable .npy header"),
        ("a.npy", _npy_bytes(np.array([{"a": 1}, None], dtype=object)), r"^x: dtype object is not numeric"),
        ("a.npy", _npy_bytes(np.array(["a", "b"])), r"^x: dtype <U1 is not numeric"),
        ("a.npy", _npy_bytes(np.asfortranarray(np.ones((3, 2)))), r"^x: Fortran-ordered"),
        ("a.npy", _npy_bytes(np.ones((3, 2)))[:-8], r"^x: the header declares shape \(3, 2\).* holds 40 bytes"),
        ("a.npy", _npy_bytes(np.array([[1.0, np.nan], [2.0, 3.0]])), r"^x: row 1 holds NaN or infinity"),
        ("a.npy", _npy_bytes(np.array([[1.0], [1e39]])), r"^x: row 2 holds NaN or infinity \(as float32\)"),
        ("a.npy", _npy_bytes(np.ones((1, 3))), r"^x: 1 rows and 3 columns are too few"),
        ("a.npy", _npy_bytes(np.ones((2, 70_000), dtype=np.int8)), r"^x: 2 rows and 70000 columns exceed"),
        ("a.npz", b"PK\x03\x04 not really a zip", r"^file: not a .npz"),
        ("a.csv", b"a,b\n1,2\n3\n", r"^file: .*Expected 2 columns, got 1"),
        ("a.csv", b"a,b\n1,2\n3,oops\n", r"^file: .*conversion error to double.*oops"),
        ("a.csv", b"a,b\n1,2\n3,\n", r"^file: .*conversion error to double"),
        ("a.csv", b"a,b\n1,2\n3,\xff\xfe\n", r"^file: a .csv must be UTF-8 text \(byte 10 is not\)"),
        ("a.csv", b"a,a\n1,2\n3,4\n", r"^file: the header has duplicate column names"),
        ("a.csv", b"\n", r"^file: the .csv is empty"),
        ("a.parquet", b"PAR1 not parquet at all PAR1", r"^file: a Parquet footer of"),
        ("a.parquet", b"not parquet at all, really not", r"^file: not a Parquet file"),
        ("a.jsonl", b'{"text": "a"}\n{"txt": "b"}\n', r"^text: line 2 has no 'text' key"),
        ("a.jsonl", b'{"text": "a"}\n{"text": 5}\n', r"^text: line 2 holds int, not text"),
        ("a.jsonl", b'{"text": "a"}\n{"text": "\xff"}\n', r"^file: line 2 is not UTF-8"),
        ("a.jsonl", b'{"text": "a"}\n{"text": \n', r"^file: line 2 is not JSON"),
        ("a.jsonl", b'["text"]\n', r"^file: line 1 is a JSON list, not an object"),
        ("a.jsonl", b'{"label": 1}\n', r"^text: line 1 has neither a 'text' key"),
        ("a.jsonl", b'{"query": "q", "document": "d"}\n{"query": "q"}\n', r"^document: line 2 has no 'document'"),
        ("a.jsonl", b'{"text": "a"}\n{"text": ""}\n', r"^text: line 2 tokenizes to no tokens"),
        ("a.jsonl", b'{"text": "a"}\n{"text": "\\ud800"}\n', r"^text: line 2 holds an unpaired surrogate"),
        ("a.jsonl", b'{"text": "a"}\n\n\n', r"^file: 1 record is too few"),
        ("a.jsonl", b"\n\n", r"^file: the .jsonl holds no records"),
        ("a.jsonl", b"[" * 100_000 + b"]" * 100_000 + b"\n", r"^file: line 1 is not JSON this service reads \(nested"),
        ("a.jsonl", b'{"text": "a", "n": ' + b"9" * 5000 + b"}\n", r"^file: line 1 is not JSON this service reads"),
    ],
)
def test_malformed_uploads_are_refused(tmp_path, out, name, content, match):
    path = tmp_path / name
    path.write_bytes(content)
    _rejected(path, out, match)


def test_labels_must_be_non_negative_integers(tmp_path, out):
    x, _ = _data(rows=4, cols=1)
    for y, match in (([0, 1, 2.5, 1], r"^y: row 3 holds"), ([0, -1, 0, 1], r"^y: row 2 holds")):
        np.savez(tmp_path / "a.npz", x=x, y=np.array(y))
        _rejected(tmp_path / "a.npz", out, match)
    (tmp_path / "t.csv").write_text("a,label\n1,0\n2,0.5\n")
    _rejected(tmp_path / "t.csv", out, r"^y: row 2 holds 0.5", label_column="label")
    _rejected(tmp_path / "t.csv", out, r"^label_column: 'lbl' is not a column", label_column="lbl")


def test_npz_entries_and_shapes(tmp_path, out):
    np.savez(tmp_path / "a.npz", x=np.ones((4, 2)), z=np.ones(4))
    _rejected(tmp_path / "a.npz", out, r"^file: unexpected entry 'z.npy'")
    np.savez(tmp_path / "a.npz", x=np.ones((4, 2)), y=np.ones(3))
    _rejected(tmp_path / "a.npz", out, r"^y: shape \(3,\) is not one label per row")
    pickled = io.BytesIO()
    with zipfile.ZipFile(pickled, "w") as zf:
        zf.writestr("x.npy", _npy_bytes(np.array([1, "a"], dtype=object)))
    (tmp_path / "b.npz").write_bytes(pickled.getvalue())
    _rejected(tmp_path / "b.npz", out, r"^x: dtype object is not numeric")
    np.savez_compressed(tmp_path / "c.npz", x=np.random.default_rng(0).normal(size=(20_000, 8)))
    raw = bytearray((tmp_path / "c.npz").read_bytes())
    raw[len(raw) // 2 : len(raw) // 2 + 64] = b"\xff" * 64  # damage the deflated data, not the zip directory
    (tmp_path / "c.npz").write_bytes(bytes(raw))
    _rejected(tmp_path / "c.npz", out, r"^file: not a readable .npz")


def _npz_with_method(path: Path, method: int) -> Path:
    with zipfile.ZipFile(path, "w", method) as zf:
        zf.writestr("x.npy", _npy_bytes(np.arange(12, dtype=np.float32).reshape(4, 3)))
    return path


@pytest.mark.parametrize("method", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_npz_entries_stored_or_deflated_are_read(tmp_path, out, method):
    found = _convert(_npz_with_method(tmp_path / "a.npz", method), out)
    assert (found.rows, found.columns, found.has_labels) == (4, 3, False)
    np.testing.assert_array_equal(np.load(found.files["x.npy"]), np.arange(12, dtype=np.float32).reshape(4, 3))


@pytest.mark.parametrize("method", [zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
def test_npz_entries_of_other_zip_methods_are_refused_naming_the_entry(tmp_path, out, method):
    _rejected(_npz_with_method(tmp_path / "a.npz", method), out, rf"^file: entry 'x.npy' .* zip method {method}")


def test_an_npz_directory_of_more_than_two_entries_is_refused_before_it_is_read(tmp_path, out):
    np.savez(tmp_path / "a.npz", x=np.ones((4, 2)), y=np.ones(4), z=np.ones(4))
    _rejected(tmp_path / "a.npz", out, r"^file: the .npz lists 3 entries in \d+ bytes")


def test_parquet_refusals(tmp_path, out):
    pq.write_table(pa.table({"a": [1.0, 2.0], "name": ["x", "y"]}), tmp_path / "s.parquet")
    _rejected(tmp_path / "s.parquet", out, r"^file: column 'name' has type string; every feature column")
    pq.write_table(pa.table({"a": [1.0, None, 3.0]}), tmp_path / "n.parquet")
    _rejected(tmp_path / "n.parquet", out, r"^file: column 'a' has empty \(null\) values")
    pq.write_table(pa.table({"a": [1.0, 2.0], "label": [0.0, 1.5]}), tmp_path / "l.parquet")
    _rejected(tmp_path / "l.parquet", out, r"^y: row 2 holds 1.5", label_column="label")


def test_size_declared_over_the_cap_is_refused_before_reading(tmp_path, out):
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (10**6, 100)})
    (tmp_path / "a.npy").write_bytes(header.getvalue() + b"\0" * 64)  # declares 400 MB, holds 64 bytes
    _rejected(tmp_path / "a.npy", out, r"^file: 1000000 rows x 100 columns would store 400000000 bytes", cap=1 << 20)
    x, _ = _data(rows=200, cols=8)
    (tmp_path / "t.csv").write_text("".join(",".join(map(repr, map(float, r))) + "\n" for r in x))
    _rejected(tmp_path / "t.csv", out, r"^file: 200 rows x 8 columns would store 6400 bytes", cap=6000)
    pq.write_table(pa.table({"a": np.arange(1000.0)}), tmp_path / "t.parquet")
    _rejected(tmp_path / "t.parquet", out, r"^file: 1000 rows x 1 columns would store 4000 bytes", cap=3999)
    path = _jsonl(tmp_path / "t.jsonl", [{"text": "a" * 1000}] * 50)  # tokens exceed the cap while converting
    _rejected(path, out, r"^file: more than 10000 bytes as stored", cap=10_000)


def test_too_many_rows_declared_is_refused_before_reading(tmp_path, out):
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|i1", "fortran_order": False, "shape": (2 * 10**9,)})
    (tmp_path / "a.npy").write_bytes(header.getvalue() + b"\0" * 16)
    _rejected(tmp_path / "a.npy", out, r"^x: 2000000000 rows and 1 columns exceed the limits \(1000000000 rows")


@pytest.mark.parametrize(("name", "fmt"), [("t.PQ", "parquet"), ("t.ndjson", "jsonl"), ("T.Csv", "csv")])
def test_other_extensions_name_the_same_formats(tmp_path, out, name, fmt):
    x, _ = _data(rows=3, cols=2)
    if fmt == "parquet":
        pq.write_table(pa.table({"a": x[:, 0], "b": x[:, 1]}), tmp_path / name)
    elif fmt == "csv":
        (tmp_path / name).write_text("a,b\n" + "".join(f"{float(a)!r},{float(b)!r}\n" for a, b in x))
    else:
        _jsonl(tmp_path / name, [{"text": "a"}, {"text": "b"}])
    assert _convert(tmp_path / name, out).format == fmt


def test_tokenizer_refusals(tmp_path, out):
    path = _jsonl(tmp_path / "t.jsonl", [{"text": "a"}, {"text": "b"}])
    bad = tmp_path / "tokenizer.json"
    bad.write_text('{"model": "not a model"}')
    _rejected(path, out, r"^tokenizer: not a tokenizer.json the tokenizers library can load", tokenizer=bad)
    bad.write_bytes(b"")
    _rejected(path, out, r"^tokenizer: the file is empty", tokenizer=bad)
    x, _ = _data()
    np.save(tmp_path / "a.npy", x)
    _rejected(tmp_path / "a.npy", out, r"^tokenizer: only for .jsonl", tokenizer=_tokenizer(tmp_path))
    _rejected(tmp_path / "a.npy", out, r"^label_column: only for .csv and .parquet", label_column="y")
