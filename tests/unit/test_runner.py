"""The worker's pure helpers: device choice and JSON-safe results."""

import pytest
import torch

from core.json_values import json_safe
from workers.runner import DeviceUnavailable, pick_device


def test_results_with_nan_or_infinity_are_stored_as_null():
    assert json_safe({"a": float("nan"), "b": [1.0, float("inf"), {"c": -float("inf")}], "d": (2, "x")}) == {
        "a": None,
        "b": [1.0, None, {"c": None}],
        "d": [2, "x"],
    }


def test_device_choice():
    assert pick_device("cpu") == torch.device("cpu")
    expected = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    assert pick_device("auto") == expected
    if not torch.cuda.is_available():
        with pytest.raises(DeviceUnavailable):
            pick_device("cuda")
