"""Benchmark for ``contrastive_accumulation``: cost of exactness, and memory vs batch size.

1. time(chunked) / time(full batch) at equal B: the chunked method pays one extra forward pass.
2. peak memory vs B at a fixed chunk: chunked stays near flat, the plain full batch grows with B (activations ∝ B,
   the B×B score matrix ∝ B²).

Every (method, B) point runs in a fresh subprocess so one measurement's peak cannot leak into another's.
Peak memory: CUDA ``max_memory_allocated``; CPU resident-set high-water mark (``VmHWM`` after a reset through
/proc/self/clear_refs, minus ``VmRSS`` before the step) — see ``PeakMemory``.
Run: ``python -m bench.contrastive_accumulation`` (``--help`` for sizes; ``--device cuda`` on a GPU machine).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "contrastive_accumulation.json"


def measure(cfg: dict) -> dict:
    """Peak extra memory of one gradient step of one method (after a small warm-up), then the median time of
    ``repeats`` further steps, in this process."""
    import torch
    from torch import nn

    from core.contrastive import accumulated_backward, info_nce_loss
    from core.techniques.contrastive_accumulation.run import PeakMemory

    torch.set_num_threads(cfg["threads"])
    device = torch.device(cfg["device"])
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    dims = [cfg["in_dim"], *cfg["widths"]]
    for i in range(len(cfg["widths"])):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if i < len(cfg["widths"]) - 1:
            layers += [nn.ReLU(), nn.Dropout(0.1)]
    enc = nn.Sequential(*layers).to(device)
    batch, chunk = cfg["batch"], cfg["chunk"]

    def step(x: torch.Tensor) -> float:
        enc.zero_grad(set_to_none=True)
        pos = torch.arange(x.shape[0], device=device) ^ 1
        if cfg["method"] == "chunked":
            loss = accumulated_backward(enc, x, pos, chunk, 0.05)
        else:
            out = info_nce_loss(enc(x), pos, 0.05)
            out.backward()
            loss = float(out.detach())
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return loss

    step(torch.randn(min(batch, 2 * chunk), cfg["in_dim"], device=device))
    x = torch.randn(batch, cfg["in_dim"], device=device)
    meter = PeakMemory(device)
    _, peak = meter.measure(lambda: step(x))
    times = []
    for _ in range(cfg["repeats"]):
        start = time.perf_counter()
        step(x)
        times.append(time.perf_counter() - start)
    return {**cfg, "peak_bytes": peak, "memory_method": meter.method, "time_s": statistics.median(times)}


def in_subprocess(cfg: dict) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "bench.contrastive_accumulation", "--measure", json.dumps(cfg)],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (CPU)")
    ap.add_argument("--widths", default="512,512,64")
    ap.add_argument("--in-dim", type=int, default=64)
    ap.add_argument("--chunk", type=int, default=256)
    ap.add_argument("--time-batches", default="1024,4096", help="B values for the time ratio")
    ap.add_argument("--memory-batches", default="1024,2048,4096,8192,16384")
    ap.add_argument("--full-max", type=int, default=8192, help="largest B tried with the plain full batch")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--measure", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(json.loads(args.measure))))
        return

    base = {
        "device": args.device,
        "threads": args.threads,
        "widths": [int(w) for w in args.widths.split(",")],
        "in_dim": args.in_dim,
        "chunk": args.chunk,
        "repeats": args.repeats,
    }
    timing = []
    print(f"time per step, chunk={args.chunk}, widths={base['widths']}, device={args.device}, threads={args.threads}")
    print(f"{'B':>7} {'chunked s':>10} {'full s':>10} {'ratio':>6}")
    for batch in (int(b) for b in args.time_batches.split(",")):
        got = {m: in_subprocess({**base, "method": m, "batch": batch}) for m in ("chunked", "full")}
        ratio = got["chunked"]["time_s"] / got["full"]["time_s"]
        timing.append(
            {"batch": batch, "chunked_s": got["chunked"]["time_s"], "full_s": got["full"]["time_s"], "ratio": ratio}
        )
        print(f"{batch:>7} {got['chunked']['time_s']:>10.4f} {got['full']['time_s']:>10.4f} {ratio:>6.2f}")

    memory, method = [], None
    print(f"\npeak extra memory (MiB) vs B, chunk={args.chunk}")
    print(f"{'B':>7} {'chunked':>10} {'full':>10}")
    for batch in (int(b) for b in args.memory_batches.split(",")):
        row = {"batch": batch}
        for m in ("chunked", "full"):
            if m == "full" and batch > args.full_max:
                row[m] = None
                continue
            got = in_subprocess({**base, "method": m, "batch": batch, "repeats": 1})
            method = got["memory_method"]
            row[m] = got["peak_bytes"]
            row[f"{m}_time_s"] = got["time_s"]
        memory.append(row)
        cells = [f"{row[m] / 2**20:>10.1f}" if row[m] is not None else f"{'-':>10}" for m in ("chunked", "full")]
        print(f"{batch:>7} {' '.join(cells)}")
    print(f"memory method: {method}")

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps({"config": base, "memory_method": method, "time_ratio": timing, "memory_vs_batch": memory}, indent=2)
    )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
