"""Min/max decimation of metric series over power-of-two step blocks, and the stored rollup that makes it cheap.

A chart of a long series needs, per bucket of steps, the row of least and the row of greatest value. Computing that
from the raw rows costs a pass over the whole series on every read (a million rows: far over 100 ms). Buckets here
are instead aligned blocks of ``2**k`` steps (block ``step >> k``), so the extremes of a coarse block are the
extremes of the finer blocks inside it: the rollup keeps, at ingest, each series' extremes per block at every level
in ``LEVELS``, and a read merges at most ``2**LEVEL_SPACING`` stored blocks per bucket. Ties are broken by the lower
step (least value first, then least step; greatest value first, then least step), so every level agrees exactly.

Pure numpy: the metrics repository feeds it rows and writes or reads the rollup table.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LEVEL_SPACING = 4
# log2 of the block width in steps: 16 steps, 256, ... 2**32. A read at bucket width 2**k uses the largest level <= k.
LEVELS = tuple(range(LEVEL_SPACING, 33, LEVEL_SPACING))
TOP_LEVEL = LEVELS[-1]  # its blocks give each series' row count and step span in a handful of rows
WHOLE = 64  # a bucket "level" that holds every int64 step


@dataclass(frozen=True)
class Extremes:
    """Per block (ascending): its number, rows, first and last step, and its min and max rows as (step, value)."""

    block: np.ndarray
    n: np.ndarray
    first_step: np.ndarray
    last_step: np.ndarray
    min_step: np.ndarray
    min_value: np.ndarray
    max_step: np.ndarray
    max_value: np.ndarray

    def __len__(self) -> int:
        return len(self.block)


def of_rows(steps, values) -> Extremes:
    """Raw rows (non-null values) as blocks of one row each, keyed by their own step."""
    steps = np.asarray(steps, dtype=np.int64)
    values = np.asarray(values, dtype=np.float64)
    return Extremes(steps, np.ones(len(steps), dtype=np.int64), steps, steps, steps, values, steps, values)


def merge(parts: Extremes, shift: int) -> Extremes:
    """Blocks ``shift`` levels coarser: each new block (``block >> shift``) takes the extremes of the parts inside
    it. Exact for any grouping, since min and max (with the step tie-break) are associative."""
    if len(parts) == 0:
        return parts
    coarse = parts.block >> shift if shift < WHOLE else np.zeros_like(parts.block)
    by_min = np.lexsort((parts.min_step, parts.min_value, coarse))
    by_max = np.lexsort((parts.max_step, -parts.max_value, coarse))
    sorted_coarse = coarse[by_min]
    edges = np.empty(len(sorted_coarse), dtype=bool)
    edges[0] = True
    np.not_equal(sorted_coarse[1:], sorted_coarse[:-1], out=edges[1:])
    starts = np.flatnonzero(edges)
    lo, hi = by_min[starts], by_max[starts]
    return Extremes(
        block=sorted_coarse[starts],
        n=np.add.reduceat(parts.n[by_min], starts),
        first_step=np.minimum.reduceat(parts.first_step[by_min], starts),
        last_step=np.maximum.reduceat(parts.last_step[by_min], starts),
        min_step=parts.min_step[lo],
        min_value=parts.min_value[lo],
        max_step=parts.max_step[hi],
        max_value=parts.max_value[hi],
    )


def levels_of(steps, values) -> dict[int, Extremes]:
    """The rollup of some rows of one series: its blocks at every level of ``LEVELS``."""
    out: dict[int, Extremes] = {}
    current, at = of_rows(steps, values), 0
    for level in LEVELS:
        current, at = merge(current, level - at), level
        out[level] = current
    return out


def bucket_level(lo: int, hi: int, buckets: int) -> int:
    """The least k such that steps ``lo``..``hi`` fall in at most ``buckets`` blocks of ``2**k`` steps; ``WHOLE``
    (one bucket of everything) when none does (a single bucket over steps of both signs)."""
    for k in range(WHOLE):
        if (hi >> k) - (lo >> k) + 1 <= buckets:
            return k
    return WHOLE


def stored_level(k: int, *, raw: bool) -> int:
    """The level to read for buckets of ``2**k`` steps: the coarsest stored one not coarser than k (0: raw rows,
    only when ``raw``; a series whose raw rows were pruned is read from the finest stored level)."""
    candidates = [level for level in LEVELS if level <= k]
    if candidates:
        return candidates[-1]
    return 0 if raw else LEVELS[0]
