"""Each upload format converts to the canonical files with values equal to the source's, and each malformed upload
is refused with the field and the reason; previews are checked against statistics computed here with numpy."""

from __future__ import annotations

import io
import json
import struct
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
        ("a.npy", b"\x93NUMPY\x01\x00\x07\x00garbage", r"^x: not a readable .npy header"),
        ("a.npy", b"\x93NUMPY\x01\x00garbage", r"^x: the .npy header declares a length of 24935 bytes"),
        ("a.npy", b"\x93NUMPY\x01\x00\x09\x00{}", r"^x: the .npy ends inside its header"),
        ("a.npy", b"\x93NUMPY\x04\x00\x09\x00{}", r"^x: .npy format version 4.0"),
        ("a.npy", b"\x93NUMPX\x01\x00\x09\x00{}", r"^x: not a .npy array"),
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


# --- hostile files: tokenizers, headers, pages, lines ---------------------------------------------------------------


def _tokenizer_json(tmp_path, **parts) -> Path:
    """A WordLevel tokenizer.json written field by field (the sizes and settings a test needs)."""
    spec = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [],
        "normalizer": None,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": None,
        "decoder": None,
        "model": {"type": "WordLevel", "vocab": VOCAB, "unk_token": "[UNK]"},
        **parts,
    }
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(spec))
    return path


def _split(pattern: str) -> dict:
    return {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False}


def test_a_tokenizer_whose_regex_panics_is_refused_naming_it(tmp_path, out):
    """``^(a+)+b`` on 40 a's: Oniguruma passes its retry limit and the library panics (a BaseException), in the
    tokenizer's own process; the conversion is refused and this process goes on."""
    tok = _tokenizer_json(tmp_path, pre_tokenizer=_split("^(a+)+b"))
    assert tok.stat().st_size < 400
    path = _jsonl(tmp_path / "t.jsonl", [{"text": "a" * 40}, {"text": "hello"}])
    match = r"^tokenizer: the tokenizers library failed \(.*retry-limit.*\) on lines 1 to 2"
    _rejected(path, out, match, tokenizer=tok)


def test_padding_truncation_and_post_processor_do_not_change_the_ids(tmp_path, out):
    """A padding of two million ids, a truncation to one id and a template adding [CLS]: rows are stored whole and
    without special tokens, so the ids are the words' own."""
    tok = _tokenizer_json(
        tmp_path,
        padding={
            "strategy": {"Fixed": 2_000_000},
            "direction": "Right",
            "pad_to_multiple_of": None,
            "pad_id": 0,
            "pad_type_id": 0,
            "pad_token": "[UNK]",
        },
        truncation={"direction": "Right", "max_length": 1, "strategy": "LongestFirst", "stride": 0},
        post_processor={
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "[UNK]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"[UNK]": {"id": "[UNK]", "ids": [0], "tokens": ["[UNK]"]}},
        },
    )
    path = _jsonl(tmp_path / "t.jsonl", [{"text": "hello world"}, {"text": "the cat the"}] * 5)
    ins = _convert(path, out, tokenizer=tok)
    assert _rows(ins) == [[1, 2], [3, 4, 3]] * 5
    assert ins.preview["token_length"]["tokens"] == 25


