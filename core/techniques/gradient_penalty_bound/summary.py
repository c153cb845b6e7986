"""The ``gradient_penalty_bound`` answer: does ‖∇_x f‖² · Σ_t (1+‖h‖²)/(‖W‖²‖∂h/∂x‖²) stay below ‖∇_θ f‖² for every
sample at every measured step."""

from __future__ import annotations

from core.summary import Outcome, fmt, summary

QUESTION = "Does a parameter-gradient penalty bound the input gradient of an MLP?"
CLAIM = (
    "‖∇_x f‖² · Σ_t (1 + ‖h^(t)‖²)/(‖W^(t)‖² ‖∂h^(t)/∂x‖²) ≤ ‖∇_θ f‖² for every input and every MLP "
    "(lhs/rhs ≤ 1, equality for one layer with scalar output), so SGD's implicit ‖∇_θ f‖ penalty also "
    "smooths f in x."
)
TABLE_ROWS = 8


def summarize(params, result: dict) -> dict:
    ratio = result["ratio"]
    steps = result["measured_steps"]
    finite_max = [v for v in ratio["max"] if v is not None]
    max_ratio = max(finite_max) if finite_max else None
    violations = result["violations"]
    figures: dict = {
        "violations": violations,
        "violations_frobenius": result["violations_frobenius"],
        "max_ratio": max_ratio,
        "final_median_ratio": ratio["median"][-1],
        "max_identity_residual": result["max_identity_residual"],
        "final_accuracy": result["final_accuracy"],
        "final_loss": result["final_loss"],
    }
    for t, layer in enumerate(result["layers"], start=1):
        figures[f"w_norm/layer{t}/first"] = layer["w_norm"][0]
        figures[f"w_norm/layer{t}/last"] = layer["w_norm"][-1]
    checked = result["samples"] * len(steps)
    outcome: Outcome
    if violations > 0:
        outcome = "contradicts"
    elif max_ratio is None:
        outcome = "inconclusive"
    else:
        outcome = "supports"
    headline = (
        f"lhs/rhs stayed ≤ 1 at all {fmt(checked)} sample-steps"
        if violations == 0
        else f"lhs exceeded rhs at {violations} of {fmt(checked)} sample-steps"
    )
    headline += (
        f" (max {fmt(max_ratio)}, median {fmt(ratio['median'][0])} at step {steps[0]} → "
        f"{fmt(ratio['median'][-1])} at step {steps[-1]}; identity residual {fmt(result['max_identity_residual'])})"
        f"; f = {result['f']}, final accuracy {fmt(result['final_accuracy'])}."
    )
    pick = (
        sorted({round(i * (len(steps) - 1) / (TABLE_ROWS - 1)) for i in range(TABLE_ROWS)})
        if len(steps) > TABLE_ROWS
        else range(len(steps))
    )
    rows = [[steps[i], ratio["q10"][i], ratio["median"][i], ratio["q90"][i], ratio["max"][i]] for i in pick]
    return summary(
        question=QUESTION,
        claim=CLAIM,
        headline=headline,
        outcome=outcome,
        statistic="violations",
        rule="contradicts when any sample's lhs exceeds rhs by more than float64 rounding (a violation); "
        "supports when none does",
        columns=["step", "lhs/rhs q10", "median", "q90", "max"],
        rows=rows,
        figures=figures,
    )
