"""Hostile dataset files against real processes (PostgreSQL, Redis, an API process and one worker, default caps):
a tokenizer whose regular expression panics the tokenizers library is rejected by a worker that lives on (same pid,
one attempt) and validates the next dataset; a padding of two million ids changes nothing; a .npz entry whose v2
header declares 1 GiB and a Parquet file with one 512 MiB zstd page are refused by the API's one-shot upload and by
the worker, each process's peak RSS (VmHWM) rising by at most 128 MiB.

Every file is made here; the header bomb and the page really inflate (1 GiB of spaces, 512 MiB of zeros).
"""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import textwrap
import time
import uuid
import zlib

import httpx
import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.integration.test_hostile import vm, zip_of
from tests.stack import ROOT

MiB = 1024 * 1024
BOUND = 128 * MiB  # what a refused bomb may add to a process's peak RSS
VOCAB = {"[UNK]": 0, "hello": 1, "world": 2}
PANICKING_TOKENIZER = {  # 347 bytes: Oniguruma gives up on ^(a+)+b over 40 a's, and the library panics
    "version": "1.0",
    "truncation": None,
    "padding": None,
    "added_tokens": [],
    "normalizer": None,
    "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "^(a+)+b"}, "behavior": "Isolated", "invert": False},
    "post_processor": None,
    "decoder": None,
    "model": {"type": "WordLevel", "vocab": VOCAB, "unk_token": "[UNK]"},
}
PADDING = {
    "strategy": {"Fixed": 2_000_000},
    "direction": "Right",
    "pad_to_multiple_of": None,
    "pad_id": 0,
    "pad_type_id": 0,
    "pad_token": "[UNK]",
}


@pytest.fixture(scope="module")
def worker(stack, api):
    return stack.start_worker()


@pytest.fixture(scope="module")
def api_pid(stack, api) -> int:
    return next(p.pid for p in stack.procs if "api" in p.args)


@pytest.fixture(scope="module")
def http(stack, api):
    with httpx.Client(base_url=stack.api_url, timeout=300) as client:
        yield client


