"""Benchmark for techniques on a user's own model (core.networks).

1. AccumAdam (accumulation inside the moments) vs explicit-buffer Adam on a GPT-2-small-sized config (124M
   parameters): bytes kept between micro-steps (optimizer state + gradient buffer) and seconds per micro-step
   (forward, backward and the optimizer): the median over ``--repeats`` windows of k micro-steps per arm, the arms
   alternating, after a warm-up window.
2. ``init_averaging`` on a BERT-base-sized config (110M): seconds to build it, table its non-square weights and
   measure forward/backward variance ratios for its own init and each averaged one.
3. The pre-queue memory estimate (meta build) of the GPT-2 run against its measured peak (torch's MemTracker).

Run from the repository root: ``python -m bench.own_model [--seq 32] [--k 4] [--device cpu]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch.distributed._tools.mem_tracker import MemTracker

from core.averaged_init import MEANS
from core.networks.analysis import (
    accumulation_memory,
    layer_table,
    reinit_nonsquare_,
    variance_ratios,
)
from core.networks.budget import Workload, estimate
from core.networks.build import build
from core.networks.meta_summary import summarize
from core.networks.spec import HFConfigModel

GPT2_SMALL = {
    "model_type": "gpt2",
    "n_embd": 768,
    "n_layer": 12,
    "n_head": 12,
    "vocab_size": 50257,
    "n_positions": 1024,
}
BERT_BASE = {
    "model_type": "bert",
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "vocab_size": 30522,
    "max_position_embeddings": 512,
}


def accumulation(args) -> dict:
    spec = HFConfigModel(source="hf_config", config=GPT2_SMALL)
    torch.manual_seed(0)
    built = build(spec, device=args.device)
    gen = torch.Generator().manual_seed(0)
    batches = [built.sample_inputs(args.batch, args.seq, None, None, args.device, gen) for _ in range(args.k)]
    accumulation_memory(built, batches, "adam")  # warm-up window: allocator, kernels
    # the arms alternate window by window, so load drift on a shared machine hits both alike; medians reported
    windows = [accumulation_memory(built, batches, "adam") for _ in range(args.repeats)]
    out = windows[-1].as_dict()
    for key in ("explicit_seconds_per_micro_step", "chi_exact_seconds_per_micro_step"):
        out[key] = statistics.median(getattr(w, key) for w in windows)
    n_params = sum(p.numel() for p in built.module.parameters())
    return {
        "config": "gpt2-small (124M)",
        "n_params": n_params,
        "k": args.k,
        "batch": args.batch,
        "seq_len": args.seq,
        "windows": args.repeats,
        **out,
    }


def budget_vs_peak(args) -> dict:
    """The estimate the API makes before queueing, against two measured Adam steps on this machine."""
    work = Workload(batch=args.batch, seq_len=args.seq)
    summary = summarize({"model": {"source": "hf_config", "config": GPT2_SMALL}, "input": work.input()})
    est = estimate(summary["n_params"], summary["activation_bytes"], work)
    built = build(HFConfigModel(source="hf_config", config=GPT2_SMALL), device=args.device)
    opt = torch.optim.Adam(built.module.parameters())
    gen = torch.Generator().manual_seed(0)
    tracker = MemTracker()
    tracker.track_external(built.module, opt)
    with tracker:
        for _ in range(2):
            tracker.reset_mod_stats()
            ids, _ = built.sample_inputs(args.batch, args.seq, None, None, args.device, gen)
            built.loss(ids).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    peak = tracker.get_tracker_snapshot("peak")[torch.device(args.device)]["Total"]
    return {"estimate_bytes": est.total, "measured_peak_bytes": peak, "ratio": est.total / peak}


def init_analysis(args) -> dict:
    t0 = time.perf_counter()
    torch.manual_seed(0)
    built = build(HFConfigModel(source="hf_config", config=BERT_BASE), device=args.device)
    t_build = time.perf_counter() - t0
    gen = torch.Generator().manual_seed(0)
    ids, _ = built.sample_inputs(args.batch, 128, None, None, args.device, gen)
    t1 = time.perf_counter()
    rows = layer_table(built.module, list(MEANS))
    own = variance_ratios(built, ids, gen)
    ratios = {}
    for mean in MEANS:
        reinit_nonsquare_(built.module, mean, "normal", gen)
        ratios[mean] = variance_ratios(built, ids, gen)
    t_analyse = time.perf_counter() - t1
    return {
        "config": "bert-base (110M)",
        "n_params": sum(p.numel() for p in built.module.parameters()),
        "nonsquare_weights": len(rows),
        "batch": args.batch,
        "seq_len": 128,
        "build_seconds": t_build,
        "analyse_seconds": t_analyse,
        "own_init": own,
        "means": ratios,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq", type=int, default=32)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3, help="timed windows per arm (median)")
    args = parser.parse_args()
    out = {"accumulation": accumulation(args), "budget": budget_vs_peak(args), "init_averaging": init_analysis(args)}
    a, b, i = out["accumulation"], out["budget"], out["init_averaging"]
    mib = 2**20
    print(
        f"| {a['config']} | explicit-buffer Adam | {a['explicit_buffer_bytes'] / mib:.1f} MiB kept | "
        f"{a['explicit_seconds_per_micro_step']:.2f} s/micro-step |"
    )
    print(
        f"| {a['config']} | AccumAdam (chi exact) | {a['chi_exact_bytes'] / mib:.1f} MiB kept | "
        f"{a['chi_exact_seconds_per_micro_step']:.2f} s/micro-step |"
    )
    print(
        f"saving {a['saving_bytes'] / mib:.1f} MiB = one parameter-sized tensor: "
        f"{a['saving_is_one_parameter_sized_tensor']}"
    )
    print(
        f"budget estimate {b['estimate_bytes'] / mib:.0f} MiB vs measured peak {b['measured_peak_bytes'] / mib:.0f}"
        f" MiB (x{b['ratio']:.2f})"
    )
    print(
        f"init_averaging on {i['config']}: build {i['build_seconds']:.1f} s, analyse {i['analyse_seconds']:.1f} s "
        f"({i['nonsquare_weights']} non-square weights, own + {len(MEANS)} means)"
    )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
