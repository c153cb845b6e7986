"""Job kind ``vae_density``: a log-likelihood for each sample, by importance sampling through a trained VAE.

docs/techniques.md#vae_density. The VAE is trained with the ELBO (train_k = 1) or the IWAE bound (train_k > 1); then, on
a train subset and on held-out rows it never saw, L_K = logsumexp_k log w_k − log K is reported for every K in
``eval_k`` (fresh, independent draws per K), in nats and bits/dim, with the effective sample size as a tightness
diagnostic. On ``linear_gaussian`` (p(z) = N(0, I), p(x|z) = N(Az + c, σ²I) with known A, c, σ) the exact log p(x) sits
beside them.
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch

from core.data import load_arrays, load_builtin
from core.networks.exported.footprint import footprint
from core.networks.resolve import load_exported
from core.plots import new_figure, to_png
from core.techniques.base import RunContext
from core.techniques.vae_density.spec import VaeDensityParams, check_budget
from core.vae import VAE, Likelihood, LinearGaussian, ModuleVAE, bits_per_dim

LEVELS = 256  # dequantized data are 8-bit: integers 0..255
EVAL_BATCH = 256  # data rows per evaluation batch (cancellation is checked between batches)
MONITOR_ROWS = 256
MONITOR_POINTS = 20


def _num(value) -> float | None:
    """A plain float, or None where it is not finite (JSON has no NaN)."""
    value = float(value)
    return value if math.isfinite(value) else None


def _load(p: VaeDensityParams, ctx: RunContext) -> tuple[np.ndarray, Likelihood, LinearGaussian | None]:
    """Rows x (n, D) as float32, the likelihood to use, and the true model for linear_gaussian."""
    if p.dataset == "linear_gaussian":
        gen = torch.Generator().manual_seed(ctx.seed)
        truth = LinearGaussian.random(p.synthetic_dim, p.synthetic_latent, p.synthetic_sigma, gen)
        return truth.sample(p.synthetic_n, gen).float().numpy(), "gaussian", truth
    if p.dataset in ("digits_binarized", "digits_17_levels", "digits_dequantized"):
        pixels = load_builtin("digits", ctx.seed)["x"].astype(np.float64)
        if p.dataset == "digits_binarized":  # one stochastic binarization, fixed by the seed
            rng = np.random.default_rng(ctx.seed)
            return (rng.random(pixels.shape) < pixels).astype(np.float32), "bernoulli", None
        # 17 levels (0..16) placed on the 8-bit scale: see spec.BUILTIN_LIKELIHOOD on what its bits/dim mean
        return np.round(pixels * (LEVELS - 1)).astype(np.float32), "dequantized", None
    x = np.asarray(load_arrays(p.dataset, ctx)["x"], dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 4 or x.shape[1] < 1:
        raise ValueError(f"dataset: x must be (n >= 4, D >= 1), got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("dataset: x contains NaN or infinity")
    binary = bool(np.all((x == 0) | (x == 1)))
    eight_bit = bool(np.all((x == np.round(x)) & (x >= 0) & (x <= LEVELS - 1)))
    likelihood = p.likelihood
    if likelihood == "auto":
        likelihood = "bernoulli" if binary else "dequantized" if eight_bit else "gaussian"
    elif likelihood == "gaussian" and binary:
        raise ValueError("likelihood: a Gaussian density on binary data is unbounded; use bernoulli")
    elif likelihood == "bernoulli" and not binary:
        raise ValueError("likelihood: bernoulli needs x in {0, 1}")
    elif likelihood == "dequantized" and not eight_bit:
        raise ValueError("likelihood: dequantized needs integer x in 0..255")
    if likelihood == "bernoulli" and p.fixed_sigma is not None:
        raise ValueError("fixed_sigma: a Bernoulli likelihood has no variance")
    if p.encoder is None:  # exported networks are budgeted at submit from their graphs (networks.exported.roles)
        check_budget(p, x.shape[1])
    return x.astype(np.float32), likelihood, None


def _evaluate(
    model: VAE,
    x: torch.Tensor,
    ks: list[int],
    gen: torch.Generator,
    ctx: RunContext,
    span: tuple[float, float],
    label: str,
) -> dict:
    """Per-row L_K for every K (independent draws per K) plus the ELBO and ESS from the largest-K pass."""
    per_k: dict[int, torch.Tensor] = {}
    elbo = ess = None
    total_work, work = float(sum(ks)), 0.0
    for k in ks:
        values, elbos, esss = [], [], []
        for start in range(0, x.shape[0], EVAL_BATCH):
            ctx.check_cancelled()
            batch = x[start : start + EVAL_BATCH]
            stats = model.importance_statistics(batch, k, None, gen)  # chunked to the device's budget
            values.append(stats.log_likelihood)
            elbos.append(stats.elbo)
            esss.append(stats.ess)
        per_k[k] = torch.cat(values).double().cpu()
        elbo, ess = torch.cat(elbos).double().cpu(), torch.cat(esss).double().cpu()
        work += k
        ctx.progress(span[0] + (span[1] - span[0]) * work / total_work, f"{label}: L_{k} done")
    return {"per_k": per_k, "elbo": elbo, "ess_last": ess}


def _summary(ev: dict, dim: int, exact: torch.Tensor | None, k_max: int) -> dict:
    n = ev["elbo"].shape[0]
    out = {
        "n_rows": n,
        "elbo_nats": _num(ev["elbo"].mean()),
        "elbo_bits_per_dim": _num(bits_per_dim(ev["elbo"].mean(), dim)),
        "exact_nats": None if exact is None else _num(exact.mean()),
        "exact_bits_per_dim": None if exact is None else _num(bits_per_dim(exact.mean(), dim)),
        "ess_fraction_at_max_k": _num(ev["ess_last"].mean() / k_max),
        "bounds": [],
    }
    for k, values in ev["per_k"].items():
        stderr = values.std(unbiased=True) / math.sqrt(n) if n > 1 else torch.tensor(float("nan"))
        out["bounds"].append(
            {
                "k": k,
                "nats": _num(values.mean()),
                "stderr_nats": _num(stderr),
                "bits_per_dim": _num(bits_per_dim(values.mean(), dim)),
                "gap_to_exact_nats": None if exact is None else _num((exact - values).mean()),
            }
        )
    return out


def _plot_bounds(summaries: dict, title: str) -> bytes:
    fig, ax = new_figure()
    colours = {"train": "tab:blue", "heldout": "tab:orange"}
    for split, s in summaries.items():
        ks = [b["k"] for b in s["bounds"]]
        means = [np.nan if b["nats"] is None else b["nats"] for b in s["bounds"]]
        errs = [0.0 if b["stderr_nats"] is None else b["stderr_nats"] for b in s["bounds"]]
        ax.errorbar(
            ks, means, yerr=errs, marker="o", capsize=3, color=colours[split], label=f"{split}: L_K (±1 s.e. over rows)"
        )
        if s["elbo_nats"] is not None:
            ax.axhline(s["elbo_nats"], color=colours[split], linestyle="--", linewidth=1, label=f"{split}: ELBO")
        if s["exact_nats"] is not None:
            ax.axhline(
                s["exact_nats"], color=colours[split], linestyle=":", linewidth=1.5, label=f"{split}: exact log p(x)"
            )
    ax.set_xscale("log")
    ax.set_xlabel("K (importance samples per row, log scale)")
    ax.set_ylabel("mean log-likelihood estimate (nats/sample)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return to_png(fig)


def _plot_training(train_loss: list[float], monitor: list[tuple[int, float]]) -> bytes:
    fig, ax = new_figure()
    ax.plot(np.arange(1, len(train_loss) + 1), train_loss, linewidth=0.8, alpha=0.7, label="train: −bound (batch)")
    steps, values = zip(*monitor)
    ax.plot(steps, values, marker="o", label="held-out: −ELBO")
    ax.set_xlabel("training step")
    ax.set_ylabel("negative bound (nats/sample)")
    ax.set_title("VAE training")
    ax.legend()
    return to_png(fig)


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def run(params: VaeDensityParams, ctx: RunContext) -> dict:
    x_np, likelihood, truth = _load(params, ctx)
    n, dim = x_np.shape
    device = ctx.device
    order = np.random.default_rng(ctx.seed).permutation(n)
    n_heldout = min(n - 1, max(1, int(round(params.heldout_fraction * n))))
    heldout_idx, train_idx = order[:n_heldout], order[n_heldout:]

    x_all = torch.from_numpy(x_np).to(device)
    x_train, x_heldout = x_all[torch.from_numpy(train_idx).to(device)], x_all[torch.from_numpy(heldout_idx).to(device)]
    model = _model(params, ctx, dim, likelihood)
    train_loss, monitor = _train(model, params, ctx, x_train, x_heldout)

    model.eval()
    splits = {"train": train_idx[: params.eval_samples], "heldout": heldout_idx[: params.eval_samples]}
    evaluations, exact_by_split = _evaluate_splits(model, params, ctx, x_np, x_all, splits, truth)
    summaries = {split: _summary(evaluations[split], dim, exact_by_split[split], params.eval_k[-1]) for split in splits}
    for split, summary in summaries.items():
        for bound in summary["bounds"]:
            if bound["nats"] is not None:
                ctx.metric(bound["k"], f"{split}_log_likelihood_vs_k", bound["nats"])

    k_max = params.eval_k[-1]
    columns, table = _heldout_table(evaluations["heldout"], k_max, splits["heldout"], dim, exact_by_split["heldout"])
    ctx.artifact("heldout_log_px.npy", _npy(table), "application/x-npy")
    title = f"L_K vs K: {params.dataset} ({likelihood}, train_k={params.train_k})"
    ctx.artifact("lk_vs_k.png", _plot_bounds(summaries, title), "image/png")
    if monitor:
        ctx.artifact("training.png", _plot_training(train_loss, monitor), "image/png")
    ctx.progress(1.0, "done")

    return {
        "dataset": str(params.dataset),
        "likelihood": likelihood,
        "data_dim": dim,
        "n_train": int(len(train_idx)),
        "n_heldout": int(n_heldout),
        "train_k": params.train_k,
        "eval_k": list(params.eval_k),
        "latent_dim": model.latent_dim,
        "exported": params.encoder is not None,
        "final_train_loss": _num(np.mean(train_loss[-max(1, len(train_loss) // 10) :])) if train_loss else None,
        "final_heldout_neg_elbo": _num(monitor[-1][1]) if monitor else None,
        "decoder_sigma": _decoder_sigma(model),
        "true_sigma": None if truth is None else truth.sigma,
        "train": summaries["train"],
        "heldout": summaries["heldout"],
        "heldout_npy_columns": columns,
    }


def _model(params: VaeDensityParams, ctx: RunContext, dim: int, likelihood: Likelihood) -> VAE:
    """The MLP VAE of ``hidden`` and ``latent_dim``, or one of the exported encoder and decoder (as sent), on the
    job's device."""
    if params.encoder is None or params.decoder is None:
        init_gen = torch.Generator().manual_seed(ctx.seed)
        model = VAE(dim, params.latent_dim, params.hidden, likelihood, params.fixed_sigma, LEVELS, generator=init_gen)
        return model.to(ctx.device)
    encoder, decoder = load_exported(params.encoder, ctx), load_exported(params.decoder, ctx)
    try:
        shape = encoder.input_shape()
    except ValueError as exc:
        raise ValueError(f"encoder: {exc}") from None
    if math.prod(shape) != dim:
        raise ValueError(f"encoder: takes {list(shape)} ({math.prod(shape)} values), the data rows have {dim}")
    row_bytes = footprint(decoder.program)["bytes_per_row"]  # evaluation chunks are sized by it
    return ModuleVAE(encoder, decoder, shape, likelihood, params.fixed_sigma, LEVELS, row_bytes=row_bytes).to(
        ctx.device
    )


