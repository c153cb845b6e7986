"""Job kind ``gradient_penalty_bound``: how tight ‖∇_x f‖² Σ_t (1+‖h‖²)/(‖W‖²‖∂h/∂x‖²) ≤ ‖∇_θ f‖² is on a real MLP,
and how its factors move while the MLP trains (docs/techniques.md#gradient_penalty_bound).

Training runs in float32; every measurement runs on a float64 copy of the model, so that identity residuals sit
at rounding level and a reported violation means a real one, not float32 noise.
"""

from __future__ import annotations

import copy
import io
import math
from typing import Literal, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.data import load_arrays
from core.networks.resolve import load_exported
from core.networks.spec import ExportedModel
from core.penalty import gradient_bound_terms
from core.plots import new_figure, to_png
from core.techniques.gradient_penalty_bound.exported import ExportedChain
from core.techniques.gradient_penalty_bound.spec import (
    MAX_INPUT_DIM,
    POWER_MAX_ITER,
    POWER_TOL,
    GradientPenaltyBoundParams,
    check_budget,
    layer_dims,
)

VIOLATION_RTOL = 1e-9
"""lhs > rhs · (1 + this) counts as a violation: far above float64 rounding, far below any real gap."""
_ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "linear": nn.Identity}
_GAIN_NAME: dict[str, Literal["relu", "tanh", "linear"]] = {
    "relu": "relu",
    "tanh": "tanh",
    "gelu": "relu",
    "linear": "linear",
}


def build_mlp(dims: list[int], activation: str, init: str, gen: torch.Generator) -> nn.Sequential:
    """Linear layers with ``activation`` between them (not after the logits), initialized from ``gen``."""
    mods: list[nn.Module] = []
    gain = nn.init.calculate_gain(_GAIN_NAME[activation])
    for i, (a, b) in enumerate(zip(dims, dims[1:])):
        lin = nn.Linear(a, b)
        with torch.no_grad():
            if init == "default":
                bound = 1.0 / math.sqrt(a)
                nn.init.uniform_(lin.weight, -bound, bound, generator=gen)
                nn.init.uniform_(lin.bias, -bound, bound, generator=gen)
            else:
                if init == "xavier":
                    nn.init.xavier_normal_(lin.weight, gain=gain, generator=gen)
                elif init == "kaiming":
                    nn.init.normal_(lin.weight, 0.0, gain / math.sqrt(a), generator=gen)
                else:
                    nn.init.orthogonal_(lin.weight, gain=gain, generator=gen)
                lin.bias.zero_()
        mods.append(lin)
        if i < len(dims) - 2:
            mods.append(_ACTIVATIONS[activation]())
    return nn.Sequential(*mods)


def _optimizer(p: GradientPenaltyBoundParams, model: nn.Module) -> torch.optim.Optimizer:
    if p.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=p.lr)
    return torch.optim.SGD(model.parameters(), lr=p.lr, momentum=0.9 if p.optimizer == "momentum" else 0.0)


def _num(v) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None


def _median(t: torch.Tensor) -> float | None:
    finite = t[torch.isfinite(t)]
    return _num(finite.median()) if finite.numel() else None


def measure(model: nn.Module, xs: torch.Tensor, ys: torch.Tensor, p: GradientPenaltyBoundParams) -> dict:
    """Both sides of the bound on a float64 copy of ``model`` for the measurement inputs, summarized over samples
    (an exported chain's copy is its dense form: a convolution's parameters are its unrolled matrix's entries)."""
    m64 = model.dense() if isinstance(model, ExportedChain) else cast(nn.Sequential, copy.deepcopy(model).double())
    target: torch.Tensor | int | None
    if p.f == "loss":
        reduce, target = "loss", ys
    elif p.f == "logit":
        reduce, target = "logit", ys if p.target_class is None else p.target_class
    else:
        reduce, target = "sum", None
    r = gradient_bound_terms(
        m64, xs.double(), reduce=reduce, target=target, method=p.method, tol=POWER_TOL, max_iter=POWER_MAX_ITER
    )
    return summarize_terms(r)


