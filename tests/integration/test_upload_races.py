"""Resumable dataset uploads raced and abused against real processes (PostgreSQL, Redis, an API process and, for the
validations, a worker; directory store): a chunk or a tokenizer held open while the upload is given up or completed
under it, an upload past its expiry before the sweeper has run, a tenant's cap on open uploads, a size sent as a
string, chunks past the declared size or the chunk cap. The races are made deterministic: the request's body stops
half-way until the other request has answered."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

MiB = 1024 * 1024
CHUNK_CAP = 2 * MiB
MAX_OPEN = 6


@pytest.fixture(scope="module")
def service_env(service_env):
    return {
        **service_env,
        "GRADLAB_MAX_UPLOAD_CHUNK_BYTES": str(CHUNK_CAP),
        "GRADLAB_MAX_OPEN_UPLOADS_PER_TENANT": str(MAX_OPEN),
        "GRADLAB_MAX_OPEN_UPLOAD_BYTES_PER_TENANT": str(64 * MiB),
    }


@pytest.fixture(scope="module")
def blobs_dir(service_env) -> Path:
    return Path(service_env["GRADLAB_DATA_DIR"]) / "blobs"


@pytest.fixture
def http(stack, api):
    with httpx.Client(base_url=stack.api_url, timeout=60) as client:
        yield client


def start(http: httpx.Client, filename: str, size: int) -> dict:
    resp = http.post("/v1/datasets/uploads", json={"filename": filename, "size": size})
    assert resp.status_code == 201, resp.text
    return resp.json()


def offset_of(http: httpx.Client, upload_id: str) -> int:
    resp = http.head(f"/v1/datasets/uploads/{upload_id}")
    assert resp.status_code == 200, resp.status_code
    return int(resp.headers["Upload-Offset"])


class HeldBody:
    """A request body sent in two halves, the second only once ``release`` is called."""

    def __init__(self, first: bytes, second: bytes):
        self.first, self.second, self.gate, self.sent_first = first, second, threading.Event(), threading.Event()

    def __iter__(self):
        yield self.first
        self.sent_first.set()
        assert self.gate.wait(60)
        yield self.second

    def release(self) -> None:
        self.gate.set()


def send_held(base_url: str, method: str, path: str, body: HeldBody, headers: dict | None = None) -> dict:
    """Send ``body`` from a thread; the returned dict gets the response under "resp" when it ends."""
    out: dict = {}

    def run() -> None:
        with httpx.Client(base_url=base_url, timeout=60) as client:
            out["resp"] = client.request(method, path, content=body, headers=headers)

    out["thread"] = threading.Thread(target=run)
    out["thread"].start()
    assert body.sent_first.wait(30)
    return out


def wait_for(check, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.02)
    raise TimeoutError(what)


def appending(http: httpx.Client, upload_id: str) -> bool:
    """Whether a request holds the upload's partial file (an empty append is 409 "another request" while one does)."""
    probe = http.patch(f"/v1/datasets/uploads/{upload_id}", content=b"", headers={"Upload-Offset": "0"})
    return probe.status_code == 409 and "another request" in probe.json()["detail"]


def files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


def temporaries(blobs_dir: Path) -> list[Path]:
    return list(blobs_dir.rglob(".tmp-*"))


