"""Step time of the EG step-size optimizers against ``torch.optim.SGD``, for a few model sizes.

The figure the target is about: the **training step time ratio vs torch.optim.SGD** of ``EGStepSize`` at each
granularity (coordinate, layer, global), per MLP width; the target is ``<= 1.3``. The same is reported for
``EGStepSize(fused=True)`` (the update as one ``torch.compile``'d function; it is compiled in the untimed warm-up,
and that first step's time, mostly compilation, is reported on its own). ``EGFunnel``,
``HypergradientSGD`` and Adam are measured alongside for context and not held to it.

Two timings per optimizer and size, each the floor (minimum) over rounds in which every optimizer runs one block
of steps, in a fresh random order each round, so that load from other processes on a shared machine inflates the
baseline and the candidates alike and no optimizer always runs in the same slot:

- ``train``: one full training step (zero_grad, forward, backward, optimizer step) of a 2-hidden-layer MLP;
  this is the cost a user pays, and the target is ``train / SGD train <= 1.3``.
- ``step``: ``optimizer.step()`` alone on fixed gradients; EG rules touch several state buffers per parameter
  where SGD touches one, so this ratio is reported but not held to the target.

Each is timed on the wall clock (the figure) and on the thread's CPU clock (``cpu`` columns: time the process was
descheduled does not count, so on a busy machine it is the steadier cross-check; meaningful with ``--threads 1``,
the default, where all of torch's work runs on the calling thread).

Run ``python -m bench.eg_stepsize`` from the repository root; results go to ``bench/results/eg_stepsize.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import time
from pathlib import Path

import torch

from core.optim.eg import EGFunnel, EGStepSize, HypergradientSGD

TARGET = 1.3
GRANULARITY_OF = {"eg_coordinate": "coordinate", "eg_layer": "layer", "eg_global": "global"}  # held to TARGET
FUSED_OF = {"eg_coordinate_fused": "coordinate", "eg_layer_fused": "layer", "eg_global_fused": "global"}
# The bench times the optimizers as the job runs them: with both safety clamps on (the optimizers' defaults are the
# unclamped published rules), at the values these benchmarks were first measured with.
EG_CLAMPS = dict(max_log_step=0.5, max_log_nu=20.0)
FUNNEL_CLAMPS = dict(max_log_step=0.5, max_log_gain=20.0)
OPTIMIZERS = {
    "sgd": lambda ps, lr: torch.optim.SGD(ps, lr=lr),
    "eg_coordinate": lambda ps, lr: EGStepSize(ps, lr=lr, gamma=100.0, **EG_CLAMPS),
    "eg_layer": lambda ps, lr: EGStepSize(ps, lr=lr, gamma=1.0, granularity="layer", **EG_CLAMPS),
    "eg_global": lambda ps, lr: EGStepSize(ps, lr=lr, gamma=1.0, granularity="global", **EG_CLAMPS),
    "eg_coordinate_fused": lambda ps, lr: EGStepSize(ps, lr=lr, gamma=100.0, fused=True, **EG_CLAMPS),
    "eg_layer_fused": lambda ps, lr: EGStepSize(ps, lr=lr, gamma=1.0, granularity="layer", fused=True, **EG_CLAMPS),
    "eg_global_fused": lambda ps, lr: EGStepSize(ps, lr=lr, gamma=1.0, granularity="global", fused=True, **EG_CLAMPS),
    "eg_funnel": lambda ps, lr: EGFunnel(ps, lr=lr, gamma_p=100.0, gamma_s=1.0, **FUNNEL_CLAMPS),
    "hypergradient": lambda ps, lr: HypergradientSGD(ps, lr=lr, beta=1e-3, lr_floor=0.0),
    "adam": lambda ps, lr: torch.optim.Adam(ps, lr=lr),
}


def _model(width: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(width, width),
        torch.nn.ReLU(),
        torch.nn.Linear(width, width),
        torch.nn.ReLU(),
        torch.nn.Linear(width, 10),
    )


def _block(fn, n: int) -> tuple[float, float]:
    """Seconds per call of ``fn`` over ``n`` calls: (wall clock, this thread's CPU clock)."""
    wall, cpu = time.perf_counter(), time.thread_time()
    for _ in range(n):
        fn()
    return (time.perf_counter() - wall) / n, (time.thread_time() - cpu) / n


def measure(width: int, batch: int, rounds: int, budget_s: float, seed: int = 0) -> dict:
    """Floors of train-step and optimizer-step time for every optimizer on one MLP width.

    The train step runs on a fixed batch at a small rate, and ``step`` alone on a separate copy with fixed
    gradients and a negligible rate, so every timed operation is ordinary finite arithmetic (no inf/NaN, which
    some CPUs process at a different speed); the final losses are checked to be finite.
    """
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, width, generator=gen)
    y = torch.randint(0, 10, (batch,), generator=gen)
    loss_of = lambda m: torch.nn.functional.cross_entropy(m(x), y)  # noqa: E731
    setups = {}
    for name, make in OPTIMIZERS.items():
        model, still = _model(width, 0), _model(width, 0)
        opt = make(list(model.parameters()), 1e-3)
        still_opt = make(list(still.parameters()), 1e-12)
        loss_of(still).backward()

        def train(model=model, opt=opt):
            opt.zero_grad(set_to_none=True)
            loss_of(model).backward()
            opt.step()

        first = time.perf_counter()
        train()  # for a fused optimizer this compiles its update: timed here, outside the rounds
        first = time.perf_counter() - first
        train()
        still_opt.step()
        setups[name] = (model, train, still_opt.step, first)
    probe = _block(setups["sgd"][1], 3)[0]  # steps per block: all rounds of all optimizers fit the budget
    n = max(1, min(200, int(budget_s / (rounds * len(setups) * 2 * probe * 1.5))))
    timings = ("train", "step", "train_cpu", "step_cpu")
    floors = {name: dict.fromkeys(timings, float("inf")) for name in setups}
    order, shuffle = list(setups), random.Random(seed).shuffle
    for _ in range(rounds):
        shuffle(order)
        for name in order:
            _, train, step, _ = setups[name]
            f = floors[name]
            wall, cpu = _block(train, n)
            f["train"], f["train_cpu"] = min(f["train"], wall), min(f["train_cpu"], cpu)
            wall, cpu = _block(step, n)
            f["step"], f["step_cpu"] = min(f["step"], wall), min(f["step_cpu"], cpu)
    params = sum(p.numel() for p in setups["sgd"][0].parameters())
    base = floors["sgd"]
    rows = {}
    for name, f in floors.items():
        with torch.no_grad():
            finite = bool(torch.isfinite(loss_of(setups[name][0])))
        rows[name] = {
            "train_ms": 1e3 * f["train"],
            "step_ms": 1e3 * f["step"],
            "finite": finite,
            "train_ratio": f["train"] / base["train"],
            "step_ratio": f["step"] / base["step"],
            "first_step_s": setups[name][3],
            "train_ratio_cpu": f["train_cpu"] / base["train_cpu"],
            "step_ratio_cpu": f["step_cpu"] / base["step_cpu"],
        }
    return {
        "width": width,
        "batch": batch,
        "parameters": params,
        "steps_per_block": n,
        "rounds": rounds,
        "optimizers": rows,
    }


