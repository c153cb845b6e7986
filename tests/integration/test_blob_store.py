"""Blob stores: streamed writes with size and SHA-256, all-or-nothing under failure and SIGKILL, on a directory and
on a real S3 endpoint (moto's server process on loopback)."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from core.blobs import BlobTooLarge, DirectoryStore, open_store
from core.blobs.store import check_key, read_blob
from tests.servers import PrivateS3

MiB = 1024 * 1024
CREDS = PrivateS3.CREDENTIALS


@pytest.fixture(params=["dir", "s3"])
def store(request, tmp_path, monkeypatch):
    if request.param == "dir":
        return DirectoryStore(tmp_path / "blobs")
    server = request.getfixturevalue("s3_server")
    for k, v in CREDS.items():
        monkeypatch.setenv(k, v)
    bucket = f"b{os.urandom(6).hex()}"
    s3 = open_store(f"s3://{bucket}/gradlab", s3_endpoint_url=server.endpoint)
    s3.fs.mkdir(bucket)
    return s3


def _blocks(n: int, size: int = MiB):
    for i in range(n):
        yield bytes([i % 251]) * size


def test_put_streams_and_reports_size_and_sha(store):
    expected = hashlib.sha256(b"".join(_blocks(20))).hexdigest()  # past one 16 MiB S3 part: a multipart upload
    info = store.put("datasets/a.npz", _blocks(20))
    assert (info.size, info.sha256) == (20 * MiB, expected)
    with store.open("datasets/a.npz") as fh:
        digest = hashlib.sha256()
        while block := fh.read(3 * MiB):
            digest.update(block)
    assert digest.hexdigest() == expected


def test_a_failed_or_capped_write_keeps_the_old_bytes(store):
    store.put("models/m/model.safetensors", [b"old"])

    def broken():
        yield from _blocks(18)
        raise OSError("client went away")

    with pytest.raises(OSError, match="went away"):
        store.put("models/m/model.safetensors", broken())
    with pytest.raises(BlobTooLarge):
        store.put("models/m/model.safetensors", _blocks(18), max_bytes=17 * MiB)
    with pytest.raises(BlobTooLarge):
        store.put("models/new", _blocks(2), max_bytes=MiB)
    assert read_blob(store, "models/m/model.safetensors") == b"old"
    assert not store.exists("models/new")
    if isinstance(store, DirectoryStore):
        assert not list(store.root.rglob(".tmp-*"))
    else:
        assert store.fs.list_multipart_uploads(store.base.split("/")[0]) == []  # aborted, no parts left behind


def test_delete_prefix_removes_one_attempt_only(store):
    for attempt in (1, 2):
        store.put(f"artifacts/j/{attempt}/a.png", [b"x"])
        store.put(f"artifacts/j/{attempt}/b.json", [b"y"])
    store.delete_prefix("artifacts/j/1/")
    store.delete("artifacts/j/2/b.json")
    store.delete("artifacts/j/2/missing")
    assert [store.exists(f"artifacts/j/{a}/{n}") for a in (1, 2) for n in ("a.png", "b.json")] == [
        False,
        False,
        True,
        False,
    ]


def test_a_writer_killed_mid_write_leaves_the_old_bytes_or_nothing(store, s3_server_env):
    store.put("datasets/k.npz", [b"before"])
    child = textwrap.dedent(f"""
        import sys
        from core.blobs import open_store
        store = open_store({store.url!r}, {s3_server_env!r})
        def blocks():
            for i in range(40):
                yield b"z" * 1048576
                if i == 20:
                    print("half", flush=True)
                    sys.stdin.read()  # parked mid-write until killed
        store.put(sys.argv[1], blocks())
    """)
    for key in ("datasets/k.npz", "datasets/fresh.npz"):
        proc = subprocess.Popen(
            [sys.executable, "-c", child, key],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env={**os.environ, **CREDS, "PYTHONPATH": os.getcwd()},
        )
        assert proc.stdout.readline().strip() == b"half"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdin.close()
        proc.stdout.close()
    assert read_blob(store, "datasets/k.npz") == b"before"
    assert not store.exists("datasets/fresh.npz")
    if isinstance(store, DirectoryStore):
        assert len(list(store.root.rglob(".tmp-*"))) == 2  # the strays: never read as blobs, swept by age
        assert store.sweep_temporaries(older_than_s=3600) == 0
        assert store.sweep_temporaries(older_than_s=0) == 2


@pytest.fixture
def s3_server_env(store, request):
    return None if isinstance(store, DirectoryStore) else request.getfixturevalue("s3_server").endpoint


@pytest.mark.parametrize("key", ["../etc/passwd", "a//b", "/abs", "x/.tmp-1", "a b", ""])
def test_keys_cannot_leave_the_store(key):
    with pytest.raises(ValueError):
        check_key(key)


# --- partial objects: resumable uploads -----------------------------------------------------------------------------


def _failing_after(blocks, n: int):
    """A source that dies after ``n`` blocks, like a client whose connection drops mid-chunk."""
    for i, block in enumerate(blocks):
        if i == n:
            raise ConnectionError("client went away")
        yield block


def test_a_partial_object_resumes_and_becomes_the_concatenation(store):
    from core.blobs.store import ChunkTooSmall, OffsetMismatch

    chunk = max(store.min_chunk_bytes, MiB)  # S3: parts of at least 5 MiB
    data = b"".join(_blocks(3, chunk)) + b"tail"
    total = len(data)
    key = "uploads/u1"
    assert store.partial_size(key) == 0
    assert store.append_partial(key, 0, [data[:chunk]], total) == chunk
    with pytest.raises(OffsetMismatch) as wrong:
        store.append_partial(key, 0, [data[:chunk]], total)
    assert wrong.value.received == chunk
    # cut off mid-chunk: a directory keeps what arrived, S3 drops the chunk whole; either way the size says
    with pytest.raises(ConnectionError):
        blocks = iter([data[chunk : chunk + MiB], data[chunk + MiB :]])
        store.append_partial(key, chunk, _failing_after(blocks, 1), total)
    offset = store.partial_size(key)
    assert offset == (chunk + MiB if isinstance(store, DirectoryStore) else chunk)
    if not isinstance(store, DirectoryStore):
        with pytest.raises(ChunkTooSmall):
            store.append_partial(key, offset, [data[offset : offset + MiB]], total)
        assert store.partial_size(key) == offset
    with pytest.raises(BlobTooLarge):
        store.append_partial(key, offset, [data[offset:], b"x"], total)
    offset = store.partial_size(key)
    while offset < total:
        offset = store.append_partial(key, offset, [data[offset : offset + chunk]], total)
    assert offset == total
    store.finish_partial(key, "datasets/d1/upload.raw")
    assert store.partial_size(key) == 0
    with store.open("datasets/d1/upload.raw") as fh:
        assert hashlib.sha256(fh.read()).hexdigest() == hashlib.sha256(data).hexdigest()
