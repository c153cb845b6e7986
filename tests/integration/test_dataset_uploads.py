"""Resumable dataset uploads against real processes (PostgreSQL, Redis, the API and a worker, directory store):
chunks streamed into the store, resumed after the client or the API process died, validated by the worker into
ready or rejected datasets, and jobs refused (422) on a dataset that is not ready; Parquet and JSON Lines text
(with a tokenizer.json) uploads whose previews match what the test wrote, trained on by momentum_accumulation; a
2 GiB upload with the API process's peak memory measured."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from tests.stack import wait_job

MiB = 1024 * 1024
GiB = 1024 * MiB
SETTLED = ("ready", "rejected")


@pytest.fixture(scope="module")
def worker(stack, api):
    return stack.start_worker()


@pytest.fixture
def http(stack):
    """A client of the stack's current API process (a test may replace it)."""
    with httpx.Client(base_url=stack.api_url, timeout=120) as client:
        yield client


def npz_bytes(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def npy_size(array: np.ndarray) -> int:
    buf = io.BytesIO()
    np.save(buf, array)
    return len(buf.getvalue())


def start(http: httpx.Client, filename: str, size: int, **extra) -> dict:
    resp = http.post("/v1/datasets/uploads", json={"filename": filename, "size": size, **extra})
    assert resp.status_code == 201, resp.text
    return resp.json()


def patch(http: httpx.Client, upload_id: str, offset: int, content) -> httpx.Response:
    return http.patch(f"/v1/datasets/uploads/{upload_id}", content=content, headers={"Upload-Offset": str(offset)})


def offset_of(http: httpx.Client, upload_id: str) -> int:
    resp = http.head(f"/v1/datasets/uploads/{upload_id}")
    assert resp.status_code == 200
    return int(resp.headers["Upload-Offset"])


def settle(http: httpx.Client, dataset_id: str, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ds = http.get(f"/v1/datasets/{dataset_id}").json()
        if ds["status"] in SETTLED:
            return ds
        time.sleep(0.1)
    raise TimeoutError(f"dataset {dataset_id} still {ds['status']}")


def upload_all(http: httpx.Client, filename: str, data: bytes, chunk: int = MiB, **extra) -> dict:
    up = start(http, filename, len(data), **extra)
    for at in range(0, len(data), chunk):
        assert patch(http, up["id"], at, data[at : at + chunk]).json()["offset"] == min(at + chunk, len(data))
    done = http.post(f"/v1/datasets/uploads/{up['id']}/complete")
    assert done.status_code == 202, done.text
    return up


def parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def facts(ds: dict) -> tuple:
    return ds["kind"], ds["format"], ds["rows"], ds["columns"], ds["has_labels"]


def momentum_on(http: httpx.Client, dataset_id: str, **params) -> dict:
    """A short momentum_accumulation job on the dataset, run to its end."""
    spec = {"dataset": dataset_id, "steps": 8, "seeds": 1, "eval_every": 4, "arms": ["chi_exact"], **params}
    job = http.post("/v1/jobs", json={"kind": "momentum_accumulation", "params": spec})
    assert job.status_code == 201, job.text
    return wait_job(http, job.json()["id"], timeout=300)


def job_on(http: httpx.Client, dataset_id: str, steps: int = 2) -> httpx.Response:
    example = http.get("/v1/kinds/gradient_penalty_bound").json()["example"]
    params = {**example["params"], "dataset": dataset_id, "steps": steps, "every": 1, "samples": 4}
    return http.post("/v1/jobs", json={**example, "params": params})


def test_a_chunked_upload_becomes_a_ready_dataset_that_a_job_trains_on(http, worker):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(300, 4)), np.arange(300) % 3
    data = npz_bytes(x=x, y=y)
    sha = hashlib.sha256(data).hexdigest()
    up = start(http, "train.npz", len(data), sha256=sha)
    assert (up["offset"], up["size"]) == (0, len(data))

    wrong = patch(http, up["id"], 10, b"abc")
    assert wrong.status_code == 409 and wrong.headers["Upload-Offset"] == "0"
    half = len(data) // 2
    assert patch(http, up["id"], 0, data[:half]).json()["offset"] == half
    assert offset_of(http, up["id"]) == half
    early = http.post(f"/v1/datasets/uploads/{up['id']}/complete")
    assert early.status_code == 409 and early.headers["Upload-Offset"] == str(half)
    over = patch(http, up["id"], half, data[half:] + b"!")
    assert over.status_code == 413 and "declared size" in over.json()["detail"]
    resumed = offset_of(http, up["id"])  # the directory store kept what arrived before the cap
    assert half <= resumed <= len(data)
    if resumed < len(data):
        patch(http, up["id"], resumed, data[resumed:])
    done = http.post(f"/v1/datasets/uploads/{up['id']}/complete")
    assert done.status_code == 202 and done.json()["status"] in ("validating", "ready")

    ds = settle(http, up["dataset_id"])
    assert ds["status"] == "ready", ds
    assert (ds["kind"], ds["format"], ds["rows"], ds["columns"], ds["has_labels"]) == ("arrays", "npz", 300, 4, True)
    assert ds["sha256"] == sha and ds["upload_size"] == len(data)
    assert ds["size"] == npy_size(x.astype("<f4")) + npy_size(y.astype("<i8"))
    assert ds["preview"]["label_balance"] == {"0": 100, "1": 100, "2": 100}
    again = http.post(f"/v1/datasets/uploads/{up['id']}/complete")  # the session ended with the validation
    assert again.status_code == 404

    job = job_on(http, ds["id"])
    assert job.status_code == 201, job.text
    finished = wait_job(http, job.json()["id"], timeout=300)
    assert finished["status"] == "succeeded", finished


def test_malformed_uploads_are_rejected_with_the_reason_and_jobs_on_them_are_422(http, worker):
    up = upload_all(http, "bad.csv", b"a,b\n1,oops\n2,3\n")
    ds = settle(http, up["dataset_id"])
    assert ds["status"] == "rejected" and ds["reason"].startswith("file: ") and "oops" in ds["reason"], ds
    refused = job_on(http, ds["id"])
    assert refused.status_code == 422
    body = refused.json()
    assert body["errors"][0]["field"] == "params.dataset" and f"rejected: {ds['reason']}" in body["detail"]
    base = {**http.get("/v1/kinds/gradient_penalty_bound").json()["example"]["params"], "dataset": ds["id"], "every": 1}
    study = http.post(
        "/v1/studies", json={"kind": "gradient_penalty_bound", "base": base, "grid": {"steps": [2, 3]}, "seeds": [0]}
    )
    assert study.status_code == 422 and study.json()["errors"][0]["field"] == "base.dataset", study.text

    data = npz_bytes(x=np.ones((4, 2)))
    up = upload_all(http, "a.npz", data, sha256=hashlib.sha256(b"something else").hexdigest())
    ds = settle(http, up["dataset_id"])
    assert ds["status"] == "rejected" and ds["reason"].startswith("sha256: the upload's bytes hash to")

    bad_name = http.post("/v1/datasets/uploads", json={"filename": "a.exe", "size": 3})
    assert bad_name.status_code == 422 and bad_name.json()["errors"][0]["field"] == "filename"
    nul = http.post("/v1/datasets/uploads", json={"filename": "a.csv", "size": 3, "label_column": "b\x00"})
    assert nul.status_code == 422 and nul.json()["errors"][0]["field"] == "label_column"
    too_big = http.post("/v1/datasets/uploads", json={"filename": "a.csv", "size": 9 * GiB})
    assert too_big.status_code == 413 and too_big.json()["detail"].startswith("size:")


def test_a_job_on_a_validating_dataset_is_422_until_it_is_ready(http, worker):
    up = start(http, "wait.npz", len(data := npz_bytes(x=np.ones((8, 3)), y=np.arange(8) % 2)))
    patch(http, up["id"], 0, data)
    os.kill(worker.pid, signal.SIGSTOP)  # nothing validates until it continues
    try:
        assert http.post(f"/v1/datasets/uploads/{up['id']}/complete").json()["status"] == "validating"
        refused = job_on(http, up["dataset_id"])
        assert refused.status_code == 422, refused.text
        assert refused.json()["errors"][0]["field"] == "params.dataset"
        assert "is not ready yet (validating)" in refused.json()["detail"]
    finally:
        os.kill(worker.pid, signal.SIGCONT)
    assert settle(http, up["dataset_id"])["status"] == "ready"
    accepted = job_on(http, up["dataset_id"])
    assert accepted.status_code == 201
    http.post(f"/v1/jobs/{accepted.json()['id']}/cancel")


def vm(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def _file_blocks(path: Path, start: int, length: int):
    with open(path, "rb") as fh:
        fh.seek(start)
        left = length
        while left and (block := fh.read(min(MiB, left))):
            left -= len(block)
            yield block


def test_a_2_gib_upload_streams_with_the_api_peak_memory_a_few_mib(http, worker, stack, tmp_path):
    big = tmp_path / "big.csv"
    with open(big, "wb") as fh:
        fh.truncate(2 * GiB)  # sparse: written in no time, read back as zeros
    api_pid = next(p.pid for p in reversed(stack.procs) if "api" in p.args and p.poll() is None)
    up = start(http, "big.csv", 2 * GiB)
    chunk = up["max_chunk_bytes"]
    patch(http, up["id"], 0, b"warm")  # every code path once before the peak is reset
    with open(f"/proc/{api_pid}/clear_refs", "w") as f:
        f.write("5")  # VmHWM restarts from the present RSS
    idle = vm(api_pid, "VmRSS")
    t0, offset = time.monotonic(), 4
    while offset < 2 * GiB:
        resp = patch(http, up["id"], offset, _file_blocks(big, offset, min(chunk, 2 * GiB - offset)))
        assert resp.status_code == 200, resp.text
        offset = resp.json()["offset"]
    seconds = time.monotonic() - t0
    rise = vm(api_pid, "VmHWM") - idle
    print(f"\n2 GiB in {seconds:.1f} s ({2 * GiB / MiB / seconds:.0f} MiB/s); API peak RSS rise {rise / MiB:.1f} MiB")
    assert rise < 16 * MiB, rise / MiB
    assert http.post(f"/v1/datasets/uploads/{up['id']}/complete").status_code == 202
    ds = settle(http, up["dataset_id"], timeout=600)
    # the validation read the whole upload (its hash of 2 GiB of zeros) and refused the content
    assert ds["status"] == "rejected" and ds["reason"].startswith("file:"), ds


def test_an_upload_resumes_after_the_client_and_after_the_api_process_died(http, worker, stack):
    data = npz_bytes(x=np.random.default_rng(3).normal(size=(100_000, 30)).astype("<f4"))  # 12 MB
    sha = hashlib.sha256(data).hexdigest()
    up = start(http, "resume.npz", len(data), sha256=sha)
    assert patch(http, up["id"], 0, data[: 4 * MiB]).json()["offset"] == 4 * MiB

    def dies_midway():  # the client stops mid-chunk: its connection drops
        yield data[4 * MiB : 6 * MiB]
        raise ConnectionError("client killed")

    with pytest.raises(ConnectionError), httpx.Client(base_url=stack.api_url, timeout=60) as doomed:
        patch(doomed, up["id"], 4 * MiB, dies_midway())  # leaving the block closes its socket, as an exit would
    deadline = time.monotonic() + 60
    while _holder(http, up["id"]) and time.monotonic() < deadline:
        time.sleep(0.05)  # until the API has seen the connection close (it then lets go of the upload)
    after_client = offset_of(http, up["id"])
    assert 4 * MiB <= after_client <= 6 * MiB

    # the API process is killed while a chunk streams in
    writing, release = threading.Event(), threading.Event()

    def slow():
        for at in range(after_client, len(data), MiB):
            yield data[at : at + MiB]
            if at >= after_client + 2 * MiB:
                writing.set()
                release.wait(60)
                return

    api = next(p for p in reversed(stack.procs) if "api" in p.args and p.poll() is None)
    sender = threading.Thread(target=lambda: _quietly(patch, http, up["id"], after_client, slow()))
    sender.start()
    assert writing.wait(60)
    deadline = time.monotonic() + 60
    with httpx.Client(base_url=stack.api_url, timeout=10) as probe:
        while offset_of(probe, up["id"]) <= after_client and time.monotonic() < deadline:
            time.sleep(0.05)  # until the store holds some of this chunk
    os.killpg(api.pid, signal.SIGKILL)
    api.wait()
    release.set()
    sender.join(60)

    stack.start_api()
    with httpx.Client(base_url=stack.api_url, timeout=120) as fresh:
        offset = offset_of(fresh, up["id"])
        assert offset > after_client
        while offset < len(data):
            offset = patch(fresh, up["id"], offset, data[offset : offset + 4 * MiB]).json()["offset"]
        assert fresh.post(f"/v1/datasets/uploads/{up['id']}/complete").status_code == 202
        ds = settle(fresh, up["dataset_id"])
    assert ds["status"] == "ready", ds
    assert ds["sha256"] == sha and (ds["rows"], ds["columns"]) == (100_000, 30)


def _holder(http: httpx.Client, upload_id: str) -> bool:
    """Whether a request still appends to the upload (an empty append is refused with 409 while one does)."""
    probe = patch(http, upload_id, offset_of(http, upload_id), b"")
    return probe.status_code == 409 and "another request" in probe.json()["detail"]


def _quietly(fn, *args):
    try:
        fn(*args)
    except httpx.HTTPError:
        pass  # the API process was killed under it


def test_a_tokenizer_goes_with_json_lines_text_only_and_is_capped(http, worker):
    csv = start(http, "t.csv", 4)
    refused = http.put(f"/v1/datasets/uploads/{csv['id']}/tokenizer", content=b"{}")
    assert refused.status_code == 422 and refused.json()["errors"][0]["field"] == "tokenizer"
    text = b'{"text": "hello"}\n{"text": "world"}\n'
    up = start(http, "t.jsonl", len(text))
    assert http.put(f"/v1/datasets/uploads/{up['id']}/tokenizer", content=b'{"model": {}}').status_code == 204
    big = http.put(f"/v1/datasets/uploads/{up['id']}/tokenizer", content=bytes(16 * MiB + 1))
    assert big.status_code == 413, big.text
    patch(http, up["id"], 0, text)
    assert http.post(f"/v1/datasets/uploads/{up['id']}/complete").status_code == 202
    assert settle(http, up["dataset_id"])["status"] in ("ready", "rejected")  # the converter judges the tokenizer
    assert http.delete(f"/v1/datasets/uploads/{csv['id']}").status_code == 204  # given up: row and bytes gone
    assert http.get(f"/v1/datasets/{csv['dataset_id']}").status_code == 404


def test_a_parquet_upload_is_ready_with_its_preview_and_trained_on(http, worker):
    rng = np.random.default_rng(7)
    x = rng.normal(size=(240, 5)).astype(np.float32)
    y = rng.integers(0, 3, size=240)
    names = [f"f{i}" for i in range(5)]
    data = parquet_bytes(pa.table({**{n: x[:, i] for i, n in enumerate(names)}, "label": y}))
    up = upload_all(http, "train.parquet", data, chunk=len(data) // 3 + 1, label_column="label")
    ds = settle(http, up["dataset_id"])
    assert ds["status"] == "ready", ds
    assert (ds["kind"], ds["format"], ds["rows"], ds["columns"], ds["has_labels"]) == (
        "arrays",
        "parquet",
        240,
        5,
        True,
    )
    preview = ds["preview"]
    assert preview["rows"] == 240 and preview["shape"] == [240, 5]
    assert [c["name"] for c in preview["columns"]] == names
    assert preview["label_balance"] == {str(k): int(n) for k, n in enumerate(np.bincount(y)) if n}
    np.testing.assert_allclose([c["mean"] for c in preview["stats"]], x.astype(np.float64).mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose([c["std"] for c in preview["stats"]], x.astype(np.float64).std(axis=0), rtol=1e-6)
    assert [r["y"] for r in preview["sample_rows"]] == y[:5].tolist()
    np.testing.assert_array_equal([r["x"] for r in preview["sample_rows"]], x[:5])

    done = momentum_on(http, ds["id"], hidden=8, micro_batch=8, accum_steps=2)
    assert done["status"] == "succeeded", done
    assert done["result"]["arms"]["chi_exact"]["final_heldout_accuracy_mean"] is not None


def test_json_lines_text_with_a_tokenizer_is_ready_and_a_token_model_trains_on_it(http, worker, tmp_path):
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "far"]
    tokenizer = Tokenizer(models.WordLevel({"[UNK]": 0, **{w: i + 1 for i, w in enumerate(words)}}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    texts = [" ".join(words[(i + j) % len(words)] for j in range(3 + i % 6)) for i in range(150)]
    data = b"".join(json.dumps({"text": t}).encode() + b"\n" for t in texts)
    up = start(http, "corpus.jsonl", len(data))
    tok = http.put(f"/v1/datasets/uploads/{up['id']}/tokenizer", content=(tmp_path / "tokenizer.json").read_bytes())
    assert tok.status_code == 204, tok.text
    assert patch(http, up["id"], 0, data).json()["offset"] == len(data)
    assert http.post(f"/v1/datasets/uploads/{up['id']}/complete").status_code == 202
    ds = settle(http, up["dataset_id"])
    assert ds["status"] == "ready", ds
    assert (ds["kind"], ds["format"], ds["rows"], ds["columns"], ds["has_labels"]) == (
        "text",
        "jsonl",
        150,
        None,
        False,
    )
    preview = ds["preview"]
    assert (preview["tokenizer"], preview["vocab_size"]) == ("tokenizer.json", len(words) + 1)
    lengths = np.array([len(Tokenizer.from_file(str(tmp_path / "tokenizer.json")).encode(t).ids) for t in texts])
    assert lengths.tolist() == [3 + i % 6 for i in range(150)]  # the tokenizer's words, not the texts' bytes
    stats = preview["token_length"]
    assert (stats["tokens"], stats["min"], stats["max"]) == (int(lengths.sum()), 3, 8)
    assert stats["mean"] == pytest.approx(lengths.mean()) and stats["std"] == pytest.approx(lengths.std())
    assert [r["text"] for r in preview["sample_rows"]] == texts[:5]

    model = {"source": "builtin", "arch": "causal_lm", "hidden": 16, "heads": 2, "depth": 1, "vocab_size": 16}
    done = momentum_on(http, ds["id"], model={**model, "context": 8}, optimizer="adam", lr=0.01, micro_batch=4)
    assert done["status"] == "succeeded", done


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda data: data[:-4], "file: not a Parquet file (no PAR1 magic)"),
        (
            lambda data: parquet_bytes(pa.table({"a": [1.0, 2.0, 3.0], "name": ["x", "y", "z"]})),
            "file: column 'name' has type string; every feature column must be numeric",
        ),
    ],
    ids=["truncated", "text column"],
)
def test_a_malformed_parquet_upload_is_rejected_with_the_reason(http, worker, damage, reason):
    good = parquet_bytes(pa.table({"a": np.arange(10.0), "b": np.arange(10.0)}))
    up = upload_all(http, "bad.parquet", damage(good))
    ds = settle(http, up["dataset_id"])
    assert ds["status"] == "rejected" and ds["reason"].startswith(reason), ds
    assert ds["preview"] is None and ds["kind"] is None


def test_a_dataset_is_deleted_with_its_bytes_but_not_while_a_job_uses_it(http, worker, stack):
    blobs = Path(stack.env["GRADLAB_DATA_DIR"]) / "blobs"
    rng = np.random.default_rng(3)
    up = upload_all(http, "del.npz", npz_bytes(x=rng.normal(size=(200, 4)), y=np.arange(200) % 2))
    ds = settle(http, up["dataset_id"])
    assert ds["status"] == "ready" and sorted(p.name for p in (blobs / "datasets" / ds["id"]).iterdir())
    job = job_on(http, ds["id"], steps=150)  # queued or running while the delete is tried
    assert job.status_code == 201, job.text
    refused = http.delete(f"/v1/datasets/{ds['id']}")
    assert refused.status_code == 409 and job.json()["id"] in refused.json()["detail"], refused.text
    assert http.post(f"/v1/jobs/{job.json()['id']}/cancel").status_code == 200
    wait_job(http, job.json()["id"], timeout=120)
    assert http.delete(f"/v1/datasets/{ds['id']}").status_code == 204
    assert not (blobs / "datasets" / ds["id"]).exists()
    assert http.get(f"/v1/datasets/{ds['id']}").status_code == 404
    assert http.delete(f"/v1/datasets/{ds['id']}").status_code == 404

    interrupted = start(http, "half.npy", 100)  # an upload given up half-way: listed as uploading, deleted whole
    assert patch(http, interrupted["id"], 0, b"x" * 50).status_code == 200
    assert http.delete(f"/v1/datasets/{interrupted['dataset_id']}").status_code == 204
    assert not (blobs / "uploads" / interrupted["id"]).exists()
    assert http.head(f"/v1/datasets/uploads/{interrupted['id']}").status_code == 404
