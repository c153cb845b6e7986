"""core/penalty.py's method switch and messages: "power" really runs power iteration (a lower bound after one
step), a wrong input width names the first layer's width, and "auto" keeps jacrev up to its memory cap inclusive."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from core import costs
from core.penalty import gradient_bound_terms, jacobian_spectral_norms

DT = torch.float64


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 7), nn.Tanh(), nn.Linear(7, 5), nn.Tanh(), nn.Linear(5, 2)).to(DT)


def test_power_method_is_power_iteration_not_the_exact_norm():
    model, x = _net(), torch.randn(4, 3, dtype=DT, generator=torch.Generator().manual_seed(1))
    exact = jacobian_spectral_norms(model, x, method="jacrev")
    one_step = jacobian_spectral_norms(model, x, method="power", max_iter=1)
    converged = jacobian_spectral_norms(model, x, method="power", tol=1e-14, max_iter=2000)
    for t in range(1, 3):
        assert bool((one_step[t] <= exact[t] + 1e-12).all())
        assert float((exact[t] - one_step[t]).max()) > 1e-6  # one step from a random start is short of σ_max
        torch.testing.assert_close(converged[t], exact[t], rtol=1e-8, atol=0)


def test_wrong_input_width_names_the_first_layers_width():
    with pytest.raises(ValueError, match=r"d = 3, got \(4, 5\)"):
        gradient_bound_terms(_net(), torch.zeros(4, 5, dtype=DT))


def test_auto_keeps_jacrev_at_exactly_the_memory_cap(monkeypatch):
    needed = 2 * (7 + 5) * 3 * 8  # batch · Σ hidden widths · d_in · itemsize
    monkeypatch.setattr(costs, "JACREV_MAX_BYTES", needed)
    assert costs.auto_method(3, [7, 5], batch=2) == "jacrev"
    monkeypatch.setattr(costs, "JACREV_MAX_BYTES", needed - 1)
    assert costs.auto_method(3, [7, 5], batch=2) == "power"
