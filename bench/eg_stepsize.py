"""Step time of the EG step-size optimizers against ``torch.optim.SGD``, for a few model sizes.

Two timings per optimizer and size, each the floor (minimum) over interleaved rounds so that load from other
processes on a shared machine inflates the baseline and the candidate alike:

- ``train``: one full training step (zero_grad, forward, backward, optimizer step) of a 2-hidden-layer MLP;
  this is the cost a user pays, and the target is ``train / SGD train <= 1.3``.
- ``step``: ``optimizer.step()`` alone on fixed gradients; EG rules touch several state buffers per parameter
  where SGD touches one, so this ratio is reported but not held to the target.

Run ``python -m bench.eg_stepsize`` from the repository root; results go to ``bench/results/eg_stepsize.json``.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from core.optim.eg import EGFunnel, EGStepSize, HypergradientSGD

TARGET = 1.3
OPTIMIZERS = {
    "sgd": lambda ps, lr: torch.optim.SGD(ps, lr=lr),
    "eg_coordinate": lambda ps, lr: EGStepSize(ps, lr=lr, gamma=100.0),
    "eg_layer": lambda ps, lr: EGStepSize(ps, lr=lr, gamma=1.0, granularity="layer"),
    "eg_global": lambda ps, lr: EGStepSize(ps, lr=lr, gamma=1.0, granularity="global"),
    "eg_funnel": lambda ps, lr: EGFunnel(ps, lr=lr, gamma_p=100.0, gamma_s=1.0),
    "hypergradient": lambda ps, lr: HypergradientSGD(ps, lr=lr, beta=1e-3),
    "adam": lambda ps, lr: torch.optim.Adam(ps, lr=lr),
}


def _model(width: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.ReLU(), torch.nn.Linear(width, width),
                               torch.nn.ReLU(), torch.nn.Linear(width, 10))


def _block(fn, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n


def measure(width: int, batch: int, rounds: int, budget_s: float) -> dict:
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

        train()
        train()
        setups[name] = (model, train, still_opt.step)
    probe = _block(setups["sgd"][1], 3)  # steps per block: all rounds of all optimizers fit the budget
    n = max(1, min(200, int(budget_s / (rounds * len(setups) * 2 * probe * 1.5))))
    floors = {name: {"train": float("inf"), "step": float("inf")} for name in setups}
    for _ in range(rounds):
        for name, (_, train, step) in setups.items():
            floors[name]["train"] = min(floors[name]["train"], _block(train, n))
            floors[name]["step"] = min(floors[name]["step"], _block(step, n))
    params = sum(p.numel() for p in setups["sgd"][0].parameters())
    base = floors["sgd"]
    rows = {}
    for name, f in floors.items():
        with torch.no_grad():
            finite = bool(torch.isfinite(loss_of(setups[name][0])))
        rows[name] = {"train_ms": 1e3 * f["train"], "step_ms": 1e3 * f["step"], "finite": finite,
                      "train_ratio": f["train"] / base["train"], "step_ratio": f["step"] / base["step"]}
    return {"width": width, "batch": batch, "parameters": params, "steps_per_block": n, "rounds": rounds,
            "optimizers": rows}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--budget-s", type=float, default=25.0, help="time budget per width")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("bench/results/eg_stepsize.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = [measure(w, args.batch, args.rounds, args.budget_s) for w in args.widths]
    header = f"{'width':>6} {'params':>9} {'optimizer':>14} {'train ms':>9} {'x SGD':>6} {'step ms':>8} {'x SGD':>6}"
    print(header)
    print("-" * len(header))
    for r in results:
        for name, row in r["optimizers"].items():
            flag = "" if name == "sgd" or row["train_ratio"] <= TARGET else "  > target"
            flag += "" if row["finite"] else "  (non-finite loss)"
            print(f"{r['width']:>6} {r['parameters']:>9} {name:>14} {row['train_ms']:>9.3f} "
                  f"{row['train_ratio']:>6.2f} {row['step_ms']:>8.3f} {row['step_ratio']:>6.2f}{flag}")
    eg_names = [n for n in OPTIMIZERS if n not in ("sgd", "adam")]
    worst = max(r["optimizers"][n]["train_ratio"] for r in results for n in eg_names)
    print(f"\nworst train-step ratio of the EG / hypergradient optimizers: {worst:.2f} (target <= {TARGET})")
    report = {"target_train_ratio": TARGET, "worst_train_ratio": worst, "within_target": worst <= TARGET,
              "threads": args.threads, "torch": torch.__version__, "machine": platform.machine(),
              "processor": platform.processor(), "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