def _decoder_sigma(model: VAE) -> dict | None:
    """Mean, min and max of the decoder's learned σ over the data dimensions (None for a Bernoulli decoder)."""
    if model.log_sigma is None:
        return None
    sigma = model.sigma().detach().double().cpu()
    return {"mean": _num(sigma.mean()), "min": _num(sigma.min()), "max": _num(sigma.max())}


def _model_input(model: VAE, v: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Rows as the model sees them: dequantized with fresh uniform noise from ``gen`` for a dequantized
    likelihood, unchanged otherwise."""
    return model.dequantize(v, gen) if model.likelihood == "dequantized" else v


def _train(
    model: VAE, params: VaeDensityParams, ctx: RunContext, x_train: torch.Tensor, x_heldout: torch.Tensor
) -> tuple[list[float], list[tuple[int, float]]]:
    """Adam on the training bound (ELBO or IWAE with ``train_k``): each step's batch loss, and the held-out −ELBO
    on a fixed monitoring subset at ``MONITOR_POINTS`` steps. Training and monitoring draw from streams of their
    own, so monitoring never shifts what training sees."""
    device = ctx.device
    train_gen = torch.Generator(device=device).manual_seed(ctx.seed)
    monitor_gen = torch.Generator(device=device).manual_seed(ctx.seed + 1_000_003)
    optimizer = torch.optim.Adam(model.parameters(), lr=params.lr)
    monitor_x = _model_input(model, x_heldout[:MONITOR_ROWS], monitor_gen)
    monitor_every = max(1, params.steps // MONITOR_POINTS)
    train_loss: list[float] = []
    monitor: list[tuple[int, float]] = []
    batch_size = min(params.batch_size, x_train.shape[0])
    for step in range(1, params.steps + 1):
        ctx.check_cancelled()
        idx = torch.randint(0, x_train.shape[0], (batch_size,), generator=train_gen, device=device)
        loss = model.loss(_model_input(model, x_train[idx], train_gen), params.train_k, train_gen)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        train_loss.append(float(loss.detach()))
        ctx.metric(step, "train_loss", train_loss[-1])
        if step % monitor_every == 0 or step == params.steps:
            with torch.no_grad():
                value = float(model.loss(monitor_x, 1, monitor_gen))
            monitor.append((step, value))
            ctx.metric(step, "heldout_neg_elbo", value)
            ctx.progress(0.7 * step / params.steps, f"step {step}/{params.steps}")
    return train_loss, monitor


def _evaluate_splits(
    model: VAE,
    params: VaeDensityParams,
    ctx: RunContext,
    x_np: np.ndarray,
    x_all: torch.Tensor,
    splits: dict[str, np.ndarray],
    truth: LinearGaussian | None,
) -> tuple[dict[str, dict], dict[str, torch.Tensor | None]]:
    """``_evaluate`` on each split's rows from a stream of its own (fresh draws for every K), and the exact
    log p(x) of the same rows where the true model is known."""
    eval_gen = torch.Generator(device=ctx.device).manual_seed(ctx.seed + 2_000_003)
    evaluations, exact_by_split = {}, {}
    with torch.no_grad():
        for i, (split, rows) in enumerate(splits.items()):
            x_split = _model_input(model, x_all[torch.from_numpy(rows).to(ctx.device)], eval_gen)
            span = (0.7 + 0.15 * i, 0.85 + 0.15 * i)
            evaluations[split] = _evaluate(model, x_split, params.eval_k, eval_gen, ctx, span, split)
            exact_by_split[split] = None if truth is None else truth.log_marginal(torch.from_numpy(x_np[rows]).double())
    return evaluations, exact_by_split


def _heldout_table(
    evaluation: dict, k_max: int, rows: np.ndarray, dim: int, exact: torch.Tensor | None
) -> tuple[list[str], np.ndarray]:
    """The rows of ``heldout_log_px.npy`` (one per held-out row: its index, L_K at the largest K in nats and in
    bits/dim, and the exact log p(x) where the true model is known) and the names of its columns."""
    held = evaluation["per_k"][k_max].numpy()
    columns = ["row_index", f"log_px_L{k_max}_nats", "bits_per_dim"]
    table = [rows.astype(np.float64), held, bits_per_dim(held, dim)]
    if exact is not None:  # the true model is known (linear_gaussian)
        columns.append("exact_log_px_nats")
        table.append(exact.numpy())
    return columns, np.stack(table, axis=1)
