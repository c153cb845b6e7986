"""The ``init_averaging`` answer: which mean of the fans keeps the variance, and whether Monte Carlo agrees."""

from __future__ import annotations

import math
from collections import Counter

from core.summary import Outcome, fmt, summary

QUESTION = "Which average of fan-in and fan-out keeps activations' variance through non-square layers?"
CLAIM = (
    "σ² = 1/mean(m, n): the geometric mean keeps a pair m→n→m exactly (ratio mnσ⁴ = 1), the arithmetic "
    "(Xavier) gives 4mn/(m+n)², the quadratic (RMS) 2mn/(m²+n²) and the least-squares compromise less; torch "
    "layers reproduce these ratios."
)
SUPPORT_TOLERANCE = 0.05
CONTRADICT_TOLERANCE = 0.2


def summarize(params, result: dict) -> dict:
    if "layers" in result:
        return summarize_model(result)
    means = result["means"]
    errors = {}
    for name, m in means.items():
        for side in ("forward", "backward"):
            predicted = m[f"predicted_{side}_ratio"]
            errors[f"{name}/{side}"] = abs(m[f"{side}_ratio"] / predicted - 1) if predicted else None
    known = [e for e in errors.values() if e is not None]
    worst = max(known) if known else None
    figures: dict = {"max_relative_error": worst}
    for name, m in means.items():
        figures[f"forward_ratio/{name}"] = m["forward_ratio"]
        figures[f"backward_ratio/{name}"] = m["backward_ratio"]
    closest = min(means, key=lambda k: abs(means[k]["forward_ratio"] - 1))
    path = "→".join(str(w) for w in result["widths"])
    ratios = ", ".join(
        f"{k} {fmt(m['forward_ratio'])} (predicted {fmt(m['predicted_forward_ratio'])})" for k, m in means.items()
    )
    headline = f"Forward variance ratio through {path} ({result['activation']}): {ratios}; {closest} stays closest to 1"
    linear = result["activation"] == "linear"
    outcome: Outcome
    if not linear:
        outcome = "inconclusive"
        rule = "the predicted ratios are for linear layers; activations change the targets, so no verdict"
        headline += "."
    else:
        outcome = (
            "supports"
            if worst is not None and worst <= SUPPORT_TOLERANCE
            else "contradicts"
            if worst is not None and worst > CONTRADICT_TOLERANCE
            else "inconclusive"
        )
        rule = (
            f"supports when every measured ratio is within {SUPPORT_TOLERANCE:.0%} of its prediction, "
            f"contradicts beyond {CONTRADICT_TOLERANCE:.0%}, inconclusive between (Monte Carlo noise)"
        )
        headline += f"; Monte Carlo within {fmt(100 * worst)} % of the predictions." if worst is not None else "."
    rows = [
        [
            name,
            m["layer_variances"][0],
            m["forward_ratio"],
            m["predicted_forward_ratio"],
            m["backward_ratio"],
            m["predicted_backward_ratio"],
        ]
        for name, m in means.items()
    ]
    return summary(
        question=QUESTION,
        claim=CLAIM,
        headline=headline,
        outcome=outcome,
        statistic="max_relative_error",
        rule=rule,
        columns=["mean", "σ² (layer 1)", "forward ratio", "predicted", "backward ratio", "predicted"],
        rows=rows,
        figures=figures,
    )


def log_miss(ratios: dict) -> float:
    """How far an initialisation is from keeping the variance through the model: max(|ln forward|, |ln backward|),
    the worse direction's factor from 1 on a log scale (infinite for a ratio that is zero or not finite)."""
    values = (ratios["forward_ratio"], ratios["backward_ratio"])
    if any(v is None or not math.isfinite(v) or v <= 0 for v in values):
        return math.inf
    return max(abs(math.log(v)) for v in values)


def _shapes(layers: list[dict]) -> str:
    """The non-square weights grouped by fans, most frequent first: '60 × 576→1536, 30 × 1536→576'."""
    counts = Counter((row["fan_in"], row["fan_out"]) for row in layers)
    shown = [f"{c} × {fmt(m)}→{fmt(n)}" for (m, n), c in counts.most_common(4)]
    rest = len(counts) - len(shown)
    return ", ".join(shown) + (f" and {rest} more shape{'s' * (rest > 1)}" if rest > 0 else "")


def _model_verdict(misses: dict[str, float]) -> tuple[Outcome, float | None]:
    """Geometric against the best other mean, as the factor log_miss(geometric) − min log_miss(others)."""
    others = [v for k, v in misses.items() if k not in ("own init", "geometric")]
    if "geometric" not in misses or not others or not math.isfinite(misses["geometric"]):
        return "inconclusive", None
    gap = misses["geometric"] - min(others)
    if math.isinf(gap):  # every other mean broke the model
        gap = -math.inf
    if gap <= math.log(1 + SUPPORT_TOLERANCE):
        return "supports", (gap if math.isfinite(gap) else None)
    return ("contradicts" if gap > math.log(1 + CONTRADICT_TOLERANCE) else "inconclusive"), gap


def summarize_model(result: dict) -> dict:
    """A model's answer: its non-square weights, each initialisation's ratios through the whole model, and the
    initialisation (its own or a mean) that keeps both directions closest to 1."""
    inits = {"own init": result["own_init"], **result["means"]}
    misses = {name: log_miss(r) for name, r in inits.items()}
    best = min(misses, key=lambda k: misses[k])
    outcome, gap = _model_verdict(misses)
    model = result["model"]
    figures: dict = {
        "nonsquare_weights": model["nonsquare_weights"],
        "n_params": model["n_params"],
        "geometric_log_miss_minus_best_other": gap,
    }
    for name, r in inits.items():
        key = name.replace(" ", "_")
        figures[f"forward_ratio/{key}"] = r["forward_ratio"]
        figures[f"backward_ratio/{key}"] = r["backward_ratio"]
    ratios = "; ".join(f"{name} {fmt(r['forward_ratio'])} / {fmt(r['backward_ratio'])}" for name, r in inits.items())
    if math.isinf(misses[best]):
        advice = "no initialisation keeps both ratios finite and positive: no recommendation"
    elif best == "own init":
        advice = "recommendation: keep its own initialisation (no mean of the fans keeps the variance better)"
    else:
        advice = f"recommendation: re-draw its non-square weights with σ² = 1/{best} mean of the fans"
    headline = (
        f"{model['nonsquare_weights']} of the model's weights are non-square ({_shapes(result['layers'])}); "
        f"forward / backward second-moment ratio through the whole model: {ratios}; "
        f"{best} stays closest to 1 (off by ×{fmt(math.exp(misses[best]))} at worst); {advice}."
    )
    rule = (
        "log_miss = max(|ln forward|, |ln backward|) through the whole model; supports when the geometric mean's "
        f"log_miss is within ln(1 + {SUPPORT_TOLERANCE:g}) of the best other mean's (or below it), contradicts "
        f"beyond ln(1 + {CONTRADICT_TOLERANCE:g}), inconclusive between or without geometric and another mean"
    )
    rows = [
        [name, r["forward_ratio"], r["backward_ratio"], math.exp(misses[name]) if math.isfinite(misses[name]) else None]
        for name, r in inits.items()
    ]
    return summary(
        question=QUESTION,
        claim=CLAIM,
        headline=headline,
        outcome=outcome,
        statistic="geometric_log_miss_minus_best_other",
        rule=rule,
        columns=["initialisation", "forward ratio", "backward ratio", "worst factor from 1"],
        rows=rows,
        figures=figures,
    )
