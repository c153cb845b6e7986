"""Studies: one question asked of several settings over several seeds, each (setting, seed) an ordinary job.

``expand`` turns a grid (or an explicit list) of param overrides into labelled settings; ``compare`` turns the
children's summaries into the comparison a person reads: per setting, each key figure's mean ± 95 % CI over seeds
(Student t), and, where the baseline setting ran the same seeds, the paired differences against it (the seed's own
noise cancels, so a small effect shows with few seeds); ``bands`` lays out each setting's curve over its seeds
(mean, sd, min–max band) as the columns a chart draws. Pure Python: no HTTP, no SQL.
"""

from __future__ import annotations

import copy
import csv
import io
import itertools
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from scipy.stats import t as student_t

ACTIVE = ("queued", "running")
StudyStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]


@dataclass(frozen=True)
class Child:
    """What a comparison needs of one child job."""

    setting: int
    seed: int
    status: str
    progress: float
    summary: dict | None


def _set_path(params: dict, path: str, value) -> None:
    """params["a"]["b"] = value for path "a.b" (nested params such as embedding_dim's ``sweep.steps``)."""
    *parents, leaf = path.split(".")
    node = params
    for key in parents:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[leaf] = value


def _label(overrides: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in overrides.items()) or "base"


def expand(base: dict, grid: dict[str, list] | None, settings: list[dict] | None) -> list[tuple[str, dict]]:
    """(label, params) per setting: every combination of the grid's values (first key varies slowest), or each
    explicit override set, applied to ``base``. Keys may be dotted paths into nested params."""
    overrides = (
        [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())] if grid else list(settings or [{}])
    )
    out = []
    for o in overrides:
        params = copy.deepcopy(base)
        for path, value in o.items():
            _set_path(params, path, value)
        out.append((_label(o), params))
    return out


def status(children: list[Child], cancelled: bool) -> StudyStatus:
    """queued (nothing started) | running | cancelled | succeeded (every child) | failed (some did not succeed)."""
    return status_of_counts(Counter(c.status for c in children), cancelled)


def status_of_counts(counts: Mapping[str, int], cancelled: bool) -> StudyStatus:
    """``status`` from how many children are in each state (the study list reads counts, not children); the
    same rule as ``core.studies.repository``'s status filter."""
    states = {s for s, n in counts.items() if n}
    if states & set(ACTIVE):
        return "queued" if states == {"queued"} and not cancelled else "running"
    if cancelled:
        return "cancelled"
    return "succeeded" if states <= {"succeeded"} else "failed"


def progress(children: list[Child]) -> float:
    """Mean progress of the children, a finished child (whatever its outcome) counting as done."""
    if not children:
        return 1.0
    return sum(1.0 if c.status not in ACTIVE else c.progress for c in children) / len(children)


def progress_of_counts(by_status: Mapping[str, tuple[int, float]]) -> float:
    """``progress`` from (how many, summed progress) of the children in each state."""
    total = sum(n for n, _ in by_status.values())
    if not total:
        return 1.0
    return sum(done if s in ACTIVE else n for s, (n, done) in by_status.items()) / total


def mean_ci(values: list[float | None]) -> dict:
    """Mean and half-width of the 95 % confidence interval (Student t, n − 1 degrees of freedom; None for n < 2)."""
    xs = [float(v) for v in values if v is not None and math.isfinite(v)]
    n = len(xs)
    if n == 0:
        return {"mean": None, "ci95": None, "n": 0}
    mean = sum(xs) / n
    if n < 2:
        return {"mean": mean, "ci95": None, "n": 1}
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    return {"mean": mean, "ci95": float(student_t.ppf(0.975, n - 1)) * sd / math.sqrt(n), "n": n}


def _figures(c: Child) -> dict:
    return (c.summary or {}).get("figures") or {} if c.status == "succeeded" else {}


