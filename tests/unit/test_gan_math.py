"""Gradient normalization's parameter gradient, and the baselines the gradnorm_gan comparison rests on (WGAN-GP,
spectral norm, weight clipping), each pinned on a case with a known answer."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from core.gan import normalize_discriminator
from core.techniques.gradnorm_gan.run import Trainer, build_nets, gradient_penalty
from core.techniques.gradnorm_gan.spec import GradnormGanParams

F64 = torch.float64


def _smooth_critic(seed: int) -> nn.Sequential:
    """A tanh critic: ∇ₓD varies with x and W everywhere, so ‖∇D‖ has a parameter gradient of its own."""
    gen = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 1)).to(F64)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=F64))
    return net


@pytest.mark.parametrize("variant", ["gn", "gran", "plain"])
def test_normalized_critic_gradient_in_w_matches_finite_differences(variant):
    """∂ΣD̂/∂W by autograd (double backprop through ‖∇ₓD‖) against central differences in every weight. A detached
    gradient norm drops ‖∇D‖'s own dependence on W and misses by far more than the tolerance."""
    D = _smooth_critic(0)
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
    eps = 0.3  # large enough that GraN's and plain's ε matter, so they are tested as written

    def total() -> torch.Tensor:
        return normalize_discriminator(D, x, variant, eps)[0].sum()

    weight = D[0].weight
    (autograd,) = torch.autograd.grad(total(), weight)
    numeric = torch.zeros_like(weight)
    h = 1e-6
    with torch.no_grad():
        for idx in range(weight.numel()):
            flat = weight.view(-1)
            flat[idx] += h
            up = total().detach()
            flat[idx] -= 2 * h
            down = total().detach()
            flat[idx] += h
            numeric.view(-1)[idx] = (up - down) / (2 * h)
    torch.testing.assert_close(autograd, numeric, rtol=1e-6, atol=1e-8)
    # what a detached norm would give: the W-gradient of D / (c + |D|) with c frozen, measurably different
    _d_hat, norm = normalize_discriminator(D, x, variant, eps)
    frozen = norm.detach()
    d = D(x).reshape(-1)
    wrong = {"gn": d / (frozen + d.abs()), "gran": d * frozen / (frozen**2 + eps), "plain": d / (frozen + eps)}
    (detached,) = torch.autograd.grad(wrong[variant].sum(), weight)
    assert float((detached - numeric).abs().max()) > 1e-3


def test_gradient_penalty_is_squared_distance_of_the_norm_from_one():
    """A linear critic D(x) = <w, x> + b has ∇D = w at every interpolate: the penalty is (‖w‖ − 1)² exactly."""
    for norm, expected in ((3.0, 4.0), (1.0, 0.0), (0.5, 0.25)):
        D = nn.Linear(4, 1).to(F64)
        with torch.no_grad():
            D.weight.copy_(torch.tensor([[norm * 0.6, 0.0, norm * 0.8, 0.0]], dtype=F64))
        gen = torch.Generator().manual_seed(0)
        real, fake = torch.randn(16, 4, dtype=F64), torch.randn(16, 4, dtype=F64)
        penalty = gradient_penalty(D, real, fake, gen)
        assert float(penalty.detach()) == pytest.approx(expected, abs=1e-12)
        penalty.backward()  # create_graph: the penalty trains the critic, d/dw (‖w‖−1)² = 2(‖w‖−1) w/‖w‖
        torch.testing.assert_close(D.weight.grad, 2 * (norm - 1) * D.weight.detach() / norm, rtol=1e-10, atol=1e-12)


def test_gradient_penalty_is_taken_at_interpolates_between_real_and_fake():
    """On D(x) = ½‖x‖², ∇D = x: the penalty is the mean of (‖α r + (1−α) f‖ − 1)² with the generator's α."""

    def D(x):
        return 0.5 * x.square().sum(dim=1, keepdim=True)

    real = torch.randn(8, 3, generator=torch.Generator().manual_seed(2), dtype=F64)
    fake = torch.randn(8, 3, generator=torch.Generator().manual_seed(3), dtype=F64) + 5.0
    alpha = torch.rand(8, 1, generator=torch.Generator().manual_seed(9), dtype=torch.float32).to(F64)
    inter = alpha * real + (1 - alpha) * fake
    expected = (inter.norm(dim=1) - 1).square().mean()
    got = gradient_penalty(D, real, fake, torch.Generator().manual_seed(9))
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=0)


def _params(**kw) -> GradnormGanParams:
    base = {"dataset": "ring8", "width": 16, "depth": 3, "z_dim": 4, "batch": 32, "n_critic": 1, "steps": 1}
    return GradnormGanParams(**{**base, **kw})


