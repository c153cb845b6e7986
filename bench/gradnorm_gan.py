"""Cost of each critic constraint per training step: wall time and memory, GN and GraN against GP and no constraint.

GN, GraN and the plain normalization take an input gradient with create_graph=True in both the critic and the
generator update (double backprop); GP does it only in the critic update, on interpolates. This script times the
job's own training step (``Trainer.step``: n_critic critic updates and one generator update) for every constraint
on the same data, nets and seed, and counts the bytes autograd saves for backward in one critic and one generator
update (plus the CUDA allocator peak on a GPU).

Rounds interleave the constraints so that load from other processes on a shared machine hits them alike; the
figure per constraint is the median over rounds of the mean step time within a round.

    python -m bench.gradnorm_gan                 # ring8 MLP; digits conv critic (GPU: larger, longer)
    python -m bench.gradnorm_gan --device cuda
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from core.data import load_builtin
from core.gan import mixture
from core.techniques.gradnorm_gan.run import SavedBytes, Trainer
from core.techniques.gradnorm_gan.spec import GradnormGanParams

CONSTRAINTS = ("none", "clip", "spectral", "gp", "gn", "gran", "plain_norm")
RESULTS = Path(__file__).resolve().parent / "results" / "gradnorm_gan.json"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    setting: dict,
    data: torch.Tensor,
    bounded: bool,
    device: torch.device,
    rounds: int,
    steps_per_round: int,
    warmup: int,
) -> dict[str, dict]:
    """Per constraint: median ms per step, saved bytes per critic / generator update, CUDA peak bytes."""
    trainers = {
        c: Trainer(GradnormGanParams(**setting, constraint=c), data.to(device), bounded, 0, device) for c in CONSTRAINTS
    }
    out = {}
    for c, tr in trainers.items():
        for _ in range(warmup):
            tr.step()
        meter_d, meter_g = SavedBytes(), SavedBytes()
        if device.type == "cuda":
            _sync(device)
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
        tr.step(meter_d, meter_g)
        peak = torch.cuda.max_memory_allocated(device) - base if device.type == "cuda" else None
        out[c] = {
            "saved_bytes_critic": meter_d.total,
            "saved_bytes_generator": meter_g.total,
            "peak_cuda_bytes": peak,
            "round_ms": [],
        }
    for _ in range(rounds):
        for c, tr in trainers.items():
            _sync(device)
            start = time.perf_counter()
            for _ in range(steps_per_round):
                tr.step()
            _sync(device)
            out[c]["round_ms"].append(1e3 * (time.perf_counter() - start) / steps_per_round)
    for row in out.values():
        row["ms_per_step"] = float(np.median(row["round_ms"]))
    return out


def ratios(table: dict[str, dict]) -> dict[str, float]:
    """Time and saved-memory ratios of the normalized critics to GP and to no constraint."""
    r = {}
    for num in ("gn", "gran"):
        for den in ("gp", "none"):
            r[f"time_{num}/{den}"] = table[num]["ms_per_step"] / table[den]["ms_per_step"]
            mem_num = table[num]["saved_bytes_critic"] + table[num]["saved_bytes_generator"]
            mem_den = table[den]["saved_bytes_critic"] + table[den]["saved_bytes_generator"]
            r[f"saved_memory_{num}/{den}"] = mem_num / mem_den
            if table[num]["peak_cuda_bytes"] is not None:
                r[f"cuda_peak_{num}/{den}"] = table[num]["peak_cuda_bytes"] / max(1, table[den]["peak_cuda_bytes"])
    return r


def print_table(title: str, table: dict[str, dict], rat: dict[str, float]) -> None:
    print(f"\n{title}")
    print(
        f"{'constraint':<11} {'ms/step':>9} {'saved KiB (D upd)':>18} {'saved KiB (G upd)':>18} {'CUDA peak MiB':>14}"
    )
    for c, row in table.items():
        peak = "-" if row["peak_cuda_bytes"] is None else f"{row['peak_cuda_bytes'] / 2**20:.1f}"
        print(
            f"{c:<11} {row['ms_per_step']:>9.2f} {row['saved_bytes_critic'] / 1024:>18.1f} "
            f"{row['saved_bytes_generator'] / 1024:>18.1f} {peak:>14}"
        )
    print("  " + "  ".join(f"{k}={v:.2f}" for k, v in rat.items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    device = torch.device(args.device)
    gpu = device.type == "cuda"

    x_ring = mixture("ring8", 10000, torch.Generator().manual_seed(0), 0.05)[0]
    mlp = {"dataset": "ring8", "width": 128, "depth": 3, "z_dim": 16, "n_critic": 1, "batch": 256}
    digits = torch.as_tensor(load_builtin("digits", 0)["x"])
    conv = {
        "dataset": "digits",
        "arch": "conv",
        "channels": 64 if gpu else 16,
        "z_dim": 32,
        "n_critic": 1,
        "batch": 256 if gpu else 64,
    }

    cases = {
        "ring8 MLP critic (width 128, depth 3, batch 256)": (mlp, x_ring, False, 40),
        f"digits conv critic (channels {conv['channels']}, batch {conv['batch']})": (
            conv,
            digits,
            True,
            40 if gpu else 10,
        ),
    }
    report = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(), "cases": {}}
    for title, (setting, data, bounded, steps) in cases.items():
        table = measure(setting, data, bounded, device, args.rounds, steps, warmup=3)
        rat = ratios(table)
        print_table(f"{title} on {device}", table, rat)
        report["cases"][title] = {
            "setting": setting,
            "steps_per_round": steps,
            "rounds": args.rounds,
            "table": table,
            "ratios": rat,
        }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
