"""Benchmark for ``momentum_accumulation``: optimizer step time and the bytes kept between micro-steps.

Step time: AccumAdam / AccumSGDM (k=1, i.e. an update every call) against torch.optim.Adam / SGD (default
implementation, and foreach=True), plus the cost per micro-step of accumulating k=4 micro-batches either inside the
momentum or in an explicit gradient buffer followed by a torch step. Memory: optimizer state plus, for explicit
accumulation, the gradient buffer that must survive between micro-steps.

Run from the repository root: ``python -m bench.momentum_accumulation [--device cuda] [--reps N]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from core.optim.accum import AccumAdam, AccumSGDM, state_bytes

SHAPES = {
    "8 x 1024x1024 (8.4M params)": [(1024, 1024)] * 8 + [(1024,)] * 8,
    "200 x 64x64 (0.8M params)": [(64, 64)] * 200 + [(64,)] * 200,
}
K = 4


def _params(shapes, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    ps = [torch.nn.Parameter(torch.randn(s, generator=gen).to(device)) for s in shapes]
    grads = [torch.randn(s, generator=gen).to(device) for s in shapes]
    for p, g in zip(ps, grads):
        p.grad = g.clone()
    return ps, grads


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time_interleaved(fns: dict, device, reps, warmup=3) -> dict[str, float]:
    """Median seconds per call of each function; calls alternate between functions so load drift on a shared
    machine hits every case alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def _explicit_window(opt, ps, grads, buffers):
    """k micro-steps of explicit accumulation (the first writes the buffer, the rest add) and one torch step."""

    def window():
        torch._foreach_copy_(buffers, grads)
        for _ in range(K - 1):
            torch._foreach_add_(buffers, grads)
        for p, b in zip(ps, buffers):
            p.grad = b
        torch._foreach_div_(buffers, K)
        opt.step()

    return window


def _accum_window(opt):
    def window():
        for _ in range(K):
            opt.step()

    return window


def bench_step_time(device, reps) -> list[dict]:
    rows = []
    for label, shapes in SHAPES.items():
        for family in ("adam", "sgdm"):
            if family == "adam":
                torch_cls, accum_cls, extra = torch.optim.Adam, AccumAdam, {}
            else:
                torch_cls, accum_cls, extra = torch.optim.SGD, AccumSGDM, {"momentum": 0.9}
            calls = {}  # name -> (function, micro-steps per call)
            for name, make in (
                (f"torch {torch_cls.__name__} (default)", lambda ps: torch_cls(ps, lr=1e-3, **extra)),
                (f"torch {torch_cls.__name__} (foreach)", lambda ps: torch_cls(ps, lr=1e-3, foreach=True, **extra)),
                (f"{accum_cls.__name__} k=1", lambda ps: accum_cls(ps, lr=1e-3)),
            ):
                ps, _ = _params(shapes, device)
                calls[name] = (make(ps).step, 1)
            ps, grads = _params(shapes, device)
            buffers = [torch.zeros_like(p) for p in ps]
            calls[f"explicit buffer + torch (k={K}), per micro-step"] = (
                _explicit_window(torch_cls(ps, lr=1e-3, **extra), ps, grads, buffers),
                K,
            )
            ps, _ = _params(shapes, device)
            calls[f"{accum_cls.__name__} k={K}, per micro-step"] = (
                _accum_window(accum_cls(ps, lr=1e-3, accum_steps=K)),
                K,
            )
            secs = _time_interleaved({name: fn for name, (fn, _) in calls.items()}, device, reps)
            base = secs[f"torch {torch_cls.__name__} (default)"]
            for name, (_, per) in calls.items():
                rows.append(
                    {
                        "shapes": label,
                        "family": family,
                        "case": name,
                        "ms_per_micro_step": 1e3 * secs[name] / per,
                        "vs_torch_default": secs[name] / per / base,
                    }
                )
    return rows


def bench_memory(device) -> list[dict]:
    """Bytes alive between micro-steps: optimizer state, plus the gradient buffer for explicit accumulation."""
    rows = []
    shapes = SHAPES["8 x 1024x1024 (8.4M params)"]
    for family in ("adam", "sgdm"):
        ps, _ = _params(shapes, device)
        param_bytes = sum(p.numel() * p.element_size() for p in ps)
        if family == "adam":
            torch_opt, ours = torch.optim.Adam(ps, lr=1e-3), AccumAdam(ps, lr=1e-3, accum_steps=K)
        else:
            torch_opt, ours = torch.optim.SGD(ps, lr=1e-3, momentum=0.9), AccumSGDM(ps, lr=1e-3, accum_steps=K)
        torch_opt.step()
        ours.step()
        explicit = state_bytes(torch_opt) + param_bytes
        inside = state_bytes(ours)
        rows.append(
            {
                "family": family,
                "param_bytes": param_bytes,
                "torch_state_plus_buffer_bytes": explicit,
                "accum_state_bytes": inside,
                "saved_bytes": explicit - inside,
                "saved_in_param_tensors": (explicit - inside) / param_bytes,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (1 keeps timings stable on shared boxes)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    times = bench_step_time(device, args.reps)
    memory = bench_memory(device)
    print(f"device={device} threads={args.threads} torch={torch.__version__} reps={args.reps} (median)")
    print(f"{'parameters':30s} {'case':52s} {'ms/step':>9s} {'vs torch':>9s}")
    for r in times:
        print(f"{r['shapes']:30s} {r['case']:52s} {r['ms_per_micro_step']:9.3f} {r['vs_torch_default']:8.2f}x")
    print(
        f"\n{'family':6s} {'param MiB':>10s} {'torch state + buffer MiB':>25s} {'accum state MiB':>16s} "
        f"{'saved (param tensors)':>22s}"
    )
    for r in memory:
        mib = 2**20
        print(
            f"{r['family']:6s} {r['param_bytes'] / mib:10.2f} {r['torch_state_plus_buffer_bytes'] / mib:25.2f} "
            f"{r['accum_state_bytes'] / mib:16.2f} {r['saved_in_param_tensors']:22.4f}"
        )
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "momentum_accumulation.json").write_text(
        json.dumps(
            {
                "device": str(device),
                "threads": args.threads,
                "torch": torch.__version__,
                "reps": args.reps,
                "step_time": times,
                "memory": memory,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