def summarize_terms(r: dict) -> dict:
    """One measurement's reported figures from the bound's terms per sample (``gradient_bound_terms``): quantiles
    of lhs/rhs over the finite ratios, how many samples exceed the bound beyond rounding, the largest identity
    residual, and per layer the medians of its factors."""
    ratio = r["ratio"]
    finite = ratio[torch.isfinite(ratio)]
    qs = (
        [
            _num(v)
            for v in torch.quantile(finite, torch.tensor([0.1, 0.5, 0.9], dtype=finite.dtype, device=finite.device))
        ]
        if finite.numel()
        else [None, None, None]
    )
    return {
        "ratios": ratio.cpu().numpy(),
        "q10": qs[0],
        "median": qs[1],
        "q90": qs[2],
        "min": _num(finite.min()) if finite.numel() else None,
        "max": _num(finite.max()) if finite.numel() else None,
        "fro_median": _median(r["ratio_frobenius"]),
        "fro_max": _num(r["ratio_frobenius"][torch.isfinite(r["ratio_frobenius"])].max())
        if bool(torch.isfinite(r["ratio_frobenius"]).any())
        else None,
        "violations": int((r["lhs"] > r["rhs"] * (1 + VIOLATION_RTOL)).sum()),
        "violations_fro": int((r["lhs_frobenius"] > r["rhs"] * (1 + VIOLATION_RTOL)).sum()),
        "residual": max(float(layer["residual"].max()) for layer in r["layers"]),
        "power_iters": int(r["power_iters"]),
        "method": r["method"],
        "layers": [
            {
                "w_norm": _num(layer["w_norm"]),
                "w_fro": _num(layer["w_fro"]),
                "h_norm": _median(layer["h_norm"]),
                "jac_norm": _median(layer["jac_norm"]),
                "share": _median(layer["share"]),
            }
            for layer in r["layers"]
        ],
    }


def _plots(ctx, steps: list[int], history: list[dict], n_layers: int) -> None:
    fig, ax = new_figure()
    series = {
        k: np.array([np.nan if h[k] is None else h[k] for h in history])
        for k in ("q10", "median", "q90", "min", "max", "fro_median")
    }
    ax.fill_between(steps, series["q10"], series["q90"], alpha=0.3, label="spectral, 10–90% of samples")
    ax.plot(steps, series["median"], marker="o", label="spectral, median")
    ax.plot(steps, series["min"], ls=":", color="grey", label="spectral, min / max")
    ax.plot(steps, series["max"], ls=":", color="grey")
    ax.plot(steps, series["fro_median"], marker="s", label="Frobenius variant, median")
    ax.axhline(1.0, color="red", ls="--", label="bound (lhs = rhs)")
    ax.set_yscale("log")  # the Frobenius variant sits orders of magnitude below the spectral one
    ax.set_xlabel("training step")
    ax.set_ylabel("lhs / rhs  (dimensionless, log scale)")
    ax.set_title("Input- vs parameter-gradient bound: tightness over training")
    ax.legend(fontsize="small")
    ctx.artifact("bound_ratio.png", to_png(fig), "image/png")

    fig, ax = new_figure()
    for t in range(n_layers):
        (line,) = ax.plot(steps, [h["layers"][t]["w_norm"] for h in history], label=f"‖W^({t + 1})‖₂")
        if t > 0:
            ax.plot(
                steps,
                [h["layers"][t]["jac_norm"] for h in history],
                ls="--",
                color=line.get_color(),
                label=f"median ‖∂h^({t + 1})/∂x‖₂",
            )
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("spectral norm  (dimensionless)")
    ax.set_title("Per-layer factors of the bound")
    ax.legend(fontsize="small", ncol=2)
    ctx.artifact("layer_factors.png", to_png(fig), "image/png")


def run(params: GradientPenaltyBoundParams, ctx) -> dict:
    x_np, y_np, classes = _labelled_rows(params, ctx)
    n, d_in = x_np.shape
    gen = torch.Generator().manual_seed(ctx.seed)
    rng = np.random.default_rng(ctx.seed)
    model: nn.Module
    if isinstance(params.model, ExportedModel):
        model = ExportedChain(load_exported(params.model, ctx), d_in, classes)
        dims = model.dims
    else:
        dims = layer_dims(params, d_in, classes)
        model = build_mlp(dims, params.activation, params.init, gen).to(ctx.device)
    check_budget(params, d_in, classes, n, dims)
    x_all = torch.from_numpy(x_np).to(ctx.device)
    y_all = torch.from_numpy(y_np).to(ctx.device)
    pick = torch.from_numpy(rng.choice(n, size=min(params.samples, n), replace=False)).to(ctx.device)

    steps, history, loss = _train_measuring(params, ctx, model, x_all, y_all, pick, gen)
    with torch.no_grad():
        logits = torch.cat([model(chunk) for chunk in x_all.split(4096)])
        accuracy = float((logits.argmax(dim=1) == y_all).float().mean())
        full_loss = float(F.cross_entropy(logits, y_all))

    _plots(ctx, steps, history, len(dims) - 1)
    buf = io.BytesIO()
    np.save(buf, np.stack([h["ratios"] for h in history]))
    ctx.artifact("ratios.npy", buf.getvalue(), "application/x-npy")
    ctx.progress(1.0, "done")
    return {
        "jacobian_method": history[-1]["method"],
        "f": params.f,
        "input_dim": d_in,
        "classes": classes,
        "layer_dims": dims,
        "samples": int(pick.numel()),
        **_over_training(steps, history, len(dims) - 1),
        "final_loss": _num(full_loss),
        "final_accuracy": accuracy,
        "last_batch_loss": _num(loss.detach()),
    }


