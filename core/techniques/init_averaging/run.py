"""Job kind ``init_averaging``: forward/backward variance through a stack initialized with averaged fans."""
from __future__ import annotations

import torch

from core.init import averaged_normal_, averaged_uniform_, averaged_variance
from core.plots import new_figure, to_png
from core.techniques.base import RunContext
from core.techniques.init_averaging.spec import InitAveragingParams

ACTIVATIONS = {"linear": torch.nn.Identity, "relu": torch.nn.ReLU, "tanh": torch.nn.Tanh}


def predicted_ratios(widths: list[int], mean: str) -> tuple[float, float]:
    """Linear-case second-moment ratios through the stack: forward Π m_i σ_i², backward Π n_i σ_i²."""
    fwd = bwd = 1.0
    for m, n in zip(widths, widths[1:]):
        var = averaged_variance(m, n, mean)
        fwd *= m * var
        bwd *= n * var
    return fwd, bwd


def _measure(params: InitAveragingParams, mean: str, gen: torch.Generator, device: torch.device):
    """One Monte Carlo draw: per-layer forward second moments and the input-gradient second moment."""
    fill = averaged_normal_ if params.distribution == "normal" else averaged_uniform_
    layers = []
    for m, n in zip(params.widths, params.widths[1:]):
        lin = torch.nn.Linear(m, n, bias=False)
        fill(lin.weight, mean, generator=gen)
        layers.append(lin.to(device))
    act = ACTIVATIONS[params.activation]()
    x = torch.randn(params.batch, params.widths[0], generator=gen).to(device).requires_grad_()
    h, moments = x, []
    for i, lin in enumerate(layers):
        h = lin(h)
        if i < len(layers) - 1:
            h = act(h)
        moments.append(float(h.detach().pow(2).mean() / x.detach().pow(2).mean()))
    g_out = torch.randn(h.shape, generator=gen).to(device)
    h.backward(g_out)
    backward = float(x.grad.pow(2).mean() / g_out.pow(2).mean())
    return moments, backward


def run(params: InitAveragingParams, ctx: RunContext) -> dict:
    gen = torch.Generator().manual_seed(ctx.seed)
    out: dict = {"widths": params.widths, "activation": params.activation, "distribution": params.distribution,
                 "means": {}}
    curves = {}
    for k, mean in enumerate(params.means):
        per_layer = [0.0] * (len(params.widths) - 1)
        backward = 0.0
        for t in range(params.trials):
            ctx.check_cancelled()
            moments, bwd = _measure(params, mean, gen, ctx.device)
            per_layer = [a + b / params.trials for a, b in zip(per_layer, moments)]
            backward += bwd / params.trials
            ctx.progress((k + (t + 1) / params.trials) / len(params.means), f"{mean}: draw {t + 1}")
        for i, v in enumerate(per_layer, start=1):
            ctx.metric(i, f"forward_moment/{mean}", v)
        pred_fwd, pred_bwd = predicted_ratios(params.widths, mean)
        out["means"][mean] = {
            "layer_variances": [averaged_variance(m, n, mean) for m, n in zip(params.widths, params.widths[1:])],
            "layer_forward_moments": per_layer,
            "forward_ratio": per_layer[-1],
            "predicted_forward_ratio": pred_fwd,
            "backward_ratio": backward,
            "predicted_backward_ratio": pred_bwd,
        }
        curves[mean] = per_layer
    out["predicted_is_linear_case"] = True
    ctx.artifact("forward_moments.png", _plot(curves, params), "image/png")
    return out


def _plot(curves: dict[str, list[float]], params: InitAveragingParams) -> bytes:
    fig, ax = new_figure()
    layers = list(range(len(params.widths)))
    for mean, moments in curves.items():
        ax.plot(layers, [1.0] + moments, "o-", label=mean)
    ax.axhline(1.0, color="gray", ls=":")
    ax.set_yscale("log")
    ax.set_xticks(layers, [f"{i}\n({w})" for i, w in zip(layers, params.widths)])
    ax.set_xlabel("layer (width)")
    ax.set_ylabel("E[h²] / E[x²] (Monte Carlo)")
    ax.set_title(f"Forward second moment, {params.activation} activations, {params.distribution} init")
    ax.legend(title="mean of fans")
    return to_png(fig)
