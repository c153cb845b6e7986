"""The contrastive helpers' reported figures (the naive arms' chunk_mean and full loss) computed by hand, and the
input checks' messages, which name the valid range."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from core.contrastive import (
    accumulated_backward,
    info_nce_loss,
    naive_accumulated_backward,
    naive_accumulated_backward_two_tower,
    two_tower_info_nce_loss,
)

F64 = torch.float64


def _tower(seed: int, d_in: int = 5, d_out: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Linear(d_in, d_out).to(F64)


@pytest.mark.parametrize("symmetric", [False, True])
def test_naive_two_tower_reports_the_chunk_weighted_mean_and_the_full_loss(symmetric):
    """chunk_mean = Σ_c (b_c/B)·L(chunk c) with unequal chunks (B = 7, chunks 3, 3, 1); full = the full-batch loss
    of the same reps. The input width (5) differs from B, so rows and columns cannot be confused."""
    gen = torch.Generator().manual_seed(0)
    queries, keys = torch.randn(7, 5, generator=gen, dtype=F64), torch.randn(7, 5, generator=gen, dtype=F64)
    qe, ke = _tower(1), _tower(2)
    got = naive_accumulated_backward_two_tower(
        qe, ke, queries, keys, chunk_size=3, temperature=0.5, symmetric=symmetric
    )
    with torch.no_grad():
        q, k = qe(queries), ke(keys)
        chunks = [(0, 3), (3, 6), (6, 7)]
        want_mean = sum(
            float(two_tower_info_nce_loss(q[a:b], k[a:b], None, 0.5, True, symmetric)) * (b - a) / 7 for a, b in chunks
        )
        want_full = float(two_tower_info_nce_loss(q, k, None, 0.5, True, symmetric))
    assert got.chunk_mean == pytest.approx(want_mean, rel=1e-12)
    assert float(got.full) == pytest.approx(want_full, rel=1e-12)


def test_naive_single_tower_reports_the_chunk_weighted_mean():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(6, 5, generator=gen, dtype=F64)
    positives = torch.tensor([1, 0, 3, 2, 5, 4])
    enc = _tower(4)
    got = naive_accumulated_backward(enc, x, positives, chunk_size=4, temperature=0.5)
    with torch.no_grad():
        z = enc(x)
        want_mean = (
            float(info_nce_loss(z[:4], positives[:4], 0.5)) * 4 / 6
            + float(info_nce_loss(z[4:], positives[4:] - 4, 0.5)) * 2 / 6
        )
        want_full = float(info_nce_loss(z, positives, 0.5))
    assert got.chunk_mean == pytest.approx(want_mean, rel=1e-12)
    assert float(got.full) == pytest.approx(want_full, rel=1e-12)


def test_naive_refuses_a_positive_before_its_chunk_and_names_the_rows():
    x = torch.randn(6, 5, dtype=F64)
    positives = torch.tensor([1, 0, 3, 2, 3, 4])  # row 4's positive (3) lies in the chunk before
    with pytest.raises(ValueError, match=r"rows 4\.\.5 lies outside"):
        naive_accumulated_backward(_tower(0), x, positives, chunk_size=4)
    positives = torch.tensor([1, 0, 3, 2, 5, 0])  # row 5's positive lies before its chunk: local index −4
    with pytest.raises(ValueError, match=r"rows 4\.\.5 lies outside"):
        naive_accumulated_backward(_tower(0), x, positives, chunk_size=4)


def test_positive_checks_name_the_valid_range_and_refuse_an_empty_batch():
    with pytest.raises(ValueError, match=r"positives must index 0\.\.5$"):
        info_nce_loss(torch.randn(6, 3), torch.tensor([1, 0, 3, 2, 5, 6]))
    with pytest.raises(ValueError, match=r"positives must index 0\.\.3$"):
        two_tower_info_nce_loss(torch.randn(2, 3), torch.randn(4, 3), torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="empty batch"):
        info_nce_loss(torch.randn(0, 3), torch.zeros(0, dtype=torch.long))


def test_encoder_output_must_be_two_dimensional():
    class Flat(nn.Module):
        def forward(self, x):
            return x.sum(dim=1)

    x = torch.randn(4, 3, dtype=F64, requires_grad=False)
    with pytest.raises(ValueError, match=r"encoder must return \(rows, dim\)"):
        accumulated_backward(Flat(), x, torch.tensor([1, 0, 3, 2]), chunk_size=2)
