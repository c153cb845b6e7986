"""AccumSGDM/AccumAdam: the update counter counts the updates that happened, and the argument checks refuse
exactly what is outside the documented ranges."""

from __future__ import annotations

import pytest
import torch

from core.optim.accum import AccumAdam, AccumSGDM


@pytest.mark.parametrize(
    "make", [lambda ps: AccumSGDM(ps, lr=0.1, accum_steps=3), lambda ps: AccumAdam(ps, lr=0.1, accum_steps=3)]
)
def test_updates_counts_the_micro_steps_that_moved_the_parameters(make):
    p = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    opt = make([p])
    moved_at = []
    for t in range(1, 8):
        before = p.detach().clone()
        p.grad = torch.full_like(p, float(t))
        opt.step()
        if not torch.equal(before, p.detach()):
            moved_at.append(t)
        assert opt.param_groups[0]["micro_step"] == t
        assert opt.param_groups[0]["updates"] == len(moved_at)
    assert moved_at == [3, 6]


def test_adam_accepts_its_documented_ranges_and_refuses_the_rest():
    p = [torch.zeros(2, requires_grad=True)]
    AccumAdam(p, eps=0.0, betas=(0.0, 0.0))  # the closed ends of the ranges are allowed
    for bad, field in (
        ({"eps": -0.5}, "eps"),
        ({"eps": -2.0}, "eps"),
        ({"betas": (0.9, 1.0)}, "betas"),
        ({"betas": (1.0, 0.9)}, "betas"),
        ({"betas": (0.9, -0.1)}, "betas"),
    ):
        with pytest.raises(ValueError, match=field):
            AccumAdam(p, **bad)


def test_complex_parameters_are_refused_in_every_param_group():
    opt = AccumSGDM([torch.zeros(2, requires_grad=True)], lr=0.1)
    with pytest.raises(ValueError, match="complex"):
        opt.add_param_group({"params": [torch.zeros(2, dtype=torch.complex64, requires_grad=True)]})
    with pytest.raises(ValueError, match="complex"):
        AccumAdam([torch.zeros(2, requires_grad=True), torch.zeros(2, dtype=torch.complex64, requires_grad=True)])
