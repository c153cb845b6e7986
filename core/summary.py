"""A job's answer in one screen: the shape every kind's ``summarize(params, result)`` returns, and the few helpers
they share to build it (number formatting, mean ± sd over seeds).

A summary answers the kind's question against the post's claim (docs/techniques.md): one headline sentence, a verdict
with the statistic it rests on, one comparison table (rows = arms or settings; cells are numbers, text, or mean ± sd
over seeds; never arrays: those stay in the result, the metrics and the artifacts), and flat key figures, which studies
average over seeds. Pure Python: the API and the worker both import it, neither loads torch for it.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Outcome = Literal["supports", "contradicts", "inconclusive"]


class Spread(BaseModel):
    """A figure over seeds: mean, sample standard deviation (None with one seed) and the number of seeds."""

    model_config = ConfigDict(extra="forbid")
    mean: float | None
    sd: float | None = None
    n: int = Field(1, ge=1)


Cell = float | int | str | bool | Spread | None


class Verdict(BaseModel):
    """Whether the job supports the post's claim, and the one statistic that decides it."""

    model_config = ConfigDict(extra="forbid")
    outcome: Outcome
    statistic: str = Field(description="name of the key figure the verdict rests on")
    value: float | None = Field(description="that figure's value in this job")
    rule: str = Field(description="how the value decides the outcome, in words")


class Table(BaseModel):
    """One comparison table: a row per arm or setting, a column per figure that matters."""

    model_config = ConfigDict(extra="forbid")
    columns: list[str] = Field(description="first column names the row (arm or setting)")
    rows: list[list[Cell]]


class Summary(BaseModel):
    """What a job found, first: read it before the full result."""

    model_config = ConfigDict(extra="forbid")
    question: str = Field(description="the question the kind answers")
    claim: str = Field(description="the post's claim the job is checked against")
    headline: str = Field(description="one sentence answering the question, with the figures it rests on")
    verdict: Verdict
    table: Table
    figures: dict[str, float | int | None] = Field(
        description="key figures by name; a study reports each as mean ± 95 % CI over its seeds"
    )


def fmt(value: float | None, digits: int = 3) -> str:
    """A number as a headline writes it: 3 significant digits, scientific outside [1e-3, 1e5)."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    if not math.isfinite(value):
        return str(value)
    mag = abs(value)
    if mag == 0:
        return "0"
    if 1e-3 <= mag < 1e5:
        return f"{value:.{digits}g}" if mag < 10**digits else f"{value:,.0f}"
    mantissa, exponent = f"{value:.{digits - 1}e}".split("e")
    return f"{float(mantissa):g}e{int(exponent)}"


def spread(values: list[float | None]) -> Spread:
    """Mean and sample sd of the finite values (a run that diverged to NaN is stored as None and left out)."""
    xs = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not xs:
        return Spread(mean=None, n=max(1, len(values)))
    mean = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else None
    return Spread(mean=mean, sd=sd, n=len(xs))


def fmt_spread(s: Spread) -> str:
    """'0.916 ± 0.0079' (or just the mean with one seed)."""
    return fmt(s.mean) if s.sd is None else f"{fmt(s.mean)} ± {fmt(s.sd, 2)}"


def summary(
    *,
    question: str,
    claim: str,
    headline: str,
    outcome: Outcome,
    statistic: str,
    rule: str,
    columns: list[str],
    rows: list[list[Cell]],
    figures: dict[str, float | int | None],
) -> dict:
    """Build and check a summary; the verdict's value is read from ``figures`` so the two cannot disagree."""
    verdict = Verdict(outcome=outcome, statistic=statistic, value=figures[statistic], rule=rule)
    return Summary(
        question=question,
        claim=claim,
        headline=headline,
        verdict=verdict,
        table=Table(columns=columns, rows=rows),
        figures=figures,
    ).model_dump(mode="json")
