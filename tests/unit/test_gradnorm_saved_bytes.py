"""gradnorm_gan's ``cost.saved_bytes_*``: the distinct storages autograd saved for backward in the measured step,
told apart by identity. Counted by address, a temporary freed between two critic updates and a new one allocated at
its address were one storage, so the figure depended on the allocator and changed between identical runs."""

from __future__ import annotations

import torch

from core.gan import mixture
from core.techniques import get_kind
from core.techniques.gradnorm_gan.run import SavedBytes, Trainer, _measured_step, _Training

KIND = get_kind("gradnorm_gan")


def test_a_freed_storage_whose_address_is_reused_counts_again_and_a_live_one_once():
    x = torch.ones(4, requires_grad=True)  # 16 bytes, alive throughout
    meter = SavedBytes()
    for i in range(3):
        with meter:
            t = torch.full((4,), float(i + 1))  # 16 bytes, freed before the next update: its address may be reused
            loss = (t * x).sum() + (x * x).sum() + (x[1:] * x[:3]).sum()  # x saved, and views of x: one storage
        del t, loss
    assert meter.total == 16 + 3 * 16
    outside = (torch.ones(8, requires_grad=True) * 2.0).sum()  # not metered
    assert meter.total == 64 and outside is not None


def _measured(seed: int) -> _Training:
    params = KIND.params(**{**KIND.example, "n_critic": 3, "batch": 32, "width": 16, "depth": 2, "n_data": 256})
    x, _, _, _ = mixture(params.dataset, params.n_data, torch.Generator().manual_seed(seed), params.mixture_std)
    out = _Training()
    _measured_step(Trainer(params, x, False, seed, torch.device("cpu")), out)
    return out


def test_the_measured_steps_saved_bytes_are_the_same_on_every_run():
    first = _measured(0)
    clutter = [torch.empty(n) for n in (7, 32, 64, 128, 512)]  # other allocations move the allocator's free lists
    second = _measured(0)
    del clutter
    assert first.saved_d.total == second.saved_d.total > 0
    assert first.saved_g.total == second.saved_g.total > 0
    assert first.saved_d.sizes == second.saved_d.sizes  # the same storages, in the same order
