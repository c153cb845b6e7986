"""Job kind ``momentum_accumulation``: gradient accumulation hidden in the momentum
(docs/techniques.md#momentum_accumulation).

Every arm sees the same micro-batches in the same order from the same initial weights (paired per seed), so the
curves differ only by how and when the optimizer turns micro-gradients into updates:

- ``explicit_buffer``: sum k micro-gradients in ``.grad`` (a parameter-sized buffer), then one EMA-optimizer step;
- ``chi_exact``: AccumSGDM / AccumAdam with ``accum_steps=k`` (the momentum is the accumulator, no buffer);
- ``beta_tilde_lr_chi``: a stock EMA optimizer stepped every micro-batch with β̃ = 1-(1-β)/k and lr·χ_t;
- ``lr_chi_only``: the same with the original β and lr·χ_t;
- ``per_micro_batch``: a stock EMA optimizer that updates on every micro-batch.

``steps`` counts micro-batches, so all arms use the same data; arms other than ``per_micro_batch`` should make
steps//k updates, and ``updates`` reports the optimizer updates that did happen (``_stepped``), not that number.
The LR is constant, so no scheduler has to choose between counting micro-steps and updates.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch

from core.data import load_dataset
from core.data.batches import chunked_max, chunked_min
from core.data.loader import ArraysView, TextView
from core.data.windows import TextWindows
from core.networks.build import BuiltModel, build
from core.networks.resolve import load_model, materialize
from core.networks.tokens import token_rows
from core.optim.accum import AccumAdam, AccumSGDM, beta_tilde, state_bytes
from core.plots import new_figure, to_png
from core.techniques.base import RunContext
from core.techniques.momentum_accumulation.data import Rows
from core.techniques.momentum_accumulation.spec import (
    ARMS,
    EVAL_CHUNK,
    MomentumAccumulationParams,
    check_budget,
    cnn_side,
    dataset_needs,
    probe_rows,
    token_model,
)


def _model(params: MomentumAccumulationParams, features: int, classes: int, gen: torch.Generator) -> torch.nn.Module:
    """MLP (two hidden ReLU layers) or a small CNN, initialized from ``gen`` (PyTorch's default ±1/√fan_in)."""
    h = params.hidden
    if params.model == "cnn":
        side, c = cnn_side(features), params.channels
        assert side is not None  # check_budget refused a cnn on rows that are not square images
        net = torch.nn.Sequential(
            torch.nn.Unflatten(1, (1, side, side)),
            torch.nn.Conv2d(1, c, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.Conv2d(c, 2 * c, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.MaxPool2d(2),
            torch.nn.Flatten(),
            torch.nn.Linear(2 * c * (side // 2) ** 2, h),
            torch.nn.ReLU(),
            torch.nn.Linear(h, classes),
        )
    else:
        net = torch.nn.Sequential(
            torch.nn.Linear(features, h),
            torch.nn.ReLU(),
            torch.nn.Linear(h, h),
            torch.nn.ReLU(),
            torch.nn.Linear(h, classes),
        )
    with torch.no_grad():
        for layer in net:
            if isinstance(layer, (torch.nn.Linear, torch.nn.Conv2d)):
                bound = 1.0 / math.sqrt(layer.weight[0].numel())
                layer.weight.uniform_(-bound, bound, generator=gen)
                assert layer.bias is not None  # built with biases above
                layer.bias.uniform_(-bound, bound, generator=gen)
    return net


def _arm_betas(arm: str, params: MomentumAccumulationParams) -> tuple[float, float]:
    if arm == "beta_tilde_lr_chi":
        b1, b2 = params.betas
        return beta_tilde(b1, params.accum_steps), beta_tilde(b2, params.accum_steps)
    return params.betas


def _optimizer(arm: str, params: MomentumAccumulationParams, weights) -> torch.optim.Optimizer:
    """Only ``chi_exact`` knows about k; the others are stock EMA optimizers (k=1) driven from outside."""
    k = params.accum_steps if arm == "chi_exact" else 1
    b1, b2 = _arm_betas(arm, params)
    if params.optimizer == "adam":
        return AccumAdam(weights, lr=params.lr, betas=(b1, b2), accum_steps=k, weight_decay=params.weight_decay)
    return AccumSGDM(weights, lr=params.lr, momentum=b1, accum_steps=k, weight_decay=params.weight_decay)


def _batches(rng: np.random.Generator, n: int, size: int) -> Iterator[np.ndarray]:
    """Endless micro-batches of row indices: reshuffled epochs, a batch may straddle two of them."""
    order, pos = rng.permutation(n), 0
    while True:
        take = []
        need = size
        while need:
            if pos == n:
                order, pos = rng.permutation(n), 0
            chunk = order[pos : pos + need]
            take.append(chunk)
            pos += len(chunk)
            need -= len(chunk)
        yield np.concatenate(take)


def _evaluate(built: BuiltModel, x: torch.Tensor, y: torch.Tensor | None) -> tuple[float, float]:
    """Mean cross-entropy (nats) and accuracy over all predictions (rows, or tokens of a token model), in chunks."""
    loss = correct = 0.0
    count = 0
    for i in range(0, len(x), EVAL_CHUNK):
        part = built.scores(x[i : i + EVAL_CHUNK], None if y is None else y[i : i + EVAL_CHUNK])
        loss, correct, count = loss + part[0], correct + part[1], count + part[2]
    return loss / count, correct / count


def _stepped(opt: torch.optim.Optimizer) -> int:
    """Step ``opt``; 1 if that step was an update (it moved the weights: a nonzero rate and, for the χ-aware
    optimizers, an update step by their own count), else 0. AccumSGDM/AccumAdam count updates in their group."""
    group = opt.param_groups[0]
    rate, before = group["lr"], group["updates"]
    opt.step()
    return int(rate > 0 and group["updates"] > before)


def _train(
    arm: str,
    params: MomentumAccumulationParams,
    built: BuiltModel,
    data: Rows | TextWindows,
    rng: np.random.Generator,
    eval_steps: set[int],
    ctx: RunContext,
    report,
) -> dict:
    """One arm, one seed: returns its curves, the persistent optimizer bytes and the final flat weights."""
    k = params.accum_steps
    model = built.module
    opt = _optimizer(arm, params, model.parameters())
    stock_chi = arm in ("beta_tilde_lr_chi", "lr_chi_only")
    batches = _batches(rng, data.n_train, params.micro_batch)
    curves: dict[str, list[float]] = {"train_loss": [], "heldout_loss": [], "heldout_accuracy": []}
    buffer_bytes = updates = 0

    def evaluate():
        model.eval()
        curves["train_loss"].append(_evaluate(built, data.probe_x, data.probe_y)[0])
        loss, acc = _evaluate(built, data.hold_x, data.hold_y)
        model.train()
        curves["heldout_loss"].append(loss)
        curves["heldout_accuracy"].append(acc)

    evaluate()
    for t in range(1, params.steps + 1):
        ctx.check_cancelled()
        loss = built.loss(*data.batch(next(batches)))
        if arm == "explicit_buffer":
            (loss / k).backward()
            if t % k == 0:
                buffer_bytes = sum(
                    g.numel() * g.element_size() for p in model.parameters() if (g := p.grad) is not None
                )
                updates += _stepped(opt)
                opt.zero_grad(set_to_none=True)
        else:
            if stock_chi:
                for group in opt.param_groups:
                    group["lr"] = params.lr if t % k == 0 else 0.0
            loss.backward()
            updates += _stepped(opt)
            opt.zero_grad(set_to_none=True)
        if t in eval_steps:
            evaluate()
            report(t / params.steps)
    return {
        **curves,
        "state_bytes": state_bytes(opt) + buffer_bytes,
        "updates": updates,
        "weights": torch.cat([p.detach().flatten() for p in model.parameters()]),
    }


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _stats(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample sd (None for one seed, or when a run diverged)."""
    arr = np.asarray(values, dtype=np.float64)
    if not np.isfinite(arr).all():
        return None, None
    return float(arr.mean()), (float(arr.std(ddof=1)) if len(arr) > 1 else None)


def _arm_result(
    arm: str, params: MomentumAccumulationParams, runs: list[dict], explicit_weights: list[torch.Tensor]
) -> dict:
    """One arm's reported figures from its runs (one per seed): mean curves, final held-out accuracy and loss as
    mean and sd over seeds, the update count and state bytes of its first seed, and the largest weight difference
    from the explicit-buffer arm's run of the same seed (the identity the χ arms must keep). ``_curves`` holds the
    per-seed curves for the plot and is removed before the result is returned."""
    identity = None
    if explicit_weights:
        identity = _finite(max(float((r["weights"] - w).abs().max()) for r, w in zip(runs, explicit_weights)))
    curves = {key: [r[key] for r in runs] for key in ("train_loss", "heldout_loss", "heldout_accuracy")}
    means = {key: np.mean(v, axis=0) for key, v in curves.items()}
    final_acc = [r["heldout_accuracy"][-1] for r in runs]
    acc_mean, acc_sd = _stats(final_acc)
    loss_mean, loss_sd = _stats([r["heldout_loss"][-1] for r in runs])
    hold_sd = np.std(curves["heldout_loss"], axis=0, ddof=1) if len(runs) > 1 else None
    return {
        "betas": list(_arm_betas(arm, params)) if params.optimizer == "adam" else [_arm_betas(arm, params)[0]],
        "updates": runs[0]["updates"],
        "state_bytes": runs[0]["state_bytes"],
        "train_loss": [_finite(v) for v in means["train_loss"]],
        "heldout_loss": [_finite(v) for v in means["heldout_loss"]],
        "heldout_loss_sd": None if hold_sd is None else [_finite(v) for v in hold_sd],
        "heldout_accuracy": [_finite(v) for v in means["heldout_accuracy"]],
        "final_heldout_accuracy_mean": acc_mean,
        "final_heldout_accuracy_sd": acc_sd,
        "final_heldout_accuracies": [float(v) for v in final_acc],
        "final_heldout_loss_mean": loss_mean,
        "final_heldout_loss_sd": loss_sd,
        "identity_error_vs_explicit": identity if arm != "explicit_buffer" else None,
        "_curves": curves,
    }


def _accumulation_saving(arms: dict, param_bytes: int) -> dict | None:
    """What χ-exact saves over the explicit buffer, in optimizer-state bytes (None unless both arms ran); the claim
    is that the saving is exactly one parameter-sized tensor."""
    if "explicit_buffer" not in arms or "chi_exact" not in arms:
        return None
    explicit, exact = arms["explicit_buffer"]["state_bytes"], arms["chi_exact"]["state_bytes"]
    return {
        "explicit_buffer_bytes": explicit,
        "chi_exact_bytes": exact,
        "saving_bytes": explicit - exact,
        "param_bytes": param_bytes,
        "saving_is_one_parameter_sized_tensor": explicit - exact == param_bytes,
    }


def _best_arm(arms: dict) -> str | None:
    """The arm of highest mean final held-out accuracy (the first on a tie; None when no arm has one)."""
    ranked = [a for a in arms if arms[a]["final_heldout_accuracy_mean"] is not None]
    return max(ranked, key=lambda a: arms[a]["final_heldout_accuracy_mean"]) if ranked else None


def _plot(arms: dict, eval_steps: list[int], params: MomentumAccumulationParams) -> bytes:
    fig, ax = new_figure(14.0, 4.5)
    ax.remove()
    ax_train, ax_hold, ax_acc = fig.subplots(1, 3)
    names = list(arms)
    for i, (arm, res) in enumerate(arms.items()):
        colour = f"C{i}"
        # explicit_buffer drawn wide and pale: chi_exact lies exactly on it (SGDM) and must stay visible.
        style = {"linewidth": 4.0, "alpha": 0.45} if arm == "explicit_buffer" else {"linewidth": 1.5}
        curves = res["_curves"]
        ax_train.plot(eval_steps, np.mean(curves["train_loss"], axis=0), color=colour, label=arm, **style)
        hold = np.asarray(curves["heldout_loss"])
        mean = hold.mean(axis=0)
        ax_hold.plot(eval_steps, mean, color=colour, label=arm, **style)
        if len(hold) > 1:
            sd = hold.std(axis=0, ddof=1)
            ax_hold.fill_between(eval_steps, mean - sd, mean + sd, color=colour, alpha=0.15)
        acc = np.asarray(res["final_heldout_accuracies"])
        ax_acc.bar(i, acc.mean(), yerr=acc.std(ddof=1) if len(acc) > 1 else None, color=colour, capsize=4)
    for a, title in ((ax_train, "train loss (probe of train rows)"), (ax_hold, "held-out loss (mean ± sd)")):
        a.set_xlabel(f"micro-step (micro-batches of {params.micro_batch} seen)")
        a.set_ylabel("cross-entropy (nats)")
        a.set_title(title)
        a.legend(fontsize=8)
    ax_acc.set_xticks(range(len(names)), names, rotation=25, ha="right", fontsize=8)
    ax_acc.set_ylabel("final held-out accuracy (fraction)")
    ax_acc.set_title(f"{params.optimizer}, k={params.accum_steps}, {params.seeds} seed(s)")
    return to_png(fig)


def _seeded(
    params: MomentumAccumulationParams, ctx: RunContext, gen: torch.Generator, seed: int, features: int, classes: int
) -> BuiltModel:
    """The model of one seed: the built-in mlp/cnn from ``gen``; a model spec from torch's RNG seeded with
    ``seed`` (uploaded weights are the same for every seed)."""
    if isinstance(params.model, str):
        return BuiltModel(_model(params, features, classes, gen), "classify")
    torch.manual_seed(seed)
    return load_model(params.model, ctx, features=features, classes=classes)


def _data(params: MomentumAccumulationParams, ctx: RunContext, dtype: torch.dtype):
    """(train/held-out data, classes, the built token model's probe or None) for the params' dataset."""
    view = load_dataset(params.dataset, ctx, dataset_needs(params).kinds)
    if not isinstance(params.model, str) and token_model(params.model):
        buildable, _ = materialize(params.model, ctx)
        probe = build(buildable, device="meta")
        assert probe.vocab_size is not None and probe.context is not None  # set for every token model
        vocab, context, ids = probe.vocab_size, probe.context, probe.usable_ids
        assert ids is not None  # a token model's
        if isinstance(view, TextView):
            windows = TextWindows(view, context, ids, params.holdout, ctx.device, params.eval_rows, probe_rows(params))
            return windows, vocab, probe
        assert isinstance(view, ArraysView)
        x = token_rows(view["x"], ids, context, pixel_levels=params.dataset == "digits")
        rows = Rows(x, None, params.holdout, ctx.seed, dtype, ctx.device, False, params.eval_rows, probe_rows(params))
        return rows, vocab, probe
    assert isinstance(view, ArraysView)
    if "y" not in view:
        raise ValueError("dataset: needs integer labels y for classification")
    x, y = view["x"], view["y"]
    if x.ndim != 2 or y.shape != (len(x),) or chunked_min(y) < 0:
        raise ValueError("dataset: x must be (n, d) and y (n,) with labels >= 0")
    classes = chunked_max(y) + 1
    if isinstance(params.model, str):
        check_budget(params, len(x), x.shape[1], classes)
    rows = Rows(x, y, params.holdout, ctx.seed, dtype, ctx.device, True, params.eval_rows, probe_rows(params))
    return rows, classes, None


def run(params: MomentumAccumulationParams, ctx: RunContext) -> dict:
    dtype = torch.float64 if params.dtype == "float64" else torch.float32
    data, classes, token_probe = _data(params, ctx, dtype)
    if data.n_train < params.micro_batch:
        raise ValueError(f"micro_batch: larger than the {data.n_train} training rows")

    eval_steps = sorted(set(range(params.eval_every, params.steps + 1, params.eval_every)) | {params.steps})
    eval_set = set(eval_steps)
    eval_steps = [0] + eval_steps
    arms_run = [a for a in ARMS if a in params.arms]
    total = len(arms_run) * params.seeds
    seeds = np.random.SeedSequence(ctx.seed).spawn(params.seeds)
    explicit_weights: list[torch.Tensor] = []
    arms: dict[str, dict] = {}
    n_params = 0
    for a_i, arm in enumerate(arms_run):
        runs = []
        for s_i, seq in enumerate(seeds):
            done = a_i * params.seeds + s_i
            ctx.progress(done / total, f"{arm}: seed {s_i + 1}/{params.seeds}")
            seed = int(seq.generate_state(1)[0])
            built = _seeded(params, ctx, torch.Generator().manual_seed(seed), seed, data.features, classes)
            built.module.to(device=ctx.device, dtype=dtype)
            n_params = sum(p.numel() for p in built.module.parameters())

            def report(frac, done=done, arm=arm, s_i=s_i):
                ctx.progress((done + frac) / total, f"{arm}: seed {s_i + 1}/{params.seeds}")

            runs.append(_train(arm, params, built, data, np.random.default_rng(seq), eval_set, ctx, report))
        if arm == "explicit_buffer":
            explicit_weights = [r["weights"] for r in runs]
        arms[arm] = _arm_result(arm, params, runs, explicit_weights)
        curves = arms[arm]["_curves"]
        for j, step in enumerate(eval_steps):
            for key in curves:
                if arms[arm][key][j] is not None:
                    ctx.metric(step, f"{arm}/{key}", arms[arm][key][j])
            for s_i in range(len(runs) if len(runs) > 1 else 0):  # each seed too: charts shade their spread
                for key in curves:
                    if math.isfinite(curves[key][s_i][j]):
                        ctx.metric(step, f"{arm}/seed{s_i}/{key}", float(curves[key][s_i][j]))
    ctx.progress(1.0, "plotting")
    ctx.artifact("curves.png", _plot(arms, eval_steps, params), "image/png")
    for res in arms.values():
        del res["_curves"]
    item = 8 if params.dtype == "float64" else 4
    saving = _accumulation_saving(arms, n_params * item)
    return {
        "optimizer": params.optimizer,
        "model": params.model if isinstance(params.model, str) else params.model.model_dump(mode="json"),
        "task": "classify" if token_probe is None else token_probe.task,
        "accumulation_saving": saving,
        "accum_steps": params.accum_steps,
        "micro_batch": params.micro_batch,
        "steps": params.steps,
        "dtype": params.dtype,
        "n_params": n_params,
        "param_bytes": n_params * item,
        "eval_steps": eval_steps,
        "arms": arms,
        "best_arm": _best_arm(arms),
    }