def _labelled_rows(params: GradientPenaltyBoundParams, ctx) -> tuple[np.ndarray, np.ndarray, int]:
    """The dataset's rows x (float32) and labels y (int64) and the number of classes, refused with the field and
    the reason when they cannot train a classifier by cross-entropy within the budget."""
    arrays = load_arrays(params.dataset, ctx)
    x_np = np.asarray(arrays["x"], dtype=np.float32)
    if x_np.ndim != 2 or x_np.shape[0] < 1:
        raise ValueError("dataset: x must be a non-empty (n, d) array")
    if "y" not in arrays:
        raise ValueError("dataset: needs integer labels y (training is by cross-entropy)")
    y_np = np.asarray(arrays["y"]).astype(np.int64)
    if y_np.shape != (x_np.shape[0],) or y_np.min() < 0:
        raise ValueError("dataset: y must hold one non-negative integer label per row of x")
    n, d_in = x_np.shape
    classes = max(int(y_np.max()) + 1, 2)
    if d_in > MAX_INPUT_DIM:
        raise ValueError(f"dataset: input dimension {d_in} exceeds {MAX_INPUT_DIM}")
    if params.target_class is not None and params.target_class >= classes:
        raise ValueError(f"target_class: the dataset has {classes} classes")
    return x_np, y_np, classes


def _train_measuring(
    params: GradientPenaltyBoundParams,
    ctx,
    model: nn.Module,
    x_all: torch.Tensor,
    y_all: torch.Tensor,
    pick: torch.Tensor,
    gen: torch.Generator,
) -> tuple[list[int], list[dict], torch.Tensor]:
    """Train by cross-entropy on random batches, measuring the bound on the picked samples before the first step,
    every ``every`` steps and after the last: the measured steps, one ``measure`` each, and the last batch's loss."""
    xs, ys = x_all[pick], y_all[pick]
    n = x_all.shape[0]
    opt = _optimizer(params, model)
    steps: list[int] = []
    history: list[dict] = []

    def record(step: int) -> None:
        ctx.check_cancelled()
        steps.append(step)
        history.append(measure(model, xs, ys, params))
        _log_measurement(ctx, step, history[-1])

    record(0)
    loss = torch.zeros(())
    for step in range(1, params.steps + 1):
        ctx.check_cancelled()
        idx = torch.randint(0, n, (min(params.batch_size, n),), generator=gen).to(ctx.device)
        logits = model(x_all[idx])
        loss = F.cross_entropy(logits, y_all[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ctx.metric(step, "loss", float(loss.detach()))
        if step % params.every == 0 or step == params.steps:
            record(step)
            ctx.progress(step / params.steps, f"step {step}/{params.steps}: median lhs/rhs {history[-1]['median']}")
    return steps, history, loss


def _log_measurement(ctx, step: int, m: dict) -> None:
    """One measurement's figures as metrics at ``step`` (those that are None, from no finite ratio, left out)."""
    for key in ("q10", "median", "q90", "max", "fro_median"):
        if m[key] is not None:
            ctx.metric(step, f"ratio/{key}", m[key])
    ctx.metric(step, "violations", m["violations"])
    ctx.metric(step, "residual/max", m["residual"])
    for t, layer in enumerate(m["layers"], start=1):
        for key in ("w_norm", "h_norm", "jac_norm", "share"):
            if layer[key] is not None:
                ctx.metric(step, f"layer{t}/{key}", layer[key])


def _over_training(steps: list[int], history: list[dict], n_layers: int) -> dict:
    """The measurements over training (one ``summarize_terms`` per measured step) as the result reports them:
    series per figure, violations summed over every measurement, the worst residual and power iterations."""
    return {
        "measured_steps": steps,
        "ratio": {k: [h[k] for h in history] for k in ("q10", "median", "q90", "min", "max")},
        "ratio_frobenius": {"median": [h["fro_median"] for h in history], "max": [h["fro_max"] for h in history]},
        "violations": sum(h["violations"] for h in history),
        "violations_frobenius": sum(h["violations_fro"] for h in history),
        "max_identity_residual": _num(max(h["residual"] for h in history)),
        "max_power_iters": max(h["power_iters"] for h in history),
        "layers": [
            {key: [h["layers"][t][key] for h in history] for key in ("w_norm", "w_fro", "h_norm", "jac_norm", "share")}
            for t in range(n_layers)
        ],
    }
