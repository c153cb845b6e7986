"""The ``embedding_dim`` answer: the dimension the n > c·ln N rule asks for, and whether the evidence backs it."""

from __future__ import annotations

from core.dimension import EXACT_COEFFICIENT
from core.summary import Outcome, fmt, summary

QUESTION = "How many embedding dimensions does a vocabulary (or sequence) of N items need?"
CLAIM = (
    "n > 8.33·ln N: the pair entropy per dimension h_n/n tends to −½·ln φ = −0.2406, so 2·ln N/0.2406 "
    "dimensions suffice; an empirical fit of exp(<u,v>)/Z levels off at or below that n."
)
COEFFICIENT_TOLERANCE = 0.01


def summarize(params, result: dict) -> dict:
    c = result["coefficient"]
    dims = result["dimensions"]
    entropy = max(result["entropy_per_dim"], key=lambda e: e["n"])
    implied = 2 / -entropy["h_n_over_n"]
    figures = {
        "coefficient": c,
        "h_n_over_n_at_largest_n": entropy["h_n_over_n"],
        "largest_n": entropy["n"],
        "implied_coefficient": implied,
    }
    for d in dims:
        figures[f"min_dimension_N={d['vocab_size']}"] = d["min_dimension"]
    bounds = ", ".join(f"{d['min_dimension']} dimensions for N = {fmt(d['vocab_size'])}" for d in dims)
    headline = (
        f"n > {fmt(c)}·ln N asks for {bounds}; h_n/n = {entropy['h_n_over_n']:.4f} at n = {entropy['n']} "
        f"(limit {result['entropy_per_dim_limit']:.4f}) implies a coefficient of {implied:.3f}"
    )
    sweep = result.get("sweep")
    outcome: Outcome
    if sweep is not None:
        figures.update(
            {
                "elbow": sweep["elbow"],
                "formula_dimension": sweep["formula_dimension"],
                "elbow_over_formula": sweep["elbow"] / sweep["formula_dimension"],
            }
        )
        below = sweep["elbow"] <= sweep["formula_dimension"]
        headline += (
            f"; the empirical fit (N = {sweep['vocab_size']}, target rank {sweep['target_rank']}) levels off "
            f"at n = {sweep['elbow']}, {'within' if below else 'above'} the formula's "
            f"{sweep['formula_dimension']}."
        )
        outcome, statistic = ("supports" if below else "contradicts"), "elbow_over_formula"
        rule = "supports when the fit's elbow is at or below the formula's dimension (ratio ≤ 1), else contradicts"
    else:
        close = abs(implied - EXACT_COEFFICIENT) / EXACT_COEFFICIENT <= COEFFICIENT_TOLERANCE
        headline += "."
        outcome, statistic = ("supports" if close else "inconclusive"), "implied_coefficient"
        rule = (
            f"supports when 2/|h_n/n| at the largest n is within {COEFFICIENT_TOLERANCE:.0%} of "
            f"{EXACT_COEFFICIENT:.3f}; smaller n has not converged (inconclusive); add a sweep to test the rule"
        )
    rows = [[fmt(d["vocab_size"]), d["bound"], d["min_dimension"]] for d in dims]
    return summary(
        question=QUESTION,
        claim=CLAIM,
        headline=headline,
        outcome=outcome,
        statistic=statistic,
        rule=rule,
        columns=["N", f"{fmt(c)}·ln N", "min dimension"],
        rows=rows,
        figures=figures,
    )