def _numeric(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def compare(labels: list[str], baseline: int, children: list[Child]) -> dict:
    """The comparison table: one row per setting, each summary figure as mean ± 95 % CI over the seeds that
    succeeded, the verdicts' tally, and paired differences against ``baseline`` over the seeds both ran."""
    names: list[str] = []
    for c in children:
        names += [k for k, v in _figures(c).items() if k not in names and _numeric(v)]
    by_setting: dict[int, list[Child]] = {i: [] for i in range(len(labels))}
    for c in children:
        by_setting[c.setting].append(c)
    base_by_seed = {c.seed: _figures(c) for c in by_setting.get(baseline, []) if c.status == "succeeded"}
    rows = []
    for i, label in enumerate(labels):
        kids = by_setting[i]
        done = [c for c in kids if c.status == "succeeded"]
        verdicts: dict[str, int] = {}
        for c in done:
            outcome = ((c.summary or {}).get("verdict") or {}).get("outcome")
            if outcome:
                verdicts[outcome] = verdicts.get(outcome, 0) + 1
        row = {
            "setting": i,
            "label": label,
            "jobs": len(kids),
            "succeeded": len(done),
            "failed": sum(c.status == "failed" for c in kids),
            "verdicts": verdicts,
            "figures": {n: mean_ci([_figures(c).get(n) for c in done if _numeric(_figures(c).get(n))]) for n in names},
            "paired": None,
        }
        if i != baseline:
            paired = {}
            for n in names:
                diffs = [
                    _figures(c)[n] - base_by_seed[c.seed][n]
                    for c in done
                    if c.seed in base_by_seed and _numeric(_figures(c).get(n)) and _numeric(base_by_seed[c.seed].get(n))
                ]
                paired[n] = mean_ci(diffs)
            row["paired"] = paired
        rows.append(row)
    return {"baseline": baseline, "figures": names, "rows": rows}


def to_csv(comparison: dict) -> str:
    """The comparison as CSV: a row per setting; per figure its mean, 95 % CI half-width, n, and the paired
    difference against the baseline with its CI."""
    buf = io.StringIO()
    out = csv.writer(buf, lineterminator="\n")
    names = comparison["figures"]
    out.writerow(
        ["setting", "label", "jobs", "succeeded", "failed", "supports", "contradicts", "inconclusive"]
        + [f"{n}{suffix}" for n in names for suffix in ("_mean", "_ci95", "_n", "_diff_vs_baseline", "_diff_ci95")]
    )
    for row in comparison["rows"]:
        cells = [row["setting"], row["label"], row["jobs"], row["succeeded"], row["failed"]]
        cells += [row["verdicts"].get(v, 0) for v in ("supports", "contradicts", "inconclusive")]
        for n in names:
            f = row["figures"][n]
            d = (row["paired"] or {}).get(n) or {}
            cells += [_cell(f["mean"]), _cell(f["ci95"]), f["n"], _cell(d.get("mean")), _cell(d.get("ci95"))]
        out.writerow(cells)
    return buf.getvalue()


def _cell(v) -> str:
    return "" if v is None else repr(float(v))


def bucket_width(first: int, last: int, points: int) -> int:
    """Steps per bucket so that the steps first..last make at most ``points`` buckets (1: every step kept)."""
    return max(1, -(-(last - first + 1) // points))


def bands(rows: Sequence, settings: int) -> list[dict]:
    """Per setting, its seeds' curves as one line and a band, as columns a chart draws (step, mean, sd, min, max,
    n), from rows (setting, step, n, mean, lo, hi, squares): ``squares`` is the sum of squared deviations from the
    mean, so sd = √(squares / (n − 1)), None below two seeds."""
    out = [{"setting": i, "steps": [], "mean": [], "sd": [], "min": [], "max": [], "n": []} for i in range(settings)]
    for setting, step, n, mean, lo, hi, squares in sorted(rows, key=lambda r: (r[0], r[1])):
        band = out[setting]
        band["steps"].append(int(step))
        band["mean"].append(float(mean))
        band["sd"].append(math.sqrt(max(0.0, float(squares)) / (n - 1)) if n > 1 else None)
        band["min"].append(float(lo))
        band["max"].append(float(hi))
        band["n"].append(int(n))
    return out
