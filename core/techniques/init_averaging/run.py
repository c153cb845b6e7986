"""Job kind ``init_averaging``: forward/backward variance through a stack initialized with averaged fans."""

from __future__ import annotations

import numpy as np
import torch

from core.averaged_init import Mean, averaged_normal_, averaged_uniform_, averaged_variance
from core.data import load_arrays
from core.networks.analysis import layer_table, nonsquare_weights, reinit_nonsquare_, variance_ratios
from core.networks.build import build
from core.networks.resolve import materialize
from core.networks.spec import TRANSFORMER_ARCHS, BuiltinModel, ExportedModel
from core.plots import new_figure, to_png
from core.renders import Recipe
from core.techniques.base import RunContext
from core.techniques.init_averaging.exported import exported_inputs
from core.techniques.init_averaging.spec import InitAveragingParams

ACTIVATIONS = {"linear": torch.nn.Identity, "relu": torch.nn.ReLU, "tanh": torch.nn.Tanh}


def predicted_ratios(widths: list[int], mean: Mean) -> tuple[float, float]:
    """Linear-case second-moment ratios through the stack: forward Π m_i σ_i², backward Π n_i σ_i²."""
    fwd = bwd = 1.0
    for m, n in zip(widths, widths[1:]):
        var = averaged_variance(m, n, mean)
        fwd *= m * var
        bwd *= n * var
    return fwd, bwd


def _measure(params: InitAveragingParams, mean: Mean, gen: torch.Generator, device: torch.device):
    """One Monte Carlo draw: per-layer forward second moments and the input-gradient second moment."""
    assert params.widths is not None  # no model: the params' validator required widths
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
    assert x.grad is not None  # x is a leaf that requires grad
    backward = float(x.grad.pow(2).mean() / g_out.pow(2).mean())
    return moments, backward


def run(params: InitAveragingParams, ctx: RunContext) -> dict:
    if params.model is not None:
        return run_model(params, ctx)
    assert params.widths is not None  # no model: the params' validator required widths
    gen = torch.Generator().manual_seed(ctx.seed)
    out: dict = {
        "widths": params.widths,
        "activation": params.activation,
        "distribution": params.distribution,
        "means": {},
    }
    curves: dict[str, list[float]] = {}
    for k, mean in enumerate(params.means):
        draws = []
        for t in range(params.trials):
            ctx.check_cancelled()
            draws.append(_measure(params, mean, gen, ctx.device))
            ctx.progress((k + (t + 1) / params.trials) / len(params.means), f"{mean}: draw {t + 1}")
        out["means"][mean] = _mean_result(params.widths, mean, draws)
        curves[mean] = out["means"][mean]["layer_forward_moments"]
        for i, v in enumerate(curves[mean], start=1):
            ctx.metric(i, f"forward_moment/{mean}", v)
    out["predicted_is_linear_case"] = True
    # drawn when first asked for (core.renders): the run does not wait for matplotlib
    plot = Recipe(
        "init_averaging.forward_moments",
        {
            "curves": curves,
            "widths": params.widths,
            "activation": params.activation,
            "distribution": params.distribution,
        },
    )
    ctx.artifact("forward_moments.png", plot, "image/png")
    return out


def _mean_result(widths: list[int], mean: Mean, draws: list[tuple[list[float], float]]) -> dict:
    """One mean's reported figures from its Monte Carlo draws (per-layer forward moments, backward moment): the
    draws' averages beside the linear-case predictions, and the variances the init drew from."""
    per_layer = [0.0] * (len(widths) - 1)
    backward = 0.0
    for moments, bwd in draws:
        per_layer = [a + b / len(draws) for a, b in zip(per_layer, moments)]
        backward += bwd / len(draws)
    pred_fwd, pred_bwd = predicted_ratios(widths, mean)
    return {
        "layer_variances": [averaged_variance(m, n, mean) for m, n in zip(widths, widths[1:])],
        "layer_forward_moments": per_layer,
        "forward_ratio": per_layer[-1],
        "predicted_forward_ratio": pred_fwd,
        "backward_ratio": backward,
        "predicted_backward_ratio": pred_bwd,
    }


def _model_inputs(params: InitAveragingParams, ctx: RunContext, gen: torch.Generator):
    """(built model, one batch): standardised dataset rows for a classifier, uniform random tokens otherwise."""
    assert params.model is not None  # run_model's params name a model
    buildable, weights = materialize(params.model, ctx)
    if isinstance(buildable, BuiltinModel) and buildable.arch not in TRANSFORMER_ARCHS:
        arrays = load_arrays(params.dataset, ctx)
        x = torch.as_tensor(np.asarray(arrays["x"], dtype=np.float32)[: params.batch])
        x = (x - x.mean()) / (x.std() + 1e-8)
        classes = int(np.max(arrays["y"])) + 1 if "y" in arrays else 10
        built = build(buildable, features=x.shape[1], classes=max(classes, 2), weights=weights)
        inputs = x
    else:
        built = build(buildable, weights=weights)
        inputs, _ = built.sample_inputs(params.batch, params.seq_len, None, None, "cpu", gen)
    built.module.to(ctx.device)
    return built, inputs.to(ctx.device)