def test_many_batches_through_the_tokenizer_process_keep_every_id(tmp_path, out):
    tok = Tokenizer(models.WordLevel(VOCAB, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split(r"\s+|(?=[tc])", behavior="removed")
    tok.save(str(tmp_path / "tokenizer.json"))
    rng = np.random.default_rng(5)
    words = np.array(["hello", "world", "the", "cat", "dog"])
    texts = [" ".join(rng.choice(words, size=int(rng.integers(1, 40)))) for _ in range(3000)]  # three batches
    path = _jsonl(tmp_path / "t.jsonl", [{"text": t} for t in texts])
    ins = _convert(path, out, tokenizer=tmp_path / "tokenizer.json")
    assert _rows(ins) == [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]


def test_a_tokenizer_over_its_memory_is_refused(tmp_path, out, monkeypatch):
    """A Replace normalizer that turns each 'a' into 1 MB: 5,000 a's would be 5 GB."""
    from core.data.formats import tokenizer_process

    monkeypatch.setattr(tokenizer_process, "MEMORY_BYTES", 256 << 20)
    tok = _tokenizer_json(tmp_path, normalizer={"type": "Replace", "pattern": {"String": "a"}, "content": "b" * 10**6})
    path = _jsonl(tmp_path / "t.jsonl", [{"text": "a" * 5000}, {"text": "hello"}])
    _rejected(path, out, r"^tokenizer: needed more than 268435456 bytes of memory on lines 1 to 2", tokenizer=tok)


def test_a_tokenizer_over_its_cpu_time_is_refused(tmp_path, out, monkeypatch):
    """``a*a*a*\\s`` on 3,000 a's backtracks cubically without reaching Oniguruma's retry limit: minutes of CPU,
    ended by the batch's CPU-time limit (made 1 s here)."""
    from core.data.formats import tokenizer_process

    monkeypatch.setattr(tokenizer_process, "BATCH_CPU_S", 1)
    monkeypatch.setattr(tokenizer_process, "CPU_S_PER_MIB", 0)
    monkeypatch.setattr(tokenizer_process, "WALL_FACTOR", 300)  # a busy machine: the CPU limit is what ends it
    tok = _tokenizer_json(tmp_path, pre_tokenizer=_split(r"a*a*a*\s"))
    path = _jsonl(tmp_path / "t.jsonl", [{"text": "a" * 3000}, {"text": "hello"}])
    _rejected(path, out, r"^tokenizer: took more than 1 s of CPU time on lines 1 to 2", tokenizer=tok)


def test_a_library_panic_in_this_process_is_the_files_fault(tmp_path, out, monkeypatch):
    """The guard around every converter: a real pyo3 PanicException (caught here from the tokenizers library)
    raised by the CSV converter becomes a refusal; KeyboardInterrupt and SystemExit stay the process's own."""
    bomb = Tokenizer.from_str(_tokenizer_json(tmp_path, pre_tokenizer=_split("^(a+)+b")).read_text())
    with pytest.raises(BaseException) as caught:  # noqa: PT011 (the class is pyo3's, not importable)
        bomb.encode("a" * 40)
    assert not isinstance(caught.value, Exception)
    from core.data.formats import tabular

    (tmp_path / "t.csv").write_text("a,b\n1,2\n3,4\n")
    for raised, outcome in ((caught.value, UploadRejected), (KeyboardInterrupt(), KeyboardInterrupt)):

        def panics(*args, raised=raised):
            raise raised

        monkeypatch.setattr(tabular, "convert_csv", panics)
        with pytest.raises(outcome) as got:
            _convert(tmp_path / "t.csv", out)
        if outcome is UploadRejected:
            assert str(got.value).startswith("file: the csv reader failed on it (") and "retry-limit" in str(got.value)


def _npy_header(version: tuple[int, int], declared: int) -> bytes:
    length = struct.pack("<H" if version == (1, 0) else "<I", declared)
    return b"\x93NUMPY" + bytes(version) + length


@pytest.mark.parametrize("version", [(1, 0), (2, 0), (3, 0)])
def test_npy_versions_convert_and_their_declared_header_length_is_capped(tmp_path, out, version):
    x, _ = _data()
    with open(tmp_path / "a.npy", "wb") as fh:
        np.lib.format.write_array(fh, x, version=version)
    _check_arrays(_convert(tmp_path / "a.npy", out), x)
    for f in out.iterdir():
        f.unlink()
    declared = 60_000 if version == (1, 0) else 1 << 30
    (tmp_path / "b.npy").write_bytes(_npy_header(version, declared) + b" " * 9000)
    _rejected(tmp_path / "b.npy", out, rf"^x: the .npy header declares a length of {declared} bytes \(at most 8192")
    with zipfile.ZipFile(tmp_path / "b.npz", "w", zipfile.ZIP_DEFLATED) as zf:  # 1 GiB declared in a small entry
        zf.writestr("x.npy", _npy_header(version, declared) + b" " * 100_000)
    _rejected(tmp_path / "b.npz", out, rf"^x: the .npy header declares a length of {declared} bytes")


def _parquet_pages(path: Path, columns: dict, rows_per_page: int, **kw) -> Path:
    pq.write_table(
        pa.table(columns),
        path,
        compression="zstd",
        use_dictionary=False,
        data_page_size=1 << 30,
        max_rows_per_page=rows_per_page,
        row_group_size=rows_per_page,
        write_statistics=False,
        **kw,
    )
    return path


def test_a_parquet_page_over_the_cap_is_refused_before_it_is_read(tmp_path, out):
    """40 MiB of zeros in one zstd page: a file of a few KB whose one page is over the 32 MiB a page may hold."""
    n = 5 << 20
    path = _parquet_pages(tmp_path / "p.parquet", {"x": np.zeros(n)}, n)
    assert path.stat().st_size < 64 * 1024
    match = r"^file: column 'x' has a page of 4194\d{4} bytes uncompressed \(\d+ compressed\) in row group 0"
    _rejected(path, out, match, cap=1 << 30)


def test_the_pages_a_row_group_holds_at_once_are_capped(tmp_path, out, monkeypatch):
    from core.data.formats import parquet_pages

    monkeypatch.setattr(parquet_pages, "MAX_HELD_BYTES", 1 << 20)
    x = np.random.default_rng(0).normal(size=(40_000, 4))
    path = _parquet_pages(tmp_path / "p.parquet", {f"c{i}": x[:, i] for i in range(4)}, 40_000)  # 320 KB pages
    _rejected(path, out, r"^file: row group 0 holds 128\d{4} bytes of pages at once across its 4 columns \(column 'c")


@pytest.mark.parametrize(
    "options",
    [
        {"data_page_version": "2.0", "write_page_index": True, "write_page_checksum": True},
        {"compression": "snappy", "use_dictionary": True, "write_statistics": True, "dictionary_pagesize_limit": 4096},
        {"compression": "gzip", "column_encoding": {"i": "DELTA_BINARY_PACKED", "f": "BYTE_STREAM_SPLIT"}},
    ],
)
def test_pages_of_every_kind_are_walked_and_the_file_converts(tmp_path, out, options):
    x, y = _data(rows=20_000)
    columns = {"f": x[:, 0], "i": np.arange(20_000), "label": y}
    kw = {"compression": "zstd", "use_dictionary": False, "data_page_size": 8192, **options}
    pq.write_table(pa.table(columns), tmp_path / "t.parquet", row_group_size=7000, **kw)
    ins = _convert(tmp_path / "t.parquet", out, label_column="label")
    _check_arrays(ins, np.column_stack([x[:, 0], np.arange(20_000)]), y)


def test_a_corrupt_page_header_is_refused(tmp_path, out):
    pq.write_table(pa.table({"a": np.arange(100.0)}), tmp_path / "t.parquet", use_dictionary=False)
    data = bytearray((tmp_path / "t.parquet").read_bytes())
    start = pq.ParquetFile(tmp_path / "t.parquet").metadata.row_group(0).column(0).data_page_offset
    data[start : start + 8] = b"\x0f" * 8  # field headers of an unknown Thrift type
    (tmp_path / "t.parquet").write_bytes(bytes(data))
    _rejected(tmp_path / "t.parquet", out, rf"^file: not a readable Parquet file \(page header at byte {start}: ")


def test_a_jsonl_line_of_json_structure_is_refused_and_a_long_text_is_not(tmp_path, out):
    """300 KB of ``{},`` would be 100,000 dicts (a 16 MiB line, 5.6 million: over 400 MiB); a text of 1 MB with
    quotes and backslashes in it has a few bytes of JSON outside its string."""
    path = tmp_path / "s.jsonl"
    path.write_bytes(b'{"text": "a", "x": [' + b"{}," * 100_000 + b'{}]}\n{"text": "b"}\n')
    _rejected(path, out, r"^file: line 1 holds over 262144 bytes of JSON outside its strings")
    path.write_bytes(b'{"text": "' + b'\\"' * 4_000_000 + b"\n")  # unterminated: one pass, not one per quote
    _rejected(path, out, r"^file: line 1 holds over 262144 bytes of JSON outside its strings")
    text = 'she said "\\" and \\\\ and }{ ' * 40_000
    ins = _convert(_jsonl(tmp_path / "t.jsonl", [{"text": text, "n": [1, 2]}, {"text": "b"}]), out)
    assert _rows(ins)[0] == list(text.encode())


def test_a_csv_row_longer_than_a_block_and_a_first_row_of_too_many_cells_are_refused(tmp_path, out):
    (tmp_path / "a.csv").write_bytes(b"a,b\n1,2\n1," + b"9" * (1 << 20) + b"\n3,4\n")
    _rejected(tmp_path / "a.csv", out, r"^file: a row is longer than 262144 bytes \(after data row 1\)")
    (tmp_path / "b.csv").write_bytes(b"1," * 70_000 + b"1\n" + b"1," * 70_000 + b"1\n")
    _rejected(tmp_path / "b.csv", out, r"^file: the first row has 70001 cells \(at most 65536\)")
