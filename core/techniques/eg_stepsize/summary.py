"""The ``eg_stepsize`` answer: does adapting the step size by exponentiated gradient make training less sensitive to
the base learning rate than fixed-rate SGD, over the scales and seeds of the job."""

from __future__ import annotations

from core.summary import Outcome, fmt, fmt_spread, spread, summary

QUESTION = "Does exponentiated-gradient step-size adaptation make training robust to the base learning rate?"
CLAIM = (
    "ν_{t+1} = ν_t ⊙ exp(γ g_{t−1} ⊙ g_t) raises a coordinate's rate while its gradients agree and lowers it on "
    "sign flips, so a badly chosen base rate is corrected on the fly (and rates re-adapt after a shift), unlike "
    "fixed-rate SGD."
)
EG_NAMES = ("eg_stepsize", "eg_funnel")
MARGIN = 0.02


def summarize(params, result: dict) -> dict:
    runs = result["runs"]
    labels = result["optimizers"]
    scales = result["lr_scales"]
    acc = {
        (o, s): spread([r["final_test_acc"] for r in runs if r["optimizer"] == o and r["lr_scale"] == s])
        for o in labels
        for s in scales
    }
    loss = {
        (o, s): spread([r["final_test_loss"] for r in runs if r["optimizer"] == o and r["lr_scale"] == s])
        for o in labels
        for s in scales
    }
    worst = {o: _worst(acc[(o, s)].mean for s in scales) for o in labels}
    figures: dict = {f"worst_scale_accuracy/{o}": w for o, w in worst.items()}
    eg = next((o for name in EG_NAMES for o in labels if o == name), None)
    gain = None
    eg_worst, sgd_worst = (worst[eg], worst["sgd"]) if eg is not None and "sgd" in labels else (None, None)
    if eg_worst is not None and sgd_worst is not None:
        gain = eg_worst - sgd_worst
    figures["worst_scale_accuracy_gain_vs_sgd"] = gain
    outcome: Outcome
    if gain is None:
        outcome = "inconclusive"
    else:
        outcome = "supports" if gain > MARGIN else "contradicts" if gain < -MARGIN else "inconclusive"
    span = f"lr × {fmt(min(scales))}…{fmt(max(scales))}"
    parts = [f"{o} {fmt(worst[o])}" for o in labels]
    headline = (
        f"Worst held-out accuracy over {span} ({result['seeds']} seed{'s' * (result['seeds'] > 1)}): "
        + ", ".join(parts)
    )
    if gain is not None:
        relation = "beats" if gain > 0 else "trails" if gain < 0 else "ties with"
        headline += (
            f"; {eg} {relation} fixed-rate SGD" + (f" by {fmt(abs(gain))}" if gain else "") + " at its worst scale"
        )
    best = max(acc, key=lambda k: mean if (mean := acc[k].mean) is not None else float("-inf"))
    headline += f"; best setting {best[0]} at lr × {fmt(best[1])} ({fmt_spread(acc[best])})."
    settings = {(s["optimizer"], s["lr_scale"]): s for s in result["settings"]}
    rows = []
    for o in labels:
        for s in scales:
            st = settings.get((o, s), {})
            rows.append(
                [
                    o,
                    s,
                    acc[(o, s)],
                    loss[(o, s)],
                    st.get("diverged_runs"),
                    st.get("rate_factor"),
                    st.get("mean_recovery_steps"),
                ]
            )
    return summary(
        question=QUESTION,
        claim=CLAIM,
        headline=headline,
        outcome=outcome,
        statistic="worst_scale_accuracy_gain_vs_sgd",
        rule=(
            f"worst-scale held-out accuracy of the EG optimizer minus fixed-rate SGD's: supports above "
            f"+{fmt(MARGIN)}, contradicts below −{fmt(MARGIN)}, inconclusive between or without both "
            "optimizers"
        ),
        columns=[
            "optimizer",
            "lr scale",
            "test accuracy",
            "test loss",
            "diverged runs",
            "rate factor",
            "recovery steps",
        ],
        rows=rows,
        figures=figures,
    )


def _worst(values) -> float | None:
    """The lowest accuracy over the scales; a setting with no finite accuracy (diverged) counts as 0."""
    vals = [0.0 if v is None else v for v in values]
    return min(vals) if vals else None
