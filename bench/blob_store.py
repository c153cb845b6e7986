"""Benchmark: the directory blob store against plain ``cp``/``cat`` on the same disk.

Write: ``DirectoryStore.put`` streams a file in 1 MiB chunks, hashing (SHA-256) on the way, into a temporary that it
fsyncs and renames; compared with ``cp`` alone, ``cp`` followed by ``sync FILE`` (the same durability; cp may copy in
the kernel), and a
plain Python 1 MiB read/write loop with fsync (the userspace copy an upload from a socket makes anyway); and
``sha256sum`` alone, the hashing that ``put`` adds. Read:
``DirectoryStore.open`` read in 1 MiB chunks against ``cat FILE > /dev/null``. The files are in the page cache on
reads (no root to drop it), so read figures are memory-bandwidth bound for both. Throughput in MiB/s, median of
``--repeats`` rounds, the
arms alternating within each round.

Run from the repository root: ``python -m bench.blob_store [--mib 512] [--repeats 3] [--dir DIR]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from core.blobs import DirectoryStore

MiB = 1024 * 1024


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dir", default=".")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="blobbench-") as tmp:
        root = Path(tmp)
        src = root / "src.bin"
        block = os.urandom(MiB)
        with open(src, "wb") as fh:
            fh.writelines(block for _ in range(args.mib))
        store = DirectoryStore(root / "store")
        times: dict[str, list[float]] = {
            k: [] for k in ("cp", "cp+sync", "py-copy+fsync", "sha256sum", "put", "cat", "read")
        }

        def py_copy():  # the userspace copy an upload must make anyway (bytes arrive from a socket), without hashing
            with open(src, "rb") as fh, open(root / "copy3", "wb") as sink:
                while block := fh.read(MiB):
                    sink.write(block)
                sink.flush()
                os.fsync(sink.fileno())

        def put_store():
            with open(src, "rb") as fh:
                store.put("bench/blob", fh)

        def read_store():
            with store.open("bench/blob") as fh:
                while fh.read(MiB):
                    pass

        for _ in range(args.repeats):
            times["cp"].append(_timed(lambda: subprocess.run(["cp", src, root / "copy"], check=True)))
            times["cp+sync"].append(
                _timed(
                    lambda: subprocess.run(
                        ["sh", "-c", f'cp "{src}" "{root}/copy2" && sync "{root}/copy2"'], check=True
                    )
                )
            )
            times["py-copy+fsync"].append(_timed(py_copy))
            times["sha256sum"].append(
                _timed(lambda: subprocess.run(["sha256sum", src], check=True, stdout=subprocess.DEVNULL))
            )
            times["put"].append(_timed(put_store))
            times["cat"].append(
                _timed(lambda: subprocess.run(["sh", "-c", f'cat "{root}/copy" > /dev/null'], check=True))
            )
            times["read"].append(_timed(read_store))
        out = {k: round(args.mib / statistics.median(v), 1) for k, v in times.items()}
        print(json.dumps({"mib": args.mib, "repeats": args.repeats, "MiB_per_s": out}))


if __name__ == "__main__":
    main()
