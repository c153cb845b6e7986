"""Job kind ``embedding_dim``: the n > 8.33·ln N rule, h_n/n by integration, and an optional empirical sweep."""

from __future__ import annotations

import torch

from core import dimension
from core.networks.checks import embedding_sizes, model_checks
from core.networks.resolve import materialize
from core.plots import new_figure, to_png
from core.techniques.base import RunContext
from core.techniques.embedding_dim.spec import EmbeddingDimParams, SweepParams


def run(params: EmbeddingDimParams, ctx: RunContext) -> dict:
    coefficient = dimension.EXACT_COEFFICIENT if params.coefficient == "exact" else float(params.coefficient)
    dims = _dimensions(params.vocab_sizes or [], coefficient)
    ctx.progress(0.05, "dimension bounds")

    entropy = []
    for i, n in enumerate(sorted(params.entropy_dims)):
        ctx.check_cancelled()
        value = dimension.entropy_per_dim(n)
        entropy.append({"n": n, "h_n_over_n": value})
        ctx.metric(n, "entropy_per_dim", value)
        ctx.progress(0.05 + 0.25 * (i + 1) / len(params.entropy_dims), f"h_n/n at n={n}")
    result = {
        "coefficient": coefficient,
        "dimensions": dims,
        "entropy_per_dim": entropy,
        "entropy_per_dim_limit": dimension.ENTROPY_PER_DIM_LIMIT,
    }
    ctx.artifact("entropy_per_dim.png", _entropy_plot(entropy), "image/png")

    if params.model is not None:
        buildable, _ = materialize(params.model, ctx)
        sizes = embedding_sizes(buildable)
        assert sizes is not None  # the params' validator refused a model without token embeddings
        checks = model_checks(sizes, coefficient)
        result["model_checks"] = checks["rows"]
        result["model_all_ok"] = checks["all_ok"]
    if params.sweep is not None:
        result["sweep"] = _sweep(params.sweep, coefficient, ctx)
    ctx.progress(1.0, "done")
    return result


def _dimensions(vocab_sizes: list[int], coefficient: float) -> list[dict]:
    """Per vocabulary size N the bound coefficient·ln N and the least whole dimension above it."""
    return [
        {
            "vocab_size": n,
            "bound": dimension.dimension_bound(n, coefficient),
            "min_dimension": dimension.min_dimension(n, coefficient),
        }
        for n in vocab_sizes
    ]


def _sweep(sp: SweepParams, coefficient: float, ctx: RunContext) -> dict:
    gen = torch.Generator().manual_seed(ctx.seed)
    target = dimension.low_rank_target(sp.vocab_size, sp.target_rank, gen)
    dims = sorted(sp.dims)
    losses = []
    for i, n in enumerate(dims):

        def on_step(step: int, kl: float, n=n) -> None:
            ctx.check_cancelled()
            if step % 10 == 0 or step == sp.steps - 1:
                ctx.metric(step, f"fit_kl/n={n}", kl)

        losses.append(dimension.fit_pair_distribution(target, n, sp.steps, sp.lr, on_step))
        ctx.metric(n, "fit_kl_final", losses[-1])
        ctx.progress(0.3 + 0.65 * (i + 1) / len(dims), f"fitted n={n}")
    knee = dimension.elbow(dims, losses)
    formula = dimension.min_dimension(sp.vocab_size, coefficient)
    ctx.artifact("sweep.png", _sweep_plot(dims, losses, knee, formula, sp), "image/png")
    return {
        "vocab_size": sp.vocab_size,
        "target_rank": sp.target_rank,
        "dims": dims,
        "fit_kl": losses,
        "elbow": knee,
        "formula_dimension": formula,
    }


def _entropy_plot(entropy: list[dict]) -> bytes:
    fig, ax = new_figure()
    ax.plot([e["n"] for e in entropy], [e["h_n_over_n"] for e in entropy], "o-", label="h_n / n (integration)")
    ax.axhline(dimension.ENTROPY_PER_DIM_LIMIT, color="gray", ls="--", label="limit −½·ln φ = −0.2406")
    ax.set_xscale("log")
    ax.set_xlabel("embedding dimension n")
    ax.set_ylabel("entropy per dimension h_n / n (nats)")
    ax.set_title("Pair entropy per dimension of uniform vectors on the sphere")
    ax.legend()
    return to_png(fig)


def _sweep_plot(dims, losses, knee, formula, sp: SweepParams) -> bytes:
    fig, ax = new_figure()
    ax.plot(dims, losses, "o-", label="KL(target ‖ fit) after training")
    ax.axvline(knee, color="C1", ls="--", label=f"elbow n={knee}")
    ax.axvline(sp.target_rank, color="C2", ls=":", label=f"target rank {sp.target_rank}")
    ax.axvline(formula, color="gray", ls="-.", label=f"formula n={formula} (N={sp.vocab_size})")
    ax.set_xlabel("embedding dimension n")
    ax.set_ylabel("fit loss (nats)")
    ax.set_yscale("symlog", linthresh=1e-3)
    ax.set_title("Empirical fit of exp(<u,v>)/Z to a synthetic pair distribution")
    ax.legend()
    return to_png(fig)
