"""The ``momentum_accumulation`` answer: is the χ form exact, and does updating every k micro-batches beat updating
every micro-batch over the seeds."""

from __future__ import annotations

import math

from core.summary import Outcome, Spread, fmt, fmt_spread, spread, summary

QUESTION = "Can momentum carry gradient accumulation, and does updating every k micro-batches beat updating each one?"
CLAIM = (
    "The χ form (decay momentum on the first micro-step after an update, add g/k, move θ every k-th step) equals "
    "explicit buffer accumulation exactly for SGDM (~1e-15 in float64) without the extra buffer; updating less "
    "often can beat per-micro-batch updates when a small batch is the bottleneck."
)
IDENTITY_TOLERANCE = {"float64": 1e-10, "float32": 1e-4}
STANDARD_ERRORS = 2.0
ACCUMULATING = ("chi_exact", "explicit_buffer", "beta_tilde_lr_chi", "lr_chi_only")


def summarize(params, result: dict) -> dict:
    arms = result["arms"]
    k = result["accum_steps"]
    acc = {a: spread(r["final_heldout_accuracies"]) for a, r in arms.items()}
    figures: dict = {f"final_heldout_accuracy/{a}": s.mean for a, s in acc.items()}
    identity = arms.get("chi_exact", {}).get("identity_error_vs_explicit")
    figures["identity_error_chi_exact"] = identity
    exact_checked = result["optimizer"] == "sgdm" and identity is not None
    tolerance = IDENTITY_TOLERANCE[result["dtype"]]
    accumulating = next((a for a in ACCUMULATING if a in acc), None)
    headline = []
    if identity is not None:
        headline.append(
            f"χ-exact {'matches' if identity <= tolerance else 'departs from'} the explicit buffer "
            f"(max weight difference {fmt(identity)}"
            + (")" if result["optimizer"] == "sgdm" else "; Adam's form is approximate by design)")
        )
    gain = se = None
    if (
        accumulating
        and "per_micro_batch" in acc
        and acc[accumulating].mean is not None
        and acc["per_micro_batch"].mean is not None
    ):
        a, b = acc[accumulating], acc["per_micro_batch"]
        assert a.mean is not None and b.mean is not None  # checked just above
        gain = a.mean - b.mean
        se = _standard_error(a, b)
        beat = "beat" if gain > 0 else "did not beat"
        headline.append(
            f"updating every {k} micro-batches ({accumulating}) {beat} per-micro-batch updates: "
            f"{fmt_spread(a)} vs {fmt_spread(b)} held-out accuracy over {a.n} seed{'s' * (a.n > 1)}"
        )
    figures["accuracy_gain_vs_per_micro_batch"] = gain
    figures["accuracy_gain_standard_error"] = se
    outcome: Outcome
    if exact_checked and identity > tolerance:
        outcome, statistic = "contradicts", "identity_error_chi_exact"
        rule = f"the SGDM χ form must equal explicit accumulation to {fmt(tolerance)} ({result['dtype']})"
    elif gain is not None:
        statistic = "accuracy_gain_vs_per_micro_batch"
        if se is not None and gain > STANDARD_ERRORS * se:
            outcome = "supports"
        elif se is not None and gain < -STANDARD_ERRORS * se:
            outcome = "contradicts"
        else:
            outcome = "inconclusive"
        rule = (
            f"held-out accuracy gain of updating every k over per-micro-batch updates: supports beyond "
            f"+{fmt(STANDARD_ERRORS)} standard errors over seeds, contradicts below −{fmt(STANDARD_ERRORS)}, "
            "inconclusive between or with one seed"
        )
    else:
        statistic = "identity_error_chi_exact"
        outcome = "supports" if exact_checked else "inconclusive"
        rule = (
            f"the SGDM χ form must equal explicit accumulation to {fmt(tolerance)}; run per_micro_batch beside "
            "an accumulating arm to test the accuracy claim"
        )
    rows = []
    for name, r in arms.items():
        loss = Spread(mean=r["final_heldout_loss_mean"], sd=r["final_heldout_loss_sd"], n=acc[name].n)
        rows.append([name, acc[name], loss, r["updates"], r["state_bytes"], r["identity_error_vs_explicit"]])
    return summary(
        question=QUESTION,
        claim=CLAIM,
        headline="; ".join(headline) + "." if headline else f"Arms trained with {result['optimizer']}, k = {k}.",
        outcome=outcome,
        statistic=statistic,
        rule=rule,
        columns=["arm", "held-out accuracy", "held-out loss", "updates", "state bytes", "max |θ − θ_explicit|"],
        rows=rows,
        figures=figures,
    )


def _standard_error(a: Spread, b: Spread) -> float | None:
    """Standard error of the difference of two means over seeds (None with one seed: no noise estimate)."""
    if a.sd is None or b.sd is None:
        return None
    return math.sqrt(a.sd**2 / a.n + b.sd**2 / b.n)
