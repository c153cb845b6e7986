"""Conversion and training in bounded memory: each runs in a child process whose data segment (RLIMIT_DATA:
heap and private anonymous memory; a read-only memory map of a file does not count) is capped well below the
dataset's size. The same child first shows that the cap bites: reading the whole file into memory fails.

The child uses pyarrow's system allocator (``ARROW_DEFAULT_MEMORY_POOL=system``): its default, mimalloc, reserves
about 1 GiB of address space up front that RLIMIT_DATA counts though it is never touched (its resident peak stays
near the system allocator's); with the system allocator the cap measures what conversion uses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[2]
CONVERT_LIMIT = 160 << 20
TRAIN_LIMIT = 512 << 20
COLUMNS = 32
BLOCK_ROWS = 4096


def _child(script: str, limit: int, timeout: float = 300) -> dict:
    """Run ``script`` under RLIMIT_DATA = ``limit``; it must print one JSON line last."""
    prelude = textwrap.dedent(
        f"""
        import json, resource, sys
        resource.setrlimit(resource.RLIMIT_DATA, ({limit}, {limit}))
        """
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "ARROW_DEFAULT_MEMORY_POOL": "system",
    }
    done = subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _block() -> np.ndarray:
    """Every BLOCK_ROWS rows of the big tables: x[r, c] = (r mod BLOCK_ROWS) / 8 + c (exact in float32 and in
    CSV's %g), label r mod 3."""
    r = np.arange(BLOCK_ROWS)
    return (r[:, None] / 8 + np.arange(COLUMNS)[None, :]).astype(np.float32)


def _blocks_for(total_bytes: int, row_bytes: int) -> int:
    return -(-total_bytes // (row_bytes * BLOCK_ROWS))


def _write_npz(path: Path, size: int) -> int:
    blocks = _blocks_for(size, COLUMNS * 4)
    rows = blocks * BLOCK_ROWS
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        with zf.open("x.npy", "w", force_zip64=True) as entry:
            np.lib.format.write_array_header_1_0(
                entry, {"descr": "<f4", "fortran_order": False, "shape": (rows, COLUMNS)}
            )
            for _ in range(blocks):
                entry.write(_block().tobytes())
        with zf.open("y.npy", "w", force_zip64=True) as entry:
            np.lib.format.write_array_header_1_0(entry, {"descr": "<i8", "fortran_order": False, "shape": (rows,)})
            for _ in range(blocks):
                entry.write((np.arange(BLOCK_ROWS) % 3).astype("<i8").tobytes())
    return rows


def _write_csv(path: Path, size: int) -> int:
    header = ",".join(f"c{j}" for j in range(COLUMNS)) + ",label\n"
    block = "".join(",".join(f"{v:g}" for v in row) + f",{r % 3}\n" for r, row in enumerate(_block()))
    with open(path, "w") as fh:
        fh.write(header)
        n = -(-size // len(block))
        for _ in range(n):
            fh.write(block)
    return n * BLOCK_ROWS


def _write_parquet(path: Path, size: int) -> int:
    blocks = _blocks_for(size, COLUMNS * 4)
    schema = pa.schema([(f"c{j}", pa.float32()) for j in range(COLUMNS)] + [("label", pa.int64())])
    x = _block()
    with pq.ParquetWriter(path, schema, compression="none", use_dictionary=False) as writer:
        for _ in range(blocks):
            cols = [pa.array(x[:, j]) for j in range(COLUMNS)] + [pa.array(np.arange(BLOCK_ROWS) % 3)]
            writer.write_table(pa.Table.from_arrays(cols, schema=schema), row_group_size=BLOCK_ROWS)
    return blocks * BLOCK_ROWS


def _write_jsonl(path: Path, size: int) -> int:
    line = json.dumps({"text": "the quick brown fox jumps over the lazy dog. " * 20}) + "\n"
    block = line * 1000
    n = -(-size // len(block))
    with open(path, "w") as fh:
        for _ in range(n):
            fh.write(block)
    return n * 1000


@pytest.mark.parametrize(
    ("name", "write", "label"),
    [
        ("big.npz", _write_npz, None),
        ("big.csv", _write_csv, "label"),
        ("big.parquet", _write_parquet, "label"),
        ("big.jsonl", _write_jsonl, None),
    ],
)
def test_a_file_three_times_the_memory_cap_converts(tmp_path, name, write, label):
    raw = tmp_path / name
    rows = write(raw, 3 * CONVERT_LIMIT)
    assert raw.stat().st_size > 3 * CONVERT_LIMIT
    out = tmp_path / "out"
    out.mkdir()
    result = _child(
        f"""
        from pathlib import Path
        from core.data.formats import convert
        ins = convert(Path({str(raw)!r}), filename={name!r}, out_dir=Path({str(out)!r}), label_column={label!r},
                      max_stored_bytes=1 << 40)
        # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the forking parent (pytest, hundreds of MiB once
        # the whole suite is collected) across execve; VmHWM belongs to this process's own memory map
        status = Path("/proc/self/status").read_text().splitlines()
        peak = next(int(line.split()[1]) << 10 for line in status if line.startswith("VmHWM:"))
        try:  # after the conversion, so that the peak above is the conversion's own
            Path({str(raw)!r}).read_bytes()
            whole = "read"
        except MemoryError:
            whole = "MemoryError"
        print(json.dumps({{"whole": whole, "rows": ins.rows, "kind": ins.kind, "preview": ins.preview, "peak": peak}}))
        """,
        CONVERT_LIMIT,
    )
    assert result["whole"] == "MemoryError"  # the cap is real: the file does not fit in it
    assert result["rows"] == rows
    assert result["peak"] < raw.stat().st_size / 2  # resident peak, libraries included: not the file's size
    if result["kind"] == "arrays":
        x = np.load(out / "x.npy", mmap_mode="r")
        assert x.shape == (rows, COLUMNS)
        for i in (0, rows // BLOCK_ROWS // 2, rows // BLOCK_ROWS - 1):  # spot checks against the known table
            np.testing.assert_array_equal(x[i * BLOCK_ROWS : (i + 1) * BLOCK_ROWS], _block())
        stats = result["preview"]["stats"][0]  # column 0 is r/8 for r in 0..BLOCK_ROWS-1, uniformly
        assert stats["mean"] == pytest.approx((BLOCK_ROWS - 1) / 16) and stats["max"] == (BLOCK_ROWS - 1) / 8
        if label is not None:
            per_block = np.bincount(np.arange(BLOCK_ROWS) % 3)
            assert result["preview"]["label_balance"] == {
                str(k): rows // BLOCK_ROWS * int(per_block[k]) for k in range(3)
            }
    else:
        offsets = np.load(out / "offsets.npy", mmap_mode="r")
        assert len(offsets) == rows + 1 and offsets[-1] == 20 * 45 * rows


def test_momentum_accumulation_trains_on_a_dataset_larger_than_its_memory_cap(tmp_path):
    """A memory-mapped arrays dataset of 1.5x the cap trains in micro-batches; the labels are a function of the
    features (a class per band of x[:, 0]), so training must beat chance on the held-out rows."""
    rows = _blocks_for(TRAIN_LIMIT * 3 // 2, COLUMNS * 4) * BLOCK_ROWS
    x = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype="<f4", shape=(rows, COLUMNS))
    y = np.lib.format.open_memmap(tmp_path / "y.npy", mode="w+", dtype="<i8", shape=(rows,))
    rng = np.random.default_rng(0)
    for start in range(0, rows, 1 << 18):
        block = rng.standard_normal((min(1 << 18, rows - start), COLUMNS), dtype=np.float32)
        x[start : start + len(block)] = block
        y[start : start + len(block)] = np.digitize(block[:, 0], [-0.5, 0.5])
    x.flush()
    y.flush()
    del x, y
    assert (tmp_path / "x.npy").stat().st_size > TRAIN_LIMIT * 3 // 2
    meta = {"kind": "arrays", "rows": rows, "columns": COLUMNS, "has_labels": True}
    result = _child(
        f"""
        from pathlib import Path
        import numpy as np
        try:
            np.load({str(tmp_path / "x.npy")!r})
            whole = "read"
        except MemoryError:
            whole = "MemoryError"
        import torch
        torch.set_num_threads(1)
        from core.data.loader import open_dataset
        from core.techniques import get_kind
        from core.techniques.local import LocalContext
        files = {{"x.npy": Path({str(tmp_path / "x.npy")!r}), "y.npy": Path({str(tmp_path / "y.npy")!r})}}
        view = open_dataset(files, {meta!r})
        ds = "00000000-0000-4000-8000-000000000001"
        kind = get_kind("momentum_accumulation")
        params = kind.params(dataset=ds, hidden=16, optimizer="adam", lr=0.01, accum_steps=2, micro_batch=32,
                             steps=200, seeds=1, eval_every=100, arms=["explicit_buffer", "chi_exact"])
        out = kind.run(params, LocalContext(datasets={{ds: view}}))
        print(json.dumps({{"whole": whole, "acc": out["arms"]["chi_exact"]["final_heldout_accuracy_mean"]}}))
        """,
        TRAIN_LIMIT,
    )
    assert result["whole"] == "MemoryError"
    assert result["acc"] > 0.6  # three classes: chance is at most 0.38 (the middle band's share)
