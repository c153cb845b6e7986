"""The ``gradnorm_gan`` answer: does the constraint keep the critic's input gradient at or below 1, how good are the
samples, and what does a step cost. GN against GP is a comparison of jobs: a study over ``constraint`` gives it."""

from __future__ import annotations

from core.summary import Outcome, fmt, summary

QUESTION = "Does gradient normalization make a GAN critic 1-Lipschitz, and at what quality and cost?"
CLAIM = (
    "A normalized critic (GN: D/(‖∇D‖+|D|), GraN, D/‖∇D‖) has ‖∇D̂‖ ≤ 1 inside each linear region but jumps "
    "across region boundaries; in the author's runs GN trained worse than the gradient penalty and was slower "
    "and heavier (second-order gradients in both steps)."
)
NORMALIZED = ("gn", "gran", "plain_norm")
BOUND_TOLERANCE = 1e-3
PROBE_SETS = ("real", "fake", "interp")


def summarize(params, result: dict) -> dict:
    lip, quality, cost = result["lipschitz"], result["quality"], result["cost"]
    grad_max = max((lip[f"grad_max_{s}"] for s in PROBE_SETS if lip.get(f"grad_max_{s}") is not None), default=None)
    figures: dict = {
        "max_input_grad_norm": grad_max,
        "max_pair_slope": lip.get("max_pair_slope"),
        "share_pairs_over_1": lip.get("share_pairs_over_1"),
        "time_per_step_ms": cost.get("time_per_step_ms_median"),
        "saved_bytes_critic_update": cost.get("saved_bytes_critic_update"),
        "final_loss_d": result.get("final_loss_d"),
        "steps_run": result["steps_run"],
    }
    figures.update({k: v for k, v in quality.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    constraint = result["constraint"]
    if "modes_covered" in quality:
        quality_text = (
            f"{quality['modes_covered']}/{quality['n_modes']} modes covered, "
            f"{fmt(quality['high_quality_share'])} of samples high quality"
        )
    elif "classifier_test_accuracy" in quality:
        quality_text = (
            f"{quality.get('classes_covered')} digit classes covered, classifier Fréchet distance "
            f"{fmt(quality.get('frechet_classifier_features'))}"
        )
    else:
        quality_text = f"Fréchet distance {fmt(quality.get('frechet_raw'))}"
    diverged = result.get("diverged_at_step")
    headline = (
        f"{constraint} critic ({result['loss']} loss, {result['steps_run']} steps"
        + (f", diverged at step {diverged}" if diverged is not None else "")
        + f"): max ‖∇D̂‖ {fmt(grad_max, 5)} on real, fake and interpolated points, pair slopes up to "
        f"{fmt(lip.get('max_pair_slope'))}; {quality_text}; {fmt(cost.get('time_per_step_ms_median'))} ms "
        f"per step."
    )
    outcome: Outcome
    if constraint in NORMALIZED:
        within = grad_max is not None and grad_max <= 1 + BOUND_TOLERANCE
        outcome = "supports" if within else "contradicts" if grad_max is not None else "inconclusive"
        rule = (
            f"a normalized critic's input-gradient norm must stay ≤ 1 (+{fmt(BOUND_TOLERANCE)}) at every probe "
            "point; pair slopes above 1 are the boundary jumps the post describes"
        )
    else:
        outcome = "inconclusive"
        rule = (
            f"'{constraint}' makes no hard bound on ‖∇D‖; compare it with a gn job (a study over constraint) "
            "to test the post's GN-vs-GP finding"
        )
    rows = [[s, lip.get(f"grad_max_{s}"), lip.get(f"grad_mean_{s}")] for s in PROBE_SETS]
    return summary(
        question=QUESTION,
        claim=CLAIM,
        headline=headline,
        outcome=outcome,
        statistic="max_input_grad_norm",
        rule=rule,
        columns=["probe points", "max ‖∇D̂‖", "mean ‖∇D̂‖"],
        rows=rows,
        figures=figures,
    )
