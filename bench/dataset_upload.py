"""Benchmark: uploading a dataset through the resumable upload API into the directory store, and reading it back
as the validation does, against plain ``cp``/``cat`` on the same disk.

Upload arms (a ``--mib`` file of random bytes): ``cp`` followed by ``sync FILE`` (the same durability as the store's
fsync); ``append_partial``, the store alone taking ``--chunk-mib`` chunks in 1 MiB blocks, fsynced per chunk, then
``finish_partial`` (a rename); ``http``, a real ``gradlab api`` process (SQLite, directory store under ``--dir``) taking
the file as chunked ``PATCH /v1/datasets/uploads/{id}`` requests from httpx over loopback, then ``complete``; the
client's own reads of the (cached) file are in every arm. Read arms: ``cat FILE > /dev/null`` against
``core.data.ingest.local_copy`` with SHA-256 (what a validation reads first) and ``sha256sum``. The files are in the
page cache on reads, so read figures are bound by memory and hashing. MiB/s, median of ``--repeats`` rounds, the
arms alternating within each round.

Run from the repository root: ``python -m bench.dataset_upload [--mib 512] [--chunk-mib 64] [--repeats 3] [--dir DIR]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from core.blobs import DirectoryStore
from core.data.ingest import local_copy

MiB = 1024 * 1024
BIN = Path(sys.executable).parent


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _blocks(path: Path, start: int, length: int):
    with open(path, "rb") as fh:
        fh.seek(start)
        while length and (block := fh.read(min(MiB, length))):
            length -= len(block)
            yield block


class Api:
    """A ``gradlab api`` process on a fresh SQLite database and a directory store under ``root``."""

    def __init__(self, root: Path):
        self.env = {**os.environ, "GRADLAB_DATA_DIR": str(root), "GRADLAB_AUTH": "disabled", "GRADLAB_METRICS": "0"}
        subprocess.run([str(BIN / "gradlab"), "migrate"], env=self.env, check=True, capture_output=True)
        self.url = f"http://127.0.0.1:{_free_port()}"
        self.proc = subprocess.Popen(
            [str(BIN / "gradlab"), "api", "--port", self.url.rsplit(":", 1)[1]],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(self.url + "/healthz", timeout=1)
                return
            except httpx.TransportError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("the API did not start") from None
                time.sleep(0.1)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=512)
    ap.add_argument("--chunk-mib", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dir", default=".")
    args = ap.parse_args()
    size, chunk = args.mib * MiB, args.chunk_mib * MiB
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="uploadbench-") as tmp:
        root = Path(tmp)
        src = root / "src.csv"
        block = os.urandom(MiB)
        with open(src, "wb") as fh:
            fh.writelines(block for _ in range(args.mib))
        store = DirectoryStore(root / "store")
        api = Api(root / "service")
        times: dict[str, list[float]] = {k: [] for k in ("cp+sync", "append_partial", "http", "cat", "read+sha256")}
        times["sha256sum"] = []

        def appended(round_: int):
            key, offset = f"uploads/bench-{round_}", 0
            while offset < size:
                offset = store.append_partial(key, offset, _blocks(src, offset, min(chunk, size - offset)), size)
            store.finish_partial(key, f"datasets/bench-{round_}/upload.raw")

        def uploaded(client: httpx.Client):
            up = client.post("/v1/datasets/uploads", json={"filename": "src.csv", "size": size}).json()
            offset = 0
            while offset < size:
                resp = client.patch(
                    f"/v1/datasets/uploads/{up['id']}",
                    content=_blocks(src, offset, min(chunk, size - offset)),
                    headers={"Upload-Offset": str(offset)},
                )
                offset = resp.raise_for_status().json()["offset"]
            client.post(f"/v1/datasets/uploads/{up['id']}/complete").raise_for_status()

        def read_hashed():
            local_copy(store, "datasets/bench-0/upload.raw", root, hashlib.sha256())

        try:
            with httpx.Client(base_url=api.url, timeout=300) as client:
                for r in range(args.repeats):
                    times["cp+sync"].append(
                        _timed(
                            lambda: subprocess.run(
                                ["sh", "-c", f'cp "{src}" "{root}/copy" && sync "{root}/copy"'], check=True
                            )
                        )
                    )
                    times["append_partial"].append(_timed(lambda r=r: appended(r)))
                    times["http"].append(_timed(lambda: uploaded(client)))
                    times["cat"].append(
                        _timed(lambda: subprocess.run(["sh", "-c", f'cat "{root}/copy" > /dev/null'], check=True))
                    )
                    times["read+sha256"].append(_timed(read_hashed))
                    times["sha256sum"].append(
                        _timed(lambda: subprocess.run(["sha256sum", src], check=True, stdout=subprocess.DEVNULL))
                    )
        finally:
            api.stop()
        out = {k: round(args.mib / statistics.median(v), 1) for k, v in times.items()}
        print(json.dumps({"mib": args.mib, "chunk_mib": args.chunk_mib, "repeats": args.repeats, "MiB_per_s": out}))


if __name__ == "__main__":
    main()