def test_a_chunk_that_outlives_its_upload_is_404_and_leaves_no_bytes(http, stack, blobs_dir):
    up = start(http, "x.npy", 3 * MiB)
    body = HeldBody(b"a" * MiB, b"b" * (MiB // 2))
    held = send_held(stack.api_url, "PATCH", f"/v1/datasets/uploads/{up['id']}", body, {"Upload-Offset": "0"})
    wait_for(lambda: appending(http, up["id"]), "the chunk holds the upload")
    assert http.delete(f"/v1/datasets/uploads/{up['id']}").status_code == 204
    body.release()
    held["thread"].join(60)
    resp = held["resp"]
    assert resp.status_code == 404, resp.text  # was 200 for an upload already given up
    assert "given up or expired" in resp.json()["detail"]
    assert not (blobs_dir / "uploads" / up["id"]).exists()
    assert http.get(f"/v1/datasets/{up['dataset_id']}").status_code == 404


def test_chunks_racing_give_ups_leave_no_partial_file_without_a_row(http, stack, blobs_dir):
    """The unsynchronised race the red team ran (3 orphans in 60 before): whichever wins, no bytes outlive the row,
    and a chunk is answered 200 only for an upload that still exists."""
    outcomes = []
    for _ in range(30):
        up = start(http, "x.npy", 2 * MiB)
        answers: dict = {}

        def chunk(up=up, answers=answers) -> None:
            with httpx.Client(base_url=stack.api_url, timeout=60) as client:
                answers["patch"] = client.patch(
                    f"/v1/datasets/uploads/{up['id']}", content=b"c" * MiB, headers={"Upload-Offset": "0"}
                ).status_code

        thread = threading.Thread(target=chunk)
        thread.start()
        gone = http.delete(f"/v1/datasets/uploads/{up['id']}").status_code
        thread.join(60)
        outcomes.append((answers["patch"], gone))
        assert gone == 204
        assert answers["patch"] in (200, 404), answers
        assert not (blobs_dir / "uploads" / up["id"]).exists(), (answers, "an orphan partial file")
    assert len(outcomes) == 30


def test_a_tokenizer_sent_while_the_upload_is_given_up_is_404_not_500(http, stack, blobs_dir):
    up = start(http, "t.jsonl", 100)
    body = HeldBody(b'{"version": "1.0", ', b'"model": {}}')
    held = send_held(stack.api_url, "PUT", f"/v1/datasets/uploads/{up['id']}/tokenizer", body)
    wait_for(lambda: temporaries(blobs_dir), "the tokenizer streams to a temporary")
    assert http.delete(f"/v1/datasets/uploads/{up['id']}").status_code == 204
    body.release()
    held["thread"].join(60)
    resp = held["resp"]
    assert resp.status_code == 404, resp.text  # was 500: FileNotFoundError in os.replace
    assert not (blobs_dir / "datasets" / up["dataset_id"]).exists()
    assert not temporaries(blobs_dir) and not files_under(blobs_dir / "uploads")


def test_giving_up_removes_a_tokenizer_left_half_placed_by_a_killed_api(http, blobs_dir):
    up = start(http, "t.jsonl", 100)
    left = blobs_dir / "uploads" / "tokenizers" / up["id"] / "0123abcd"  # streamed in, never placed: API killed
    left.parent.mkdir(parents=True)
    left.write_bytes(b"{}")
    assert http.delete(f"/v1/datasets/uploads/{up['id']}").status_code == 204
    assert not left.parent.exists()


def test_an_expired_upload_refuses_chunks_before_the_sweeper_removes_it(http, pg_database):
    """No worker runs in this module yet, so no sweeper: the refusal is the API's own."""
    up = start(http, "x.npy", 10)
    assert http.patch(f"/v1/datasets/uploads/{up['id']}", content=b"12345", headers={"Upload-Offset": "0"}).is_success
    engine = sa.create_engine(pg_database[1])
    with engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE dataset_uploads SET expires_at = now() - interval '1 second' WHERE id = :id"),
            {"id": up["id"]},
        )
    engine.dispose()
    for resp in (
        http.patch(f"/v1/datasets/uploads/{up['id']}", content=b"67890", headers={"Upload-Offset": "5"}),
        http.put(f"/v1/datasets/uploads/{up['id']}/tokenizer", content=b"{}"),
        http.post(f"/v1/datasets/uploads/{up['id']}/complete"),
    ):
        assert resp.status_code == 404 and "expired" in resp.json()["detail"], resp.text
    assert offset_of(http, up["id"]) == 5  # nothing appended; the sweeper removes it with its bytes
    assert http.delete(f"/v1/datasets/uploads/{up['id']}").status_code == 204


def test_a_tenant_has_a_cap_on_open_uploads_and_their_declared_bytes(http):
    opened = [start(http, f"x{i}.npy", 10 * MiB) for i in range(MAX_OPEN)]
    more = http.post("/v1/datasets/uploads", json={"filename": "y.npy", "size": 10})
    assert more.status_code == 409 and more.json()["detail"].startswith("size: ")
    assert "GRADLAB_MAX_OPEN_UPLOADS_PER_TENANT" in more.json()["detail"]
    for up in opened[:3]:
        assert http.delete(f"/v1/datasets/uploads/{up['id']}").status_code == 204
    # 3 open, 30 MiB declared: 34 MiB more would make 64 MiB + 1 byte... over the byte cap by 1
    over = http.post("/v1/datasets/uploads", json={"filename": "y.npy", "size": 34 * MiB + 1})
    assert over.status_code == 409 and "GRADLAB_MAX_OPEN_UPLOAD_BYTES_PER_TENANT (67108864)" in over.json()["detail"]
    fits = start(http, "y.npy", 34 * MiB)
    for up in [*opened[3:], fits]:
        assert http.delete(f"/v1/datasets/uploads/{up['id']}").status_code == 204


def test_a_size_sent_as_a_string_is_refused(http):
    resp = http.post("/v1/datasets/uploads", json={"filename": "x.npy", "size": "10"})
    assert resp.status_code == 422, resp.text
    assert [e["field"] for e in resp.json()["errors"]] == ["size"]


def _streamed(*parts: bytes):
    yield from parts  # a generator: sent chunked, with no Content-Length


@pytest.mark.parametrize(
    ("declared", "body", "cap"),
    [
        (MiB + MiB // 2, lambda: b"z" * (2 * MiB), "declared size"),  # Content-Length past the declared size
        (MiB + MiB // 2, lambda: _streamed(b"z" * MiB, b"z" * (MiB // 2 + 1)), "declared size"),  # found streaming
        (8 * MiB, lambda: _streamed(*[b"z" * MiB] * 3), "capped at"),  # past the chunk cap, found streaming
    ],
    ids=["declared-length", "streamed-past-size", "streamed-past-chunk-cap"],
)
def test_a_chunk_past_a_cap_is_413_with_the_offset_and_keeps_none_of_its_bytes(http, blobs_dir, declared, body, cap):
    up = start(http, "x.npy", declared)
    assert http.patch(f"/v1/datasets/uploads/{up['id']}", content=b"h" * 100, headers={"Upload-Offset": "0"}).is_success
    resp = http.patch(f"/v1/datasets/uploads/{up['id']}", content=body(), headers={"Upload-Offset": "100"})
    assert resp.status_code == 413, resp.text
    assert cap in resp.json()["detail"]
    assert resp.headers["Upload-Offset"] == "100"  # where to resume: the 100 bytes before this chunk
    assert offset_of(http, up["id"]) == 100 and (blobs_dir / "uploads" / up["id"]).stat().st_size == 100
    assert http.delete(f"/v1/datasets/uploads/{up['id']}").status_code == 204


# --- validations (a worker from here on) ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def worker(stack, api):
    return stack.start_worker()


def settle(http: httpx.Client, dataset_id: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ds = http.get(f"/v1/datasets/{dataset_id}").json()
        if ds["status"] in ("ready", "rejected"):
            return ds
        time.sleep(0.1)
    raise TimeoutError(f"dataset {dataset_id} still {ds['status']}")


@pytest.mark.parametrize(
    ("lines", "status"), [([b'{"text": "fine"}', b'{"text": "also"}'], "ready"), ([b"{"], "rejected")]
)
def test_a_settled_dataset_keeps_neither_its_raw_upload_nor_its_tokenizer(http, blobs_dir, worker, lines, status):
    text = b"\n".join(lines) + b"\n"
    up = start(http, "t.jsonl", len(text))
    tokenizer = {
        "version": "1.0",
        "model": {"type": "WordLevel", "vocab": {"[UNK]": 0, "fine": 1}, "unk_token": "[UNK]"},
    }
    assert http.put(f"/v1/datasets/uploads/{up['id']}/tokenizer", content=json.dumps(tokenizer)).status_code == 204
    assert http.patch(f"/v1/datasets/uploads/{up['id']}", content=text, headers={"Upload-Offset": "0"}).is_success
    assert http.post(f"/v1/datasets/uploads/{up['id']}/complete").status_code == 202
    ds = settle(http, up["dataset_id"])
    assert ds["status"] == status, ds
    left = sorted(p.name for p in (blobs_dir / "datasets" / up["dataset_id"]).glob("*"))
    assert "upload.raw" not in left and "tokenizer.json" not in left, left  # a rejected one kept both before
    assert (left == []) == (status == "rejected")


def test_a_tokenizer_sent_while_the_upload_completes_is_refused_and_the_text_is_read_as_bytes(
    http, stack, blobs_dir, worker
):
    text = b"".join(json.dumps({"text": f"row {i} of text"}).encode() + b"\n" for i in range(20))
    up = start(http, "t.jsonl", len(text))
    assert (
        http.patch(f"/v1/datasets/uploads/{up['id']}", content=text, headers={"Upload-Offset": "0"}).status_code == 200
    )
    tokenizer = json.dumps({"version": "1.0", "model": {"type": "WordLevel", "vocab": {"[UNK]": 0}}}).encode()
    body = HeldBody(tokenizer[:10], tokenizer[10:])
    held = send_held(stack.api_url, "PUT", f"/v1/datasets/uploads/{up['id']}/tokenizer", body)
    wait_for(lambda: temporaries(blobs_dir), "the tokenizer streams to a temporary")
    assert http.post(f"/v1/datasets/uploads/{up['id']}/complete").status_code == 202
    body.release()
    held["thread"].join(60)
    resp = held["resp"]
    assert resp.status_code == 409, resp.text  # was 204, and the tokenizer was never read
    ds = settle(http, up["dataset_id"])
    assert ds["status"] == "ready" and ds["preview"]["tokenizer"] == "utf-8 bytes"
    assert not temporaries(blobs_dir) and not files_under(blobs_dir / "uploads")
