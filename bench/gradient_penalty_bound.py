"""Cost of one bound measurement (core.penalty.gradient_bound_terms) per sample, against one forward-backward.

Run from the repository root: ``python -m bench.gradient_penalty_bound``. MLPs d_in=64 -> width x (depth-1) -> 10
with tanh, in float64 as the job measures; widths up to 1024, depth up to 8. For each size it times a plain
forward-backward of the batch, the measurement with the method ``auto`` picks, and the other method where it
stays affordable, and writes bench/results/gradient_penalty_bound.json. Threads default to 1: on a shared
machine, multi-threaded BLAS timings swing by orders of magnitude with the neighbours' load.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from torch import nn

from core.costs import auto_method
from core.penalty import gradient_bound_terms

D_IN, CLASSES = 64, 10
SIZES = [(64, 2), (64, 8), (256, 2), (256, 4), (256, 8), (512, 4), (1024, 2), (1024, 4), (1024, 8)]
OTHER_MAX_SIZE = 4096
"""The method auto does not pick is timed only while width x depth is at most this (power iteration at 1024 x 8
takes about half a minute); those rows check the auto rule."""


def mlp(width: int, depth: int, gen: torch.Generator) -> nn.Sequential:
    dims = [D_IN] + [width] * (depth - 1) + [CLASSES]
    mods: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims, dims[1:])):
        lin = nn.Linear(a, b).double()
        with torch.no_grad():
            lin.weight.copy_(torch.randn(b, a, generator=gen, dtype=torch.float64) / a**0.5)
        mods.append(lin)
        if i < len(dims) - 2:
            mods.append(nn.Tanh())
    return nn.Sequential(*mods)


def best_of(fn, repeats: int) -> float:
    """Shortest wall time of ``repeats`` calls, after a warm-up call when there are several (seconds)."""
    if repeats > 1:
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8, help="samples per measurement")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, D_IN, generator=gen, dtype=torch.float64)
    y = torch.randint(0, CLASSES, (args.batch,), generator=gen)
    rows = []
    print(f"batch {args.batch}, d_in {D_IN}, float64, tanh, {args.threads} thread(s); times per sample")
    print(
        f"{'width':>6} {'depth':>5} {'method':>7} {'iters':>5} {'fwd-bwd ms':>10} {'measure ms':>10} "
        f"{'x fwd-bwd':>10} {'W svd ms':>9} {'ratio med':>9}"
    )
    for width, depth in SIZES:
        model = mlp(width, depth, gen)
        repeats = 3 if width * depth <= 512 else 1

        def fwd_bwd():
            model.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x), y).backward()

        t_fb = best_of(fwd_bwd, 10) / args.batch
        weights = [m.weight.detach() for m in model if isinstance(m, nn.Linear)]
        t_svd = best_of(lambda: [torch.linalg.matrix_norm(w, ord=2) for w in weights], repeats)
        auto = auto_method(D_IN, [width] * (depth - 1))
        methods = [auto] + ([m for m in ("jacrev", "power") if m != auto] if width * depth <= OTHER_MAX_SIZE else [])
        for method in methods:
            out = {}

            def measure():
                out["r"] = gradient_bound_terms(model, x, reduce="loss", target=y, method=method)

            t_m = best_of(measure, repeats) / args.batch
            r = out["r"]
            row = {
                "width": width,
                "depth": depth,
                "method": method,
                "auto": method == auto,
                "power_iters": int(r["power_iters"]),
                "fwd_bwd_ms_per_sample": 1e3 * t_fb,
                "measure_ms_per_sample": 1e3 * t_m,
                "measure_over_fwd_bwd": t_m / t_fb,
                "w_svd_ms_per_measurement": 1e3 * t_svd,
                "ratio_median": float(r["ratio"].median()),
                "violations": int((r["lhs"] > r["rhs"] * (1 + 1e-9)).sum()),
            }
            rows.append(row)
            print(
                f"{width:>6} {depth:>5} {method + ('*' if method == auto else ''):>7} {row['power_iters']:>5} "
                f"{row['fwd_bwd_ms_per_sample']:>10.3f} {row['measure_ms_per_sample']:>10.1f} "
                f"{row['measure_over_fwd_bwd']:>10.0f} {row['w_svd_ms_per_measurement']:>9.1f} "
                f"{row['ratio_median']:>9.3f}",
                flush=True,
            )
    print("* = the method auto picks; measure includes the W SVDs, amortized over the batch")
    out_dir = Path(__file__).resolve().parent / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {
        "batch": args.batch,
        "threads": args.threads,
        "d_in": D_IN,
        "classes": CLASSES,
        "dtype": "float64",
        "activation": "tanh",
        "torch": torch.__version__,
        "machine": platform.machine(),
        "processor": platform.processor(),
    }
    (out_dir / "gradient_penalty_bound.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
