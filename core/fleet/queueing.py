"""How long a queued job will wait, estimated from the work ahead of it and recent run times.

The work ahead is what the queue's workers still have to do before they reach the job: the rest of each job they
are running (its kind's typical run time less the time it has run, never below zero) plus, for each job ahead in
the queue, its kind's typical run time. The workers share that work, so the wait is the work over their number.
The typical run time of a kind is the median of its recent run times (a few slow outliers do not move it). With
no live worker, or a kind ahead that never ran, there is no estimate.
"""

from __future__ import annotations

import statistics


def typical_run_s(samples: list[float]) -> float | None:
    return statistics.median(samples) if samples else None


def estimate_wait_s(
    ahead: dict[str, int], running: list[tuple[str, float]], workers: int, run_s: dict[str, list[float]]
) -> float | None:
    if workers < 1:
        return None
    typical = {kind: s for kind, samples in run_s.items() if (s := typical_run_s(samples)) is not None}
    kinds = set(ahead) | {kind for kind, _ in running}
    if any(kind not in typical for kind in kinds):
        return None
    work = sum(max(typical[kind] - elapsed, 0.0) for kind, elapsed in running)
    work += sum(count * typical[kind] for kind, count in ahead.items())
    return work / workers