def _verdict(ratio: float) -> str:
    return "meets" if ratio <= TARGET else "MISSES"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--budget-s", type=float, default=25.0, help="time budget per width")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0, help="seed of the per-round order of the optimizers")
    parser.add_argument("--out", type=Path, default=Path("bench/results/eg_stepsize.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = [measure(w, args.batch, args.rounds, args.budget_s, args.seed) for w in args.widths]

    header = (
        f"{'width':>6} {'params':>9} {'optimizer':>14} {'train ms':>9} {'x SGD':>6} {'cpu x':>6} "
        f"{'step ms':>8} {'x SGD':>6} {'cpu x':>6}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        for name, row in r["optimizers"].items():
            flag = "" if name not in GRANULARITY_OF or row["train_ratio"] <= TARGET else "  > target"
            flag += "" if row["finite"] else "  (non-finite loss)"
            print(
                f"{r['width']:>6} {r['parameters']:>9} {name:>14} {row['train_ms']:>9.3f} "
                f"{row['train_ratio']:>6.2f} {row['train_ratio_cpu']:>6.2f} {row['step_ms']:>8.3f} "
                f"{row['step_ratio']:>6.2f} {row['step_ratio_cpu']:>6.2f}{flag}"
            )

    # the figure the target is about: EGStepSize's training step time ratio vs SGD, per width and granularity
    def table(names: dict[str, str], title: str) -> tuple[dict, dict]:
        ratios = {
            g: {str(r["width"]): r["optimizers"][name]["train_ratio"] for r in results} for name, g in names.items()
        }
        ratios_cpu = {
            g: {str(r["width"]): r["optimizers"][name]["train_ratio_cpu"] for r in results} for name, g in names.items()
        }
        print(
            f"\n{title} training step time ratio vs torch.optim.SGD (zero_grad + forward + backward + step, "
            f"floor of {args.rounds} interleaved rounds; target <= {TARGET}; cpu-clock ratio in brackets)"
        )
        print(f"{'width':>6} {'params':>9}" + "".join(f" {g:>20}" for g in ratios))
        for r in results:
            cells = "".join(
                f" {ratios[g][str(r['width'])]:>5.2f} ({ratios_cpu[g][str(r['width'])]:.2f}) "
                f"{_verdict(ratios[g][str(r['width'])]):>6}"
                for g in ratios
            )
            print(f"{r['width']:>6} {r['parameters']:>9}{cells}")
        return ratios, ratios_cpu

    fused, fused_cpu = table(FUSED_OF, "EGStepSize(fused=True)")
    print(
        "first step of EGStepSize(fused=True), compilation included, s: "
        + "; ".join(
            f"width {r['width']} " + "/".join(f"{r['optimizers'][n]['first_step_s']:.1f}" for n in FUSED_OF)
            for r in results
        )
        + " ("
        + "/".join(FUSED_OF.values())
        + "; later widths recompile for the new shapes)"
    )
    fused_worst = max(v for per in fused.values() for v in per.values())
    print(
        f"EGStepSize(fused=True) within {TARGET}x of SGD at every width and granularity: "
        f"{'yes' if fused_worst <= TARGET else 'no'} (worst {fused_worst:.2f})"
    )
    by_granularity, by_granularity_cpu = table(GRANULARITY_OF, "EGStepSize (eager)")
    worst_width, worst_granularity, worst = max(
        ((w, g, v) for g, per in by_granularity.items() for w, v in per.items()), key=lambda t: t[2]
    )
    within = worst <= TARGET
    print(
        f"EGStepSize within {TARGET}x of SGD at every width and granularity: {'yes' if within else 'no'} "
        f"(worst {worst:.2f}: {worst_granularity} at width {worst_width})"
    )
    others = [n for n in OPTIMIZERS if n != "sgd" and n not in GRANULARITY_OF and n not in FUSED_OF]
    print(
        "not held to the target: "
        + ", ".join(f"{n} " + "/".join(f"{r['optimizers'][n]['train_ratio']:.2f}" for r in results) for n in others)
        + f" (widths {'/'.join(str(w) for w in args.widths)})"
    )

    report = {
        "target_train_ratio": TARGET,
        "worst_train_ratio": worst,
        "within_target": within,
        "worst_at": f"{worst_granularity} @ width {worst_width}",
        "eg_stepsize_train_ratio_vs_sgd": by_granularity,
        "eg_stepsize_train_ratio_vs_sgd_cpu_clock": by_granularity_cpu,
        "eg_stepsize_fused_train_ratio_vs_sgd": fused,
        "eg_stepsize_fused_train_ratio_vs_sgd_cpu_clock": fused_cpu,
        "eg_stepsize_fused_worst_train_ratio": fused_worst,
        "threads": args.threads,
        "torch": torch.__version__,
        "machine": platform.machine(),
        "processor": platform.processor(),
        "loadavg_1_5_15": list(os.getloadavg()),
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
