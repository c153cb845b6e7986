"""Held-out evaluation throughput of L_K (rows x K per second): batched rows with K chunked vs a per-row loop.

Run from the repository root: ``python -m bench.vae_density [--device cuda] [--threads 1]``. Uses the digits set
binarized (64 dims, held-out 20 %) and a VAE 64-200-200-8 with a Bernoulli decoder. Throughput does not depend on
the weights, so the model is used at its seeded initialization (no training). Three ways to get L_K for every row:
  * naive: one held-out row at a time, all K draws in one pass (memory grows with K);
  * chunked-auto: EVAL_BATCH rows at once, K split into chunks sized by core.vae.chunk_size_for (what the job does);
  * chunked-64k: EVAL_BATCH rows at once, chunks of 65 536 rows (one big chunk per pass, accelerator style).
Each figure is the best of --repeats runs (the naive loop stops after TIME_BUDGET_S and counts the rows it did).
Writes bench/results/vae_density.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from core.data import load_builtin
from core.vae import VAE, chunk_size_for

EVAL_BATCH = 256
BIG_CHUNK_ROWS = 1 << 16
TIME_BUDGET_S = 2.0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _batched(model: VAE, x: torch.Tensor, k: int, gen: torch.Generator, chunk_rows: int | None) -> torch.Tensor:
    out = []
    for i in range(0, x.shape[0], EVAL_BATCH):
        batch = x[i : i + EVAL_BATCH]
        chunk = None if chunk_rows is None else max(1, chunk_rows // batch.shape[0])
        out.append(model.log_likelihood(batch, k, chunk_size=chunk, generator=gen))
    return torch.cat(out)


def _naive(model: VAE, x: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    out = []
    start = time.perf_counter()
    for i in range(x.shape[0]):
        out.append(model.log_likelihood(x[i : i + 1], k, chunk_size=k, generator=gen))
        if time.perf_counter() - start > TIME_BUDGET_S:
            break
    return torch.cat(out)


def _best(fn, repeats: int, device: torch.device) -> tuple[torch.Tensor, float]:
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return result, best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads (1: this shared 2-core box stalls badly with 2 OpenMP threads)",
    )
    parser.add_argument("--ks", type=int, nargs="+", default=[10, 100, 1000, 5000])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default="bench/results/vae_density.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    pixels = load_builtin("digits", 0)["x"]
    rng = np.random.default_rng(0)
    binary = (rng.random(pixels.shape) < pixels).astype(np.float32)
    heldout = torch.from_numpy(binary[rng.permutation(len(binary))[: len(binary) // 5]]).to(device)
    model = VAE(64, 8, [200, 200], "bernoulli", generator=torch.Generator().manual_seed(0)).to(device).eval()
    row_bytes = model.activation_bytes_per_row()
    auto_chunk = chunk_size_for(EVAL_BATCH, row_bytes, device)

    rows = []
    with torch.no_grad():
        _batched(model, heldout[:8], 10, torch.Generator(device=device).manual_seed(0), None)  # warm-up
        for k in args.ks:
            gen = torch.Generator(device=device).manual_seed(k)
            auto, t_auto = _best(lambda: _batched(model, heldout, k, gen, None), args.repeats, device)
            big, t_big = _best(lambda: _batched(model, heldout, k, gen, BIG_CHUNK_ROWS), args.repeats, device)
            naive, t_naive = _best(lambda: _naive(model, heldout, k, gen), args.repeats, device)
            n, n_naive = heldout.shape[0], naive.shape[0]
            rate = {"chunked_auto": n * k / t_auto, "chunked_64k": n * k / t_big, "naive": n_naive * k / t_naive}
            rows.append(
                {
                    "k": k,
                    "rows": int(n),
                    "rows_naive": int(n_naive),
                    **{f"{name}_samples_x_k_per_s": value for name, value in rate.items()},
                    "speedup_auto_vs_naive": rate["chunked_auto"] / rate["naive"],
                    "mean_L_K_chunked_auto": float(auto.mean()),
                    "mean_L_K_chunked_64k": float(big.mean()),
                    "mean_L_K_naive": float(naive.mean()),
                    "mean_L_K_chunked_auto_same_rows": float(auto[:n_naive].mean()),
                    # widest decoder activation alive at once (what chunking bounds)
                    "activation_bytes_chunked_auto": min(auto_chunk, k) * EVAL_BATCH * row_bytes,
                    "activation_bytes_naive": k * row_bytes,
                    "activation_bytes_batched_unchunked": k * EVAL_BATCH * row_bytes,
                }
            )

    print(
        f"device={device} threads={torch.get_num_threads()} model=64-200-200-8 bernoulli (untrained), "
        f"digits held-out {heldout.shape[0]} rows, batch {EVAL_BATCH}, auto chunk {auto_chunk} draws "
        f"({auto_chunk * EVAL_BATCH} rows)"
    )
    print(
        f"{'K':>5} {'naive rows':>10} {'auto rows*K/s':>14} {'64k rows*K/s':>13} {'naive rows*K/s':>15} "
        f"{'auto/naive':>10} {'L_K auto*':>10} {'L_K naive':>10}"
    )
    for r in rows:
        print(
            f"{r['k']:>5} {r['rows_naive']:>10} {r['chunked_auto_samples_x_k_per_s']:>14.3e} "
            f"{r['chunked_64k_samples_x_k_per_s']:>13.3e} {r['naive_samples_x_k_per_s']:>15.3e} "
            f"{r['speedup_auto_vs_naive']:>10.2f} {r['mean_L_K_chunked_auto_same_rows']:>10.3f} "
            f"{r['mean_L_K_naive']:>10.3f}"
        )
    print("* mean over the rows the naive loop reached, for a like-for-like comparison (independent draws)")
    last = rows[-1]
    print(
        f"activations alive at K={last['k']}: chunked-auto {last['activation_bytes_chunked_auto'] / 2**20:.1f} MiB, "
        f"naive {last['activation_bytes_naive'] / 2**20:.1f} MiB, batch of {EVAL_BATCH} unchunked "
        f"{last['activation_bytes_batched_unchunked'] / 2**20:.0f} MiB"
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "device": str(device),
                "threads": torch.get_num_threads(),
                "model": "VAE 64-200-200-8 bernoulli (untrained)",
                "dataset": "digits binarized",
                "eval_batch": EVAL_BATCH,
                "auto_chunk_draws": auto_chunk,
                "big_chunk_rows": BIG_CHUNK_ROWS,
                "results": rows,
            },
            indent=2,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
