"""Job kind ``eg_stepsize``: EG-adapted step sizes against fixed rates, momentum, Adam and hypergradient descent.

Every optimizer trains the same model from the same initialization on the same minibatches, at its base rate times
each of ``lr_scales`` (so deliberately bad rates, 10x too large or too small, can be compared), optionally under a
distribution shift that rotates the inputs every ``shift_every`` steps. The result holds loss/accuracy curves, the
per-layer trajectories of the adapted quantities (ν, p, s, α) and how long each run took to recover after a shift.
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict
from collections.abc import Sequence

import matplotlib.pyplot as plt  # noqa: E402  (after core.plots, which selects the Agg backend)
import numpy as np
import torch

from core.data import load_dataset
from core.data.loader import ArraysView, TextView
from core.data.windows import TextWindows
from core.networks.build import BuiltModel, build
from core.networks.resolve import materialize
from core.networks.tokens import token_rows
from core.optim.eg import EGFunnel, EGStepSize, HypergradientSGD
from core.plots import to_png
from core.techniques.base import RunContext
from core.techniques.eg_stepsize.spec import HOLDOUT, EGStepSizeParams, check_budget, dataset_needs, token_model

DIVERGED_LOSS = 1e6
EVAL_CHUNK = 256
QUANTITY_LABELS = {
    "nu": "ν (multiplier of lr)",
    "p": "p (per-coordinate gain)",
    "s": "s (scale)",
    "alpha": "α (learning rate)",
}


def plane_rotation(dim: int, angle: float, rng: np.random.Generator) -> np.ndarray:
    """An orthogonal ``dim × dim`` matrix turning ⌊dim/2⌋ random orthogonal planes by ``angle`` radians each.

    For even ``dim`` every vector turns by exactly ``angle``: ``<x, x R> = cos(angle) |x|²``.
    """
    q, r = np.linalg.qr(rng.standard_normal((dim, dim)))
    q = q * np.sign(np.diag(r))
    block = np.eye(dim)
    c, s = math.cos(angle), math.sin(angle)
    for i in range(0, dim - 1, 2):
        block[i : i + 2, i : i + 2] = [[c, s], [-s, c]]
    return q @ block @ q.T


def _labels(spec_names: list[str]) -> list[str]:
    """Names for the optimizers; a repeated name gets a suffix (``eg_stepsize``, ``eg_stepsize_2``)."""
    seen: dict[str, int] = {}
    out = []
    for name in spec_names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return out


def _build_model(
    dim: int, classes: int, params: EGStepSizeParams, gen: torch.Generator | None = None
) -> torch.nn.Sequential:
    """Linear or ReLU MLP classifier; with ``gen``, weights and biases ~ U(±1/√fan_in) (torch's default law)."""
    layers: OrderedDict[str, torch.nn.Module] = OrderedDict()
    width = dim
    if params.model == "mlp":
        for i in range(1, params.depth + 1):
            layers[f"fc{i}"] = torch.nn.Linear(width, params.hidden)
            layers[f"act{i}"] = torch.nn.ReLU()
            width = params.hidden
    layers["out"] = torch.nn.Linear(width, classes)
    model = torch.nn.Sequential(layers)
    if gen is not None:
        with torch.no_grad():
            for module in model:
                if isinstance(module, torch.nn.Linear):
                    bound = 1.0 / math.sqrt(module.in_features)
                    module.weight.uniform_(-bound, bound, generator=gen)
                    module.bias.uniform_(-bound, bound, generator=gen)
    return model


def make_optimizer(spec, lr: float, model: torch.nn.Module) -> torch.optim.Optimizer:
    """The optimizer a spec names, at learning rate ``lr`` (the spec's rate times the run's scale)."""
    ps = list(model.parameters())
    if spec.name == "sgd":
        return torch.optim.SGD(ps, lr=lr)
    if spec.name == "momentum":
        return torch.optim.SGD(ps, lr=lr, momentum=spec.momentum)
    if spec.name == "adam":
        return torch.optim.Adam(ps, lr=lr, betas=(spec.beta1, spec.beta2), eps=spec.eps)
    if spec.name == "hypergradient":
        return HypergradientSGD(ps, lr=lr, beta=spec.beta, lr_floor=spec.lr_floor)
    if spec.name == "eg_stepsize":
        return EGStepSize(
            ps,
            lr=lr,
            gamma=spec.gamma,
            granularity=spec.granularity,
            max_log_step=spec.max_log_step,
            max_log_nu=spec.max_log_nu,
        )
    return EGFunnel(
        ps,
        lr=lr,
        momentum=spec.momentum,
        gamma_p=spec.gamma_p,
        gamma_s=spec.gamma_s,
        beta=spec.beta,
        scale=spec.scale,
        max_log_step=spec.max_log_step,
        max_log_gain=spec.max_log_gain,
    )


def adapted_quantities(opt: torch.optim.Optimizer, named: Sequence[tuple[str, torch.Tensor]]) -> dict:
    """Per-layer (mean, min, max) of what the optimizer adapts: ν, p and s, or α; empty for fixed rates."""
    stats = lambda t: (float(t.mean()), float(t.min()), float(t.max()))  # noqa: E731
    out: dict[str, dict[str, tuple[float, float, float]]] = {}
    if isinstance(opt, EGStepSize):
        out["nu"] = {name: stats(opt.state[p]["nu"]) for name, p in named if opt.state[p]}
    elif isinstance(opt, EGFunnel):
        out["p"] = {name: stats(opt.state[p]["p"]) for name, p in named if opt.state[p]}
        out["s"] = {name: stats(opt.state[p]["s"]) for name, p in named if opt.state[p]}
    elif isinstance(opt, HypergradientSGD):
        alpha = opt.param_groups[0]["lr"]
        out["alpha"] = {"all": (alpha, alpha, alpha)}
    return out


def rate_factor(opt: torch.optim.Optimizer, base_lr: float) -> float | None:
    """Geometric-mean factor by which the optimizer moved its rate from ``base_lr`` (None for fixed rates)."""
    logs = []
    if isinstance(opt, EGStepSize):
        logs = [opt.state[p]["log2_nu"].expand_as(p).flatten() * math.log(2.0) for p in opt.state]
    elif isinstance(opt, EGFunnel):
        logs = [(opt.state[p]["log_p"] + opt.state[p]["log_s"]).flatten() for p in opt.state]
    elif isinstance(opt, HypergradientSGD):
        return opt.param_groups[0]["lr"] / base_lr
    if not logs:
        return None
    return math.exp(float(torch.cat(logs).mean()))


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _seed_pair(seed: int, i: int) -> tuple[int, int]:
    a, b = np.random.SeedSequence(entropy=seed, spawn_key=(i,)).generate_state(2)
    return int(a), int(b)


class _Data:
    """Standardized train / held-out tensors (a text dataset: windows of its token stream, read per batch) and, per
    seed, the rotation in force after each shift."""

    def __init__(self, params: EGStepSizeParams, ctx: RunContext, probe: BuiltModel | None = None):
        view = load_dataset(params.dataset, ctx, dataset_needs(params).kinds)
        self.windows: TextWindows | None = None
        self.y_train: torch.Tensor | None = None  # None: a token model (it predicts its own inputs)
        self.y_eval: torch.Tensor | None = None
        if isinstance(view, TextView):
            assert probe is not None and probe.vocab_size is not None and probe.context is not None  # token model
            self.windows = TextWindows(view, probe.context, probe.vocab_size, HOLDOUT, ctx.device, params.eval_size, 0)
            self.classes, self.dim, self.n_train = probe.vocab_size, probe.context, self.windows.n_train
            self.x_eval = self.windows.hold_x
            return
        assert isinstance(view, ArraysView)
        arrays = view
        if probe is not None and probe.tokens:
            self._tokens(params, ctx, arrays, probe)
            return
        x, y = arrays.get("x"), arrays.get("y")
        if y is None:
            raise ValueError("dataset: needs integer labels 'y' for classification")
        x, y = np.asarray(x, dtype=np.float32), np.asarray(y)
        if x.ndim != 2 or y.shape != (x.shape[0],) or x.shape[0] < 10:
            raise ValueError("dataset: x must be (n, d) with n >= 10 and y must be (n,)")
        if not np.isfinite(x).all():
            raise ValueError("dataset: x holds NaN or infinity")
        _, y = np.unique(y, return_inverse=True)
        self.classes = int(y.max()) + 1
        if self.classes < 2:
            raise ValueError("dataset: needs at least two classes")
        self.dim = x.shape[1]
        if isinstance(params.model, str):
            check_budget(params, self.dim, self.classes)
        order = np.random.default_rng(ctx.seed).permutation(x.shape[0])
        n_eval = min(params.eval_size, max(1, x.shape[0] // 5))
        train, held = order[n_eval:], order[:n_eval]
        mean, std = x[train].mean(0), x[train].std(0)
        std[std == 0] = 1.0
        x = (x - mean) / std
        dev = ctx.device
        self.x_train = torch.as_tensor(x[train], device=dev)
        self.y_train = torch.as_tensor(y[train], dtype=torch.long, device=dev)
        self.x_eval = torch.as_tensor(x[held], device=dev)
        self.y_eval = torch.as_tensor(y[held], dtype=torch.long, device=dev)
        self.n_train = len(train)

    def _tokens(self, params: EGStepSizeParams, ctx: RunContext, arrays: ArraysView, probe: BuiltModel) -> None:
        """Rows of token ids for a causal or masked LM; no labels, no standardization."""
        assert probe.vocab_size and probe.usable_ids and probe.context  # set for every token model
        x = token_rows(arrays["x"], probe.usable_ids, probe.context, pixel_levels=params.dataset == "digits")
        if x.shape[0] < 10:
            raise ValueError("dataset: needs at least 10 rows")
        self.classes, self.dim = probe.vocab_size, x.shape[1]
        order = np.random.default_rng(ctx.seed).permutation(x.shape[0])
        n_eval = min(params.eval_size, max(1, x.shape[0] // 5))
        train, held = order[n_eval:], order[:n_eval]
        self.x_train = torch.as_tensor(x[train], device=ctx.device)
        self.x_eval = torch.as_tensor(x[held], device=ctx.device)
        self.n_train = len(train)

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The training rows (text: windows) at positions ``idx`` of the train split, and their labels."""
        if self.windows is not None:
            return self.windows.batch(idx.numpy())
        idx = idx.to(self.x_train.device)
        return self.x_train[idx], None if self.y_train is None else self.y_train[idx]

    def rotations(self, params: EGStepSizeParams, rng: np.random.Generator, device) -> list[torch.Tensor | None]:
        """Rotation in force during each shift period: identity first, then a new random turn per shift."""
        n_shifts = (params.steps - 1) // params.shift_every if params.shift_every else 0
        out: list[torch.Tensor | None] = [None]
        current = np.eye(self.dim)
        for _ in range(n_shifts):
            current = current @ plane_rotation(self.dim, math.radians(params.shift_angle), rng)
            out.append(torch.as_tensor(current, dtype=torch.float32, device=device))
        return out


def _evaluate(built: BuiltModel, x, y, rotation) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over the held-out rows (tokens, for a token model), in chunks."""
    built.module.eval()
    loss = correct = 0.0
    count = 0
    for i in range(0, len(x), EVAL_CHUNK):
        xc = x[i : i + EVAL_CHUNK]
        part = built.scores(xc if rotation is None else xc @ rotation, None if y is None else y[i : i + EVAL_CHUNK])
        loss, correct, count = loss + part[0], correct + part[1], count + part[2]
    built.module.train()
    return loss / count, correct / count


def _fresh(params: EGStepSizeParams, data: _Data, template: BuiltModel | None) -> BuiltModel:
    """A model to load an initial state into: the built-in classifier, or a copy of the user's model."""
    if template is None:
        return BuiltModel(_build_model(data.dim, data.classes, params), "classify")
    return BuiltModel(copy.deepcopy(template.module), template.task, template.vocab_size, template.context, template.hf)


def _record_rates(rates: dict, quantities: dict, t: int, tag: str, ctx: RunContext) -> None:
    """Append step ``t``'s adapted quantities (per quantity and layer: mean, min, max) to ``rates``, and log each
    layer's mean."""
    for quantity, layers in quantities.items():
        for layer, stat in layers.items():
            series = rates.setdefault(quantity, {}).setdefault(layer, {"step": [], "mean": [], "min": [], "max": []})
            series["step"].append(t)
            for key, value in zip(("mean", "min", "max"), stat):
                series[key].append(_finite(value))
            if math.isfinite(stat[0]):
                ctx.metric(t, f"{tag}/{quantity}/{layer}/mean", stat[0])


def _train(
    params,
    spec,
    lr,
    init,
    data: _Data,
    rotations,
    batch_seed,
    ctx,
    tag,
    record_rates,
    template: BuiltModel | None = None,
) -> dict:
    """One optimizer at one rate on one seed: evaluation curve, adapted quantities, recovery after shifts."""
    built = _fresh(params, data, template)
    model = built.module.to(ctx.device)
    model.load_state_dict(init)
    model.train()
    named = list(model.named_parameters())
    opt = make_optimizer(spec, lr, model)
    gen = torch.Generator().manual_seed(batch_seed)
    period, rotation = 0, rotations[0]
    curve: dict[str, list[float | None]] = {"test_loss": [], "test_acc": [], "train_loss": []}
    rates: dict = {}
    shifts: list[dict] = []
    window: list[float] = []
    diverged_at = None
    for t in range(params.steps + 1):
        if t % params.eval_every == 0 or t == params.steps:
            test_loss, test_acc = _evaluate(built, data.x_eval, data.y_eval, rotation)
            train_loss = float(np.mean(window)) if window else None
            window = []
            for key, value in (("test_loss", test_loss), ("test_acc", test_acc), ("train_loss", train_loss)):
                curve[key].append(_finite(value) if value is not None else None)
                if value is not None and math.isfinite(value):
                    ctx.metric(t, f"{tag}/{key}", value)
            _note_recovery(shifts, t, test_loss, params.recovery_tol)
            if record_rates:
                _record_rates(rates, adapted_quantities(opt, named), t, tag, ctx)
            if params.shift_every and 0 < t < params.steps and t % params.shift_every == 0:
                period += 1
                rotation = rotations[period]
                shock, _ = _evaluate(built, data.x_eval, data.y_eval, rotation)
                shifts.append(
                    {
                        "step": t,
                        "pre_shift_loss": _finite(test_loss),
                        "post_shift_loss": _finite(shock),
                        "recovery_steps": None,
                    }
                )
        if t == params.steps:
            break
        ctx.check_cancelled()
        xb, yb = data.batch(torch.randint(data.n_train, (params.batch_size,), generator=gen))
        if rotation is not None:
            xb = xb @ rotation
        opt.zero_grad(set_to_none=True)
        loss = built.loss(xb, yb)
        value = float(loss.detach())
        if not math.isfinite(value) or value > DIVERGED_LOSS:
            diverged_at = t
            break
        loss.backward()
        opt.step()
        window.append(value)
    n_points = len(range(0, params.steps, params.eval_every)) + 1
    for key in curve:
        curve[key].extend([None] * (n_points - len(curve[key])))
    return {
        "curve": curve,
        "rates": rates,
        "shifts": shifts,
        "diverged_at": diverged_at,
        "rate_factor": rate_factor(opt, lr) if diverged_at is None else None,
    }


def _note_recovery(shifts: list[dict], t: int, test_loss: float, tol: float) -> None:
    """At an evaluation at step ``t``: the last shift has recovered, ``t`` minus its step after it, the first time
    the test loss is back within ``tol`` (relative) of its loss before the shift."""
    last = shifts[-1] if shifts else None
    if last and last["recovery_steps"] is None and last["pre_shift_loss"] is not None:
        if test_loss <= last["pre_shift_loss"] * (1 + tol):
            last["recovery_steps"] = t - last["step"]


def _mean_or_none(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return None if not values or len(known) < len(values) else float(np.mean(known))


def run(params: EGStepSizeParams, ctx: RunContext) -> dict:
    buildable = weights = None
    probe = None
    if not isinstance(params.model, str):
        buildable, weights = materialize(params.model, ctx)
        probe = build(buildable, features=1, classes=2, device="meta") if token_model(params.model) else None
    data = _Data(params, ctx, probe)
    labels = _labels([spec.name for spec in params.optimizers])
    eval_steps = sorted(set(range(0, params.steps, params.eval_every)) | {params.steps})
    seeds = [_seed_pair(ctx.seed, i) for i in range(params.seeds)]
    inits, rotations, template = _starts(params, data, buildable, weights, seeds, ctx)
    total = len(labels) * len(params.lr_scales) * params.seeds
    runs: list[dict] = []
    curves: dict[str, dict[str, dict]] = {}
    rates: dict[str, dict[str, dict]] = {}
    done = 0
    for label, spec in zip(labels, params.optimizers):
        for scale in params.lr_scales:
            key = f"x{scale:g}"
            per_seed = []
            for i, (model_seed, _) in enumerate(seeds):
                lr = spec.lr * scale
                out = _train(
                    params,
                    spec,
                    lr,
                    inits[i],
                    data,
                    rotations[i],
                    model_seed + 1,
                    ctx,
                    f"{label}/{key}/seed{i}",
                    record_rates=i == 0,
                    template=template,
                )
                per_seed.append(out)
                runs.append(_run_row(label, scale, lr, i, out))
                done += 1
                ctx.progress(done / total, f"{label} lr x{scale:g} seed {i}")
            curves.setdefault(label, {})[key] = {
                name: [_mean_or_none([o["curve"][name][j] for o in per_seed]) for j in range(len(eval_steps))]
                for name in ("test_loss", "test_acc", "train_loss")
            }
            if per_seed[0]["rates"]:
                rates.setdefault(label, {})[key] = per_seed[0]["rates"]
    settings = _settings(runs, labels, params.lr_scales)
    shift_steps = [s["step"] for s in runs[0]["shifts"]] if params.shift_every else []
    ctx.artifact("loss.png", _plot_curves(curves, eval_steps, shift_steps, params, "test_loss"), "image/png")
    ctx.artifact("accuracy.png", _plot_curves(curves, eval_steps, shift_steps, params, "test_acc"), "image/png")
    if rates:
        ctx.artifact("rates.png", _plot_rates(rates, params, shift_steps), "image/png")
    return {
        "optimizers": labels,
        "lr_scales": params.lr_scales,
        "seeds": params.seeds,
        "classes": data.classes,
        "input_dim": data.dim,
        "eval_steps": eval_steps,
        "shift_steps": shift_steps,
        "settings": settings,
        "runs": runs,
        "curves": curves,
        "rates": rates,
    }


def _starts(params: EGStepSizeParams, data, buildable, weights, seeds: list[tuple[int, int]], ctx: RunContext):
    """Per seed the model's initial state and the input rotations, shared by every optimizer and rate (so they start
    alike), and the built user's model whose module the runs copy (None for the built-in MLP)."""
    inits, rotations = [], []
    template = None
    for model_seed, shift_seed in seeds:
        gen = torch.Generator().manual_seed(model_seed)
        if buildable is None:
            inits.append(_build_model(data.dim, data.classes, params, gen).state_dict())
        else:  # the user's model: its own initialisation from torch's RNG (uploaded weights: the same every seed)
            torch.manual_seed(model_seed)
            built = build(buildable, features=data.dim, classes=data.classes, weights=weights)
            template = template or built
            inits.append({k: v.detach().clone() for k, v in built.module.state_dict().items()})
        rotations.append(data.rotations(params, np.random.default_rng(shift_seed), ctx.device))
    return inits, rotations, template


def _run_row(label: str, scale: float, lr: float, seed: int, out: dict) -> dict:
    """One training run as the result lists it."""
    return {
        "optimizer": label,
        "lr_scale": scale,
        "lr": lr,
        "seed": seed,
        "diverged_at": out["diverged_at"],
        "final_test_loss": out["curve"]["test_loss"][-1],
        "final_test_acc": out["curve"]["test_acc"][-1],
        "rate_factor": out["rate_factor"],
        "shifts": out["shifts"],
    }


def _settings(runs: list[dict], labels: list[str], scales: list[float]) -> list[dict]:
    """Per optimizer and rate scale: seed-averaged final loss/accuracy, divergences, rate factor, recovery."""
    out = []
    for label in labels:
        for scale in scales:
            group = [r for r in runs if r["optimizer"] == label and r["lr_scale"] == scale]
            recoveries = [s["recovery_steps"] for r in group for s in r["shifts"]]
            factors = [r["rate_factor"] for r in group if r["rate_factor"] is not None]
            out.append(
                {
                    "optimizer": label,
                    "lr_scale": scale,
                    "final_test_loss": _mean_or_none([r["final_test_loss"] for r in group]),
                    "final_test_acc": _mean_or_none([r["final_test_acc"] for r in group]),
                    "diverged_runs": sum(r["diverged_at"] is not None for r in group),
                    "rate_factor": float(np.exp(np.mean(np.log(factors)))) if factors and min(factors) > 0 else None,
                    "shifts": len(recoveries),
                    "recovered_shifts": sum(v is not None for v in recoveries),
                    "mean_recovery_steps": float(np.mean([v for v in recoveries if v is not None]))
                    if any(v is not None for v in recoveries)
                    else None,
                }
            )
    return out


def _shift_lines(ax, shift_steps: list[int]) -> None:
    for i, s in enumerate(shift_steps):
        ax.axvline(s, color="gray", ls=":", lw=1, label="input rotation" if i == 0 else None)


def _plot_curves(curves: dict, eval_steps: list[int], shift_steps: list[int], params, metric: str) -> bytes:
    scales = [f"x{s:g}" for s in params.lr_scales]
    fig, axes = plt.subplots(1, len(scales), figsize=(4.2 * len(scales), 3.8), dpi=100, squeeze=False, sharey=True)
    for ax, key in zip(axes[0], scales):
        for label, per_scale in curves.items():
            ys = [np.nan if v is None else v for v in per_scale[key][metric]]
            ax.plot(eval_steps, ys, label=label)
        _shift_lines(ax, shift_steps)
        ax.set_title(f"lr {key.replace('x', '× ')}")
        ax.set_xlabel("training step")
        if metric == "test_loss":
            ax.set_yscale("log")
    axes[0][0].set_ylabel("held-out cross-entropy (nats)" if metric == "test_loss" else "held-out accuracy")
    axes[0][-1].legend(fontsize=8)
    fig.suptitle(
        ("Loss" if metric == "test_loss" else "Accuracy") + f" (mean of {params.seeds} seed(s); gaps: diverged)"
    )
    return to_png(fig)


def _plot_rates(rates: dict, params, shift_steps: list[int]) -> bytes:
    rows = [(label, q) for label in rates for q in next(iter(rates[label].values()))]
    scales = [f"x{s:g}" for s in params.lr_scales]
    fig, axes = plt.subplots(
        len(rows), len(scales), figsize=(4.2 * len(scales), 2.8 * len(rows)), dpi=100, squeeze=False
    )
    for r, (label, quantity) in enumerate(rows):
        for c, key in enumerate(scales):
            ax = axes[r][c]
            for layer, series in rates[label].get(key, {}).get(quantity, {}).items():
                nan = lambda vs: [np.nan if v is None else v for v in vs]  # noqa: E731
                (line,) = ax.plot(series["step"], nan(series["mean"]), label=layer)
                ax.fill_between(
                    series["step"], nan(series["min"]), nan(series["max"]), color=line.get_color(), alpha=0.15
                )
            _shift_lines(ax, shift_steps)
            ax.set_yscale("log")
            ax.set_title(f"{label}, lr {key.replace('x', '× ')}", fontsize=9)
            ax.set_xlabel("training step")
            ax.set_ylabel(QUANTITY_LABELS[quantity], fontsize=8)
            if c == len(scales) - 1 and ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7, title="layer: mean, band min-max", title_fontsize=7)
    return to_png(fig)