def test_spectral_norm_is_on_every_critic_layer_and_makes_each_norm_one():
    G, D = build_nets(_params(constraint="spectral"), 2, False, seed=0)
    linears = [m for m in D.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 4
    for m in linears:
        assert nn.utils.parametrize.is_parametrized(m, "weight")
    assert not any(nn.utils.parametrize.is_parametrized(m) for m in G.modules())
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    for _ in range(200):  # each forward in train mode runs one power iteration per layer
        D(x)
    D.eval()
    for m in linears:
        assert float(torch.linalg.matrix_norm(m.weight.detach(), ord=2)) == pytest.approx(1.0, abs=1e-3)
    _, plain = build_nets(_params(constraint="none"), 2, False, seed=0)
    assert not any(nn.utils.parametrize.is_parametrized(m) for m in plain.modules())
    assert any(
        abs(float(torch.linalg.matrix_norm(m.weight.detach(), ord=2)) - 1.0) > 0.05
        for m in plain.modules()
        if isinstance(m, nn.Linear)
    )


def test_clipping_is_the_unclipped_update_clamped_to_the_bound():
    """The clip arm's critic after one update equals the 'none' arm's (same seed, same batches) clamped to ±c, and
    the bound is reached: clipping does happen, on every parameter tensor. (BCE loss: under the Wasserstein loss a
    tiny critic's hidden biases get exactly cancelling gradients and would not move.)"""
    data = torch.randn(256, 2, generator=torch.Generator().manual_seed(0))
    c = 0.02
    clipped = Trainer(
        _params(constraint="clip", clip_value=c, lr_d=0.05, loss="bce"), data, False, 0, torch.device("cpu")
    )
    free = Trainer(_params(constraint="none", lr_d=0.05, loss="bce"), data, False, 0, torch.device("cpu"))
    with torch.no_grad():  # both start from the same critic, strictly inside the bound
        for w in clipped.D.parameters():
            w.copy_(w.clamp(-c, c) * 0.5)
    free.D.load_state_dict(clipped.D.state_dict())
    before = copy.deepcopy(free.D.state_dict())
    clipped.step()
    free.step()
    for (name, a), b in zip(clipped.D.named_parameters(), free.D.parameters()):
        torch.testing.assert_close(a, b.clamp(-c, c), rtol=0, atol=0)
        assert float(a.abs().max()) == pytest.approx(c), name  # the bound is reached on every tensor
        assert not torch.equal(a, before[name]), name  # and the critic did move


def test_probes_interpolate_on_the_segment_between_real_and_fake():
    from core.gan import probe_critic

    real = torch.randn(6, 2, generator=torch.Generator().manual_seed(0))
    fake = torch.randn(6, 2, generator=torch.Generator().manual_seed(1)) + 3.0
    probes = probe_critic(lambda x: x.sum(dim=1), real, fake, torch.Generator().manual_seed(5))
    alpha = torch.rand(6, generator=torch.Generator().manual_seed(5)).reshape(6, 1)
    torch.testing.assert_close(probes["interp"][0], alpha * real + (1 - alpha) * fake)
    torch.testing.assert_close(probes["interp"][2], torch.full((6,), 2.0**0.5))  # ‖∇ Σx‖ = √2


def test_replaced_batchnorm_keeps_its_affine_scale_and_shift_and_warns_at_the_caller():
    from core.gan import GradNormalized

    critic = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3), nn.Linear(3, 1))
    with torch.no_grad():
        critic[1].weight.copy_(torch.tensor([2.0, 3.0, 4.0]))
        critic[1].bias.copy_(torch.tensor([-1.0, 0.5, 0.25]))
    with pytest.warns(UserWarning, match="GroupNorm") as record:
        wrapped = GradNormalized(critic, "gn", batchnorm="replace")
    assert record[0].filename == __file__  # stacklevel: the warning points at the code that asked for it
    gn = wrapped.D[1]
    assert isinstance(gn, nn.GroupNorm)
    torch.testing.assert_close(gn.weight.detach(), torch.tensor([2.0, 3.0, 4.0]))
    torch.testing.assert_close(gn.bias.detach(), torch.tensor([-1.0, 0.5, 0.25]))


def test_pair_slope_of_duplicates_only_is_zero_and_classifier_share_is_per_sample():
    from core.gan import classifier_scores, max_pair_slope

    x = torch.ones(4, 2)
    assert max_pair_slope(x, torch.arange(4.0)) == (0.0, 0.0)  # every pair is a duplicate: no slope measured
    probs = torch.tensor([[0.95, 0.05], [0.6, 0.4], [0.5, 0.5]])
    scores = classifier_scores(probs, confident=0.9)
    assert scores["confident_share"] == pytest.approx(1 / 3)  # one sample of three is confident
    assert scores["classes_covered"] == 1  # every arg-max is class 0 (the tie goes to the first)