def settle(http: httpx.Client, dataset_id: str, worker, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert worker.poll() is None, f"the worker died (exit status {worker.returncode})"
        ds = http.get(f"/v1/datasets/{dataset_id}").json()
        if ds["status"] in ("ready", "rejected"):
            return ds
        time.sleep(0.1)
    raise TimeoutError(f"dataset {dataset_id} still {ds['status']}")


def resumable(http: httpx.Client, worker, filename: str, data: bytes, tokenizer: bytes | None = None) -> dict:
    """Upload ``data`` in one chunk (with its tokenizer.json) and wait for the worker's verdict."""
    up = http.post("/v1/datasets/uploads", json={"filename": filename, "size": len(data)})
    assert up.status_code == 201, up.text
    uid = up.json()["id"]
    if tokenizer is not None:
        assert http.put(f"/v1/datasets/uploads/{uid}/tokenizer", content=tokenizer).status_code == 204
    sent = http.patch(f"/v1/datasets/uploads/{uid}", content=data, headers={"Upload-Offset": "0"})
    assert sent.status_code == 200, sent.text
    assert http.post(f"/v1/datasets/uploads/{uid}/complete").status_code == 202
    return settle(http, up.json()["dataset_id"], worker)


def one_shot(http: httpx.Client, filename: str, data: bytes) -> httpx.Response:
    return http.post("/v1/datasets", files={"file": (filename, data)})


def peak_rise(pid: int, act):
    """(what ``act()`` returned, how far the process's peak RSS rose above its RSS before)."""
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")  # VmHWM restarts from the present RSS
    idle = vm(pid, "VmRSS")
    result = act()
    return result, vm(pid, "VmHWM") - idle


def jsonl(*texts: str) -> bytes:
    return "".join(json.dumps({"text": t}) + "\n" for t in texts).encode()


def npz_bytes(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def header_bomb(gib: int = 1) -> bytes:
    """A .npz of about 1 MB whose x.npy is a v2 header declaring ``gib`` GiB of header, which it then holds (spaces,
    deflated: a 1 MiB block compressed once and repeated after a full flush)."""
    n = gib * 1024 * MiB
    head = b"\x93NUMPY\x02\x00" + struct.pack("<I", n)
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = comp.compress(head) + comp.flush(zlib.Z_FULL_FLUSH)
    block = comp.compress(b" " * MiB) + comp.flush(zlib.Z_FULL_FLUSH)
    crc, spaces = zlib.crc32(head), b" " * MiB
    for _ in range(n // MiB):
        crc = zlib.crc32(spaces, crc)
    payload = first + block * (n // MiB) + comp.flush()
    assert len(zlib.decompressobj(-15).decompress(payload, 10 * MiB)) == 10 * MiB  # it really inflates
    return zip_of([("x.npy", payload, 8, crc, len(head) + n)])


@pytest.fixture(scope="module")
def page_bomb(tmp_path_factory) -> bytes:
    """A Parquet file of about 16 KB: one int64 column of 64 Mi zeros in one zstd page of 512 MiB. Its 256 MiB as
    float32 is within the one-shot cap, so only the page's size can refuse it. Written in a child process (the
    writer holds the column and the page: over 1 GiB), which also checks the one page."""
    path = tmp_path_factory.mktemp("bomb") / "page.parquet"
    script = f"""
        import numpy as np, pyarrow as pa, pyarrow.parquet as pq
        n = 64 << 20
        pq.write_table(pa.table({{"x": np.zeros(n, dtype=np.int64)}}), {str(path)!r}, compression="zstd",
                       use_dictionary=False, data_page_size=1 << 30, max_rows_per_page=n, row_group_size=n,
                       write_statistics=False)
        """
    subprocess.run([sys.executable, "-c", textwrap.dedent(script)], check=True, timeout=300, cwd=ROOT)
    column = pq.ParquetFile(path).metadata.row_group(0).column(0)
    assert column.total_uncompressed_size > 512 * MiB and path.stat().st_size < 64 * 1024
    return path.read_bytes()


@pytest.fixture(scope="module")
def warm(http, worker):
    """Every converter used once in both processes, so that what a bomb adds is not the imports."""
    good = {
        "warm.npz": npz_bytes(x=np.random.default_rng(0).normal(size=(64, 3)), y=np.arange(64) % 2),
        "warm.parquet": parquet_bytes(pa.table({"a": np.arange(64.0), "b": np.ones(64)})),
        "warm.jsonl": jsonl("hello", "world"),
    }
    for name, data in good.items():
        assert one_shot(http, name, data).status_code == 201
        assert resumable(http, worker, name, data)["status"] == "ready"


def attempts(pg_database, dataset_id: str) -> int:
    """How many times the dataset was claimed for validation (a worker that died would have made it two)."""
    with psycopg.connect(pg_database[1].replace("postgresql+psycopg://", "postgresql://")) as conn:
        row = conn.execute("SELECT validation_attempts FROM datasets WHERE id = %s", (uuid.UUID(dataset_id),))
        return row.fetchone()[0]


def test_a_tokenizer_that_panics_is_rejected_and_its_worker_lives_on(http, worker, stack, pg_database):
    tokenizer = json.dumps(PANICKING_TOKENIZER).encode()
    assert len(tokenizer) < 400  # the red team's was 355 bytes
    pid = worker.pid
    ds = resumable(http, worker, "bomb.jsonl", jsonl("a" * 40, "hello world"), tokenizer)
    assert ds["status"] == "rejected", ds
    assert ds["reason"].startswith("tokenizer: the tokenizers library failed (") and "retry-limit" in ds["reason"]
    assert ds["reason"].endswith("on lines 1 to 2"), ds["reason"]
    assert worker.poll() is None and worker.pid == pid and attempts(pg_database, ds["id"]) == 1
    log = (stack.log_dir / f"worker-{stack.procs.index(worker)}.log").read_text(errors="replace")
    assert f"dataset {ds['id']}: rejected (tokenizer:" in log  # this very process settled it
    good = {**PANICKING_TOKENIZER, "pre_tokenizer": {"type": "Whitespace"}}
    after = resumable(http, worker, "good.jsonl", jsonl("hello world", "world"), json.dumps(good).encode())
    assert after["status"] == "ready", after
    assert after["preview"]["token_length"]["tokens"] == 3 and worker.pid == pid


def test_a_padding_of_two_million_ids_adds_nothing(http, worker, warm):
    tokenizer = json.dumps({**PANICKING_TOKENIZER, "pre_tokenizer": {"type": "Whitespace"}, "padding": PADDING})
    data = jsonl(*["hello world"] * 8)
    ds, rise = peak_rise(worker.pid, lambda: resumable(http, worker, "pad.jsonl", data, tokenizer.encode()))
    print(f"\npadding 2,000,000: {len(data)} B of JSONL, worker peak RSS rise {rise / MiB:.1f} MiB")
    assert ds["status"] == "ready", ds
    assert ds["preview"]["token_length"]["tokens"] == 16 and ds["size"] < 4096
    assert rise < BOUND


@pytest.mark.parametrize("bomb", ["header", "page"])
def test_bombs_are_refused_by_the_api_and_the_worker_within_128_mib(http, worker, api_pid, warm, bomb, request):
    filename, data, words = (
        ("header.npz", header_bomb(), "x: the .npy header declares a length of 1073741824 bytes")
        if bomb == "header"
        else ("page.parquet", request.getfixturevalue("page_bomb"), "file: column 'x' has a page of 53687")
    )
    refused, api_rise = peak_rise(api_pid, lambda: one_shot(http, filename, data))
    ds, worker_rise = peak_rise(worker.pid, lambda: resumable(http, worker, filename, data))
    print(
        f"\n{bomb} bomb ({len(data)} B): API peak RSS rise {api_rise / MiB:.1f} MiB ({refused.status_code}), "
        f"worker {worker_rise / MiB:.1f} MiB ({ds['status']})"
    )
    assert refused.status_code == 422, refused.text
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert refused.json()["detail"].startswith(words), refused.json()
    assert ds["status"] == "rejected" and ds["reason"].startswith(words), ds
    assert api_rise < BOUND and worker_rise < BOUND, (api_rise / MiB, worker_rise / MiB)


def test_enormous_lines_stay_within_128_mib_of_the_api(http, api_pid, warm):
    """A JSON Lines text of one 16 MiB line converts; a 16 MiB line of ``{},`` (5.6 million dicts once parsed) and
    a CSV cell of 20 MiB are refused; the API's peak RSS rises by at most 128 MiB for each."""
    n = 16 * MiB - 64
    cases = {
        "text.jsonl": (b'{"text": "' + b"ab " * (n // 3) + b'"}\n{"text": "b"}\n', 201, None),
        "dicts.jsonl": (
            b'{"text": "a", "x": [' + b"{}," * (n // 3) + b'{}]}\n{"text": "b"}\n',
            422,
            "file: line 1 holds over 262144 bytes of JSON outside its strings",
        ),
        "cell.csv": (b"a,b\n1,2\n1," + b"9" * (20 * MiB) + b"\n3,4\n", 422, "file: a row is longer than 262144 bytes"),
    }
    rises = {}
    for name, (data, status, words) in cases.items():
        resp, rises[name] = peak_rise(api_pid, lambda name=name, data=data: one_shot(http, name, data))
        assert resp.status_code == status, (name, resp.text[:300])
        if words is not None:
            assert resp.json()["detail"].startswith(words), resp.json()
    print("\nAPI peak RSS rise (MiB): " + ", ".join(f"{k}: {v / MiB:.1f}" for k, v in rises.items()))
    assert max(rises.values()) < BOUND, {k: v / MiB for k, v in rises.items()}
