"""The metric rollup's blocks against hand-computed buckets and a brute-force grouping of the raw rows: each block of
``2**k`` steps keeps its row count, first and last step, and its least and greatest rows with the lower step winning
ties; coarser levels merged from finer ones equal those computed from the rows; the bucket level a read picks and
the stored level it reads. Pure numpy, no database."""

from __future__ import annotations

import random

import numpy as np
import pytest

from core.metrics import rollup


def _as_rows(e: rollup.Extremes) -> list[tuple]:
    return [
        (int(b), int(n), int(f), int(la), int(ms), float(mv), int(xs), float(xv))
        for b, n, f, la, ms, mv, xs, xv in zip(
            e.block, e.n, e.first_step, e.last_step, e.min_step, e.min_value, e.max_step, e.max_value, strict=True
        )
    ]


def _brute(steps, values, k: int) -> list[tuple]:
    """Each block of 2**k steps from the raw rows, grouped in plain Python."""
    groups: dict[int, list[tuple[int, float]]] = {}
    for s, v in zip(steps, values, strict=True):
        groups.setdefault(s >> k if k < rollup.WHOLE else 0, []).append((s, v))
    out = []
    for block in sorted(groups):
        rows = groups[block]
        lo = min(rows, key=lambda r: (r[1], r[0]))
        hi = min(rows, key=lambda r: (-r[1], r[0]))
        steps_in = [s for s, _ in rows]
        out.append((block, len(rows), min(steps_in), max(steps_in), lo[0], lo[1], hi[0], hi[1]))
    return out


def test_levels_are_every_fourth_power_of_two_up_to_two_to_the_32():
    assert rollup.LEVELS == (4, 8, 12, 16, 20, 24, 28, 32) and rollup.TOP_LEVEL == 32


def test_sixteen_step_blocks_by_hand():
    # steps 0, 3, 15 | 16, 17, 31 | 40, 47: values with ties inside blocks
    steps = [0, 3, 15, 16, 17, 31, 40, 47]
    values = [2.0, 1.0, 1.0, 5.0, 5.0, -1.0, 0.5, 0.25]
    level4 = rollup.levels_of(steps, values)[4]
    assert _as_rows(level4) == [
        (0, 3, 0, 15, 3, 1.0, 0, 2.0),  # min 1.0 at steps 3 and 15: the lower step
        (1, 3, 16, 31, 31, -1.0, 16, 5.0),  # max 5.0 at steps 16 and 17: the lower step
        (2, 2, 40, 47, 47, 0.25, 40, 0.5),
    ]
    level8 = rollup.levels_of(steps, values)[8]  # one block of 256 steps holds them all
    assert _as_rows(level8) == [(0, 8, 0, 47, 31, -1.0, 16, 5.0)]


def test_one_row_per_step_before_any_merge():
    raw = rollup.of_rows([5, 9], [0.5, -0.5])
    assert _as_rows(raw) == [(5, 1, 5, 5, 5, 0.5, 5, 0.5), (9, 1, 9, 9, 9, -0.5, 9, -0.5)]
    assert len(raw) == 2 and raw.n.dtype == np.int64 and raw.min_value.dtype == np.float64


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_level_equals_a_brute_force_grouping_of_the_rows(seed):
    rng = random.Random(seed)
    steps = sorted(rng.sample(range(-3000, 70_000), 600))
    values = [float(rng.choice([0.0, 1.0, 2.0, rng.gauss(0, 1)])) for _ in steps]  # many ties
    levels = rollup.levels_of(steps, values)
    for k in rollup.LEVELS:
        assert _as_rows(levels[k]) == _brute(steps, values, k), k
    shuffled = list(zip(steps, values, strict=True))
    rng.shuffle(shuffled)  # the order rows arrive in does not matter
    again = rollup.levels_of([s for s, _ in shuffled], [v for _, v in shuffled])
    assert _as_rows(again[12]) == _brute(steps, values, 12)


def test_merging_finer_blocks_equals_merging_the_rows_and_whole_takes_everything():
    rng = random.Random(7)
    steps = sorted(rng.sample(range(0, 5000), 300))
    values = [float(rng.randint(-3, 3)) for _ in steps]
    raw = rollup.of_rows(steps, values)
    fine = rollup.merge(raw, 3)
    assert _as_rows(rollup.merge(fine, 5)) == _as_rows(rollup.merge(raw, 8)) == _brute(steps, values, 8)
    whole = rollup.merge(fine, rollup.WHOLE)
    assert _as_rows(whole) == _brute(steps, values, rollup.WHOLE)
    assert int(whole.n[0]) == 300 and (int(whole.first_step[0]), int(whole.last_step[0])) == (steps[0], steps[-1])


def test_negative_steps_fall_in_negative_blocks_and_empty_input_stays_empty():
    level4 = rollup.levels_of([-17, -16, -1, 0], [1.0, 2.0, 3.0, 4.0])[4]
    assert [int(b) for b in level4.block] == [-2, -1, 0] and [int(n) for n in level4.n] == [1, 2, 1]
    empty = rollup.levels_of([], [])
    assert all(len(empty[k]) == 0 for k in rollup.LEVELS)


@pytest.mark.parametrize(
    ("lo", "hi", "buckets", "level"),
    [
        (0, 99, 100, 0),  # every step its own bucket
        (0, 99, 99, 1),
        (0, 99, 10, 4),  # 100 steps in ≤ 10 blocks: 16-step blocks make 7, 8-step ones 13
        (0, 99, 7, 4),
        (0, 99, 6, 5),
        (16, 31, 1, 4),  # one aligned 16-step block
        (15, 16, 1, 5),  # across a boundary: it takes blocks of 32
        (-1, 0, 2, 0),
        (-1, 0, 1, rollup.WHOLE),  # both signs in one bucket: no block of 2**k holds −1 and 0
        (5, 5, 1, 0),
    ],
)
def test_bucket_level_is_the_least_k_that_fits(lo, hi, buckets, level):
    assert rollup.bucket_level(lo, hi, buckets) == level
    if level < rollup.WHOLE:
        assert (hi >> level) - (lo >> level) + 1 <= buckets
        assert level == 0 or (hi >> (level - 1)) - (lo >> (level - 1)) + 1 > buckets


@pytest.mark.parametrize(
    ("k", "raw", "level"),
    [
        (0, True, 0),
        (3, True, 0),
        (3, False, 4),
        (4, True, 4),
        (7, True, 4),
        (8, False, 8),
        (31, True, 28),
        (40, True, 32),
    ],
)
def test_stored_level_is_the_coarsest_not_coarser_than_the_bucket(k, raw, level):
    assert rollup.stored_level(k, raw=raw) == level
