"""The ``init_averaging`` answer: which mean of the fans keeps the variance, and whether Monte Carlo agrees."""

from __future__ import annotations

from core.summary import Outcome, fmt, summary

QUESTION = "Which average of fan-in and fan-out keeps activations' variance through non-square layers?"
CLAIM = (
    "σ² = 1/mean(m, n): the geometric mean keeps a pair m→n→m exactly (ratio mnσ⁴ = 1), the arithmetic "
    "(Xavier) gives 4mn/(m+n)² and the quadratic less; torch layers reproduce these ratios."
)
SUPPORT_TOLERANCE = 0.05
CONTRADICT_TOLERANCE = 0.2


def summarize(params, result: dict) -> dict:
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
