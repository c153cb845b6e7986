"""The ``embedding_dim`` answer: the dimension the n > c·ln N rule asks for, and whether the evidence backs it; with
a model, whether the model's own token embedding and attention heads meet the rule, first."""

from __future__ import annotations

import math

from core.dimension import EXACT_COEFFICIENT
from core.summary import Outcome, fmt, summary

QUESTION = "How many embedding dimensions does a vocabulary (or sequence) of N items need?"
CLAIM = (
    "n > 8.33·ln N: the pair entropy per dimension h_n/n tends to −½·ln φ = −0.2406, so 2·ln N/0.2406 "
    "dimensions suffice; an empirical fit of exp(<u,v>)/Z levels off at or below that n."
)
MODEL_QUESTION = "Are this model's token embedding and attention heads wide enough for its vocabulary and context?"
MODEL_CLAIM = (
    "n > 8.33·ln N: a token embedding needs more than 8.33·ln(vocabulary) dimensions and an attention head more "
    "than 8.33·ln(context) (the pair entropy per dimension tends to −½·ln φ = −0.2406)."
)
COEFFICIENT_TOLERANCE = 0.01
ROW_NAMES = {"token_embedding": ("token embedding", "vocabulary"), "attention_head": ("attention head", "context")}


def summarize(params, result: dict) -> dict:
    c = result["coefficient"]
    stored = result.get("model_checks") or []
    checks = [_limits(row, c) for row in stored if row.get("n") is not None]
    entropy = max(result["entropy_per_dim"], key=lambda e: e["n"])
    implied = 2 / -entropy["h_n_over_n"]
    figures: dict = {
        "coefficient": c,
        "h_n_over_n_at_largest_n": entropy["h_n_over_n"],
        "largest_n": entropy["n"],
        "implied_coefficient": implied,
    }
    for d in result["dimensions"]:
        figures[f"min_dimension_N={d['vocab_size']}"] = d["min_dimension"]
    evidence, outcome, statistic, rule = _evidence(result, entropy, implied, figures)
    parts = [_check_sentence(row, c) for row in checks]
    parts += [
        f"{row['what'].replace('_', ' ')}: not applicable ({row.get('why', 'no such dimension')})"
        for row in stored
        if row.get("n") is None
    ]
    if result["dimensions"]:
        bounds = ", ".join(
            f"{d['min_dimension']} dimensions for N = {fmt(d['vocab_size'])}" for d in result["dimensions"]
        )
        parts.append(f"n > {fmt(c)}·ln N asks for {bounds}")
    headline = "; ".join(parts + [evidence]) + "."
    question, claim = QUESTION, CLAIM
    if checks:
        question, claim = MODEL_QUESTION, MODEL_CLAIM
        outcome, statistic, rule = _model_verdict(checks, figures)
    columns, rows = _table(checks, result["dimensions"], c)
    return summary(
        question=question,
        claim=claim,
        headline=headline[0].upper() + headline[1:] if checks else headline,  # "n > …" keeps its lower-case n
        outcome=outcome,
        statistic=statistic,
        rule=rule,
        columns=columns,
        rows=rows,
        figures=figures,
    )


def _table(checks: list[dict], dims: list[dict], c: float) -> tuple[list[str], list[list]]:
    """A row per vocabulary size; with a model, its check rows first, and columns for n, the check and N_max."""
    bound = f"{fmt(c)}·ln N"
    if not checks:
        return ["N", bound, "min dimension"], [[fmt(d["vocab_size"]), d["bound"], d["min_dimension"]] for d in dims]
    rows: list[list] = [
        [ROW_NAMES.get(r["what"], (r["what"], ""))[0], r["n"], r["N"], r["bound"], None, r["ok"], r["log10_N_max"]]
        for r in checks
    ]
    rows += [["vocabulary", None, d["vocab_size"], d["bound"], d["min_dimension"], None, None] for d in dims]
    return ["what", "n", "N", bound, "min dimension", "n > bound", "log10 N_max"], rows


def _limits(row: dict, c: float) -> dict:
    """A model check row with ln/log10 N_max: read from the row, or, for a record stored before they were (whose
    ``largest_N_supported`` saturated at 2^62), computed from its n as n/c."""
    if "ln_N_max" in row:
        return row
    ln_max = row["n"] / c
    return {**row, "ln_N_max": ln_max, "log10_N_max": ln_max / math.log(10)}


def _largest(row: dict) -> str:
    """N_max = e^(n/c) as a headline writes it: the number below 10^15, a power of ten above."""
    if row["log10_N_max"] < 15:
        return fmt(math.exp(row["ln_N_max"]))
    return f"10^{row['log10_N_max']:.1f}"


def _check_sentence(row: dict, c: float) -> str:
    name, of = ROW_NAMES.get(row["what"], (row["what"], row.get("N_is", "N")))
    verdict = "holds" if row["ok"] else "FAILS"
    relation = ">" if row["ok"] else "≤"
    return (
        f"{name} n = {row['n']} for its {of} N = {fmt(row['N'])}: n {relation} {fmt(c)}·ln N = {fmt(row['bound'])}, "
        f"{verdict} (its n supports N up to {_largest(row)})"
    )


def _model_verdict(checks: list[dict], figures: dict) -> tuple[Outcome, str, str]:
    """The model's rows decide: the smallest n / (c·ln N) over them, a row at or below 1 failing the rule."""
    ratios = [r["n"] / r["bound"] if r["bound"] > 0 else math.inf for r in checks]
    worst = min(ratios)
    figures["model_worst_n_over_bound"] = worst if math.isfinite(worst) else None
    figures["model_checks_failing"] = sum(not r["ok"] for r in checks)
    for r in checks:
        figures[f"model/{r['what']}/n"] = r["n"]
        figures[f"model/{r['what']}/bound"] = r["bound"]
        figures[f"model/{r['what']}/log10_N_max"] = r["log10_N_max"]
    outcome: Outcome = "supports" if all(r["ok"] for r in checks) else "contradicts"
    rule = (
        "the model's rows decide: supports when every row's n exceeds c·ln N (n / bound > 1: token embedding vs "
        "vocabulary, attention head vs context), contradicts when any row is at or below its bound"
    )
    return outcome, "model_worst_n_over_bound", rule


def _evidence(result: dict, entropy: dict, implied: float, figures: dict) -> tuple[str, Outcome, str, str]:
    """What the integration at the largest n (and the sweep, when run) says of the rule: a headline clause and its
    verdict."""
    clause = (
        f"h_n/n = {entropy['h_n_over_n']:.4f} at n = {entropy['n']} (limit {result['entropy_per_dim_limit']:.4f}) "
        f"implies a coefficient of {implied:.3f}"
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
        clause += (
            f"; the empirical fit (N = {sweep['vocab_size']}, target rank {sweep['target_rank']}) levels off "
            f"at n = {sweep['elbow']}, {'within' if below else 'above'} the formula's {sweep['formula_dimension']}"
        )
        outcome = "supports" if below else "contradicts"
        rule = "supports when the fit's elbow is at or below the formula's dimension (ratio ≤ 1), else contradicts"
        return clause, outcome, "elbow_over_formula", rule
    close = abs(implied - EXACT_COEFFICIENT) / EXACT_COEFFICIENT <= COEFFICIENT_TOLERANCE
    rule = (
        f"supports when 2/|h_n/n| at the largest n is within {COEFFICIENT_TOLERANCE:.0%} of "
        f"{EXACT_COEFFICIENT:.3f}; smaller n has not converged (inconclusive); add a sweep to test the rule"
    )
    return clause, ("supports" if close else "inconclusive"), "implied_coefficient", rule
