"""core/averaged_init.py's refusals: every fan must be positive, and a mean it does not know is refused whatever its
name sorts next to."""

from __future__ import annotations

import pytest

from core.averaged_init import averaged_variance


@pytest.mark.parametrize("fan_in, fan_out", [(0, 3), (3, 0), (-2, 3), (3, -2)])
def test_fans_must_be_positive(fan_in, fan_out):
    with pytest.raises(ValueError, match="fans must be positive"):
        averaged_variance(fan_in, fan_out)


@pytest.mark.parametrize("name", ["aaa", "foo", "geometrix", "median", "zzz"])
def test_unknown_means_are_refused(name):
    with pytest.raises(ValueError, match="unknown mean"):
        averaged_variance(3, 5, name)
