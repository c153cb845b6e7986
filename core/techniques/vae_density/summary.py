"""The ``vae_density`` answer: does the importance-weighted estimate L_K rise with K from the ELBO toward log p(x)
(and stay below the exact value where the model has one)."""

from __future__ import annotations

from itertools import pairwise

from core.summary import Outcome, fmt, summary

QUESTION = "How well does a VAE's encoder, used as an importance sampler, estimate log p(x)?"
CLAIM = (
    "L_K = logsumexp_k[log q(x|z_k) + log q(z_k) − log p(z_k|x)] − log K satisfies ELBO = L_1 ≤ L_K ≤ L_{K+1} ≤ "
    "log p(x): more samples give a tighter estimate, never one above the truth."
)
NOISE = 2.0
SIGNAL = 3.0


def summarize(params, result: dict) -> dict:
    held = result["heldout"]
    bounds = held["bounds"]
    first, last = bounds[0], bounds[-1]
    figures: dict = {
        "elbo_nats": held["elbo_nats"],
        "exact_nats": held["exact_nats"],
        "bits_per_dim_at_max_k": last["bits_per_dim"],
        "ess_fraction_at_max_k": held["ess_fraction_at_max_k"],
        "gain_over_elbo_nats": _diff(last["nats"], held["elbo_nats"]),
        "gap_to_exact_nats_at_max_k": last["gap_to_exact_nats"],
    }
    for b in bounds:
        figures[f"L_{b['k']}_nats"] = b["nats"]
    violations = [_violation(a["nats"], b["nats"], a["stderr_nats"], b["stderr_nats"]) for a, b in pairwise(bounds)]
    if held["exact_nats"] is not None:
        violations.append(_violation(last["nats"], held["exact_nats"], last["stderr_nats"], 0.0))
    known = [v for v in violations if v is not None]
    worst = max(known) if known else None
    figures["max_violation_in_standard_errors"] = worst
    outcome: Outcome
    if worst is None or len(bounds) < 2:
        outcome = "inconclusive"
    else:
        outcome = "supports" if worst <= NOISE else "contradicts" if worst > SIGNAL else "inconclusive"
    headline = (
        f"Held-out log p(x) on {result['dataset']}: ELBO {fmt(held['elbo_nats'])} nats, "
        f"L_{last['k']} {fmt(last['nats'])} nats ({fmt(last['bits_per_dim'])} bits/dim)"
    )
    if held["exact_nats"] is not None:
        headline += f", exact {fmt(held['exact_nats'])}: gap {fmt(last['gap_to_exact_nats'])} nats at K = {last['k']}"
    headline += (
        f"; L_K {'rises' if (last['nats'] or 0) >= (first['nats'] or 0) else 'falls'} from K = {first['k']} "
        f"to K = {last['k']} by {fmt(_diff(last['nats'], first['nats']))} nats."
    )
    train = {b["k"]: b for b in result["train"]["bounds"]}
    rows = [
        [
            b["k"],
            b["nats"],
            b["stderr_nats"],
            b["bits_per_dim"],
            b["gap_to_exact_nats"],
            train.get(b["k"], {}).get("nats"),
        ]
        for b in bounds
    ]
    return summary(
        question=QUESTION,
        claim=CLAIM,
        headline=headline,
        outcome=outcome,
        statistic="max_violation_in_standard_errors",
        rule=(
            f"the largest drop of L_K as K grows (and its excess over the exact log p(x)), in standard "
            f"errors over rows: supports up to {fmt(NOISE)}, contradicts beyond {fmt(SIGNAL)}"
        ),
        columns=["K", "held-out L_K (nats)", "± s.e.", "bits/dim", "gap to exact", "train L_K (nats)"],
        rows=rows,
        figures=figures,
    )


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _violation(lower: float | None, upper: float | None, se_lower: float | None, se_upper: float | None):
    """How far ``lower`` sits above ``upper`` in standard errors (≤ 0 when the order holds); with no spread (an exact
    proposal) rounding, 1e-9 relative, is the unit."""
    if lower is None or upper is None:
        return None
    se = ((se_lower or 0.0) ** 2 + (se_upper or 0.0) ** 2) ** 0.5
    return (lower - upper) / max(se, 1e-9 * max(1.0, abs(upper)))