def _layer_profile(built, inputs: torch.Tensor, gen: torch.Generator) -> tuple[dict[str, float], list[float]]:
    """``variance_ratios`` through the whole model, and the second moment E[h²] of each non-square layer's output in
    the order the forward pass reaches them (the curve the job page draws: where the variance grows or fades)."""
    moments: list[float] = []

    def keep(_, __, output):
        if isinstance(output, torch.Tensor):
            moments.append(float(output.detach().double().pow(2).mean()))

    names = {name.rsplit(".", 1)[0] for name, _ in nonsquare_weights(built.module)}
    handles = [m.register_forward_hook(keep) for n, m in built.module.named_modules() if n in names]
    try:
        ratios = variance_ratios(built, inputs, gen)
    finally:
        for h in handles:
            h.remove()
    return ratios, moments


def run_model(params: InitAveragingParams, ctx: RunContext) -> dict:
    """The user's network: its non-square weights, and variance ratios for its own init and each averaged one."""
    gen = torch.Generator().manual_seed(ctx.seed)
    ctx.progress(0.02, "building the model")
    if isinstance(params.model, ExportedModel):
        built, inputs = exported_inputs(params, ctx)
    else:
        built, inputs = _model_inputs(params, ctx, gen)
    layers = layer_table(built.module, list(params.means))
    if not layers:
        raise ValueError("model: it has no non-square weight, so every averaged init equals its own")
    own, profile = _layer_profile(built, inputs, gen)
    profiles = {"own_init": profile}
    ctx.progress(0.1, "own initialisation measured")
    means = {}
    for k, mean in enumerate(params.means):
        fwd = bwd = 0.0
        summed: list[float] = []
        for t in range(params.trials):
            ctx.check_cancelled()
            reinit_nonsquare_(built.module, mean, params.distribution, gen)
            ratios, profile = _layer_profile(built, inputs, gen)
            fwd += ratios["forward_ratio"] / params.trials
            bwd += ratios["backward_ratio"] / params.trials
            summed = [a + b for a, b in zip(summed, profile)] if summed else profile
            ctx.progress(0.1 + 0.85 * (k + (t + 1) / params.trials) / len(params.means), f"{mean}: draw {t + 1}")
        means[mean] = {"forward_ratio": fwd, "backward_ratio": bwd}
        profiles[mean] = [v / params.trials for v in summed]
    for init, profile in profiles.items():
        for i, value in enumerate(profile):
            if np.isfinite(value):
                ctx.metric(i, f"layer_moment/{init}", value)
    ctx.artifact("model_variance_ratios.png", _model_plot(own, means), "image/png")
    ctx.artifact("layer_moments.png", _profile_plot(profiles), "image/png")
    return {
        "model": {
            "task": built.task,
            "n_params": sum(p.numel() for p in built.module.parameters()),
            "nonsquare_weights": len(layers),
        },
        "distribution": params.distribution,
        "own_init": own,
        "means": means,
        "layers": layers,
        "layer_moments": profiles,
    }


def _profile_plot(profiles: dict[str, list[float]]) -> bytes:
    fig, ax = new_figure()
    for init, profile in profiles.items():
        ax.plot(range(len(profile)), profile, "-", label=init.replace("_", " "))
    ax.set_yscale("log")
    ax.set_xlabel("non-square layer, in forward order")
    ax.set_ylabel("E[h²] of its output")
    ax.set_title("Second moment through the model's non-square layers, per initialisation")
    ax.legend(title="initialisation")
    return to_png(fig)


def _model_plot(own: dict, means: dict) -> bytes:
    fig, ax = new_figure()
    names = ["own init", *means]
    rows = [own, *means.values()]
    xs = np.arange(len(names))
    ax.bar(xs - 0.2, [r["forward_ratio"] for r in rows], 0.4, label="forward E[out²]/E[in²]")
    ax.bar(xs + 0.2, [r["backward_ratio"] for r in rows], 0.4, label="backward E[∂in²]/E[∂out²]")
    ax.axhline(1.0, color="gray", ls=":")
    ax.set_yscale("log")
    ax.set_xticks(xs, names)
    ax.set_ylabel("second-moment ratio through the whole model")
    ax.set_title("Variance through the model: its own init vs averaged fans on its non-square weights")
    ax.legend()
    return to_png(fig)
