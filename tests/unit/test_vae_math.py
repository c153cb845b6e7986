"""The encoder's proposal q(z|x) against closed forms: its density, its reparameterized draws, and the KL of the
ELBO loss."""

from __future__ import annotations

import math

import torch

from core.vae import VAE, DiagonalGaussian, standard_normal_log_prob

F64 = torch.float64


def test_diagonal_gaussian_density_is_the_closed_form():
    """log q(z) = −½ Σ_j [((z_j − μ_j)/σ_j)² + log 2π] − Σ_j log σ_j, per row, for draws and arbitrary points."""
    gen = torch.Generator().manual_seed(0)
    mean = torch.randn(5, 3, generator=gen, dtype=F64)
    log_std = 0.5 * torch.randn(5, 3, generator=gen, dtype=F64)
    q = DiagonalGaussian(mean, log_std, gen)
    z = 2.0 * torch.randn(7, 5, 3, generator=gen, dtype=F64)
    std = log_std.exp()
    closed = (-0.5 * ((z - mean) / std) ** 2 - 0.5 * math.log(2 * math.pi) - log_std).sum(-1)
    torch.testing.assert_close(q.log_prob(z, None), closed, rtol=0, atol=1e-12)
    reference = torch.distributions.Normal(mean, std).log_prob(z).sum(-1)
    torch.testing.assert_close(q.log_prob(z, None), reference, rtol=0, atol=1e-12)


def test_diagonal_gaussian_draws_are_mean_plus_scale_times_noise():
    mean = torch.tensor([[1.0, -2.0]], dtype=F64)
    log_std = torch.tensor([[math.log(0.5), math.log(3.0)]], dtype=F64)
    z = DiagonalGaussian(mean, log_std, torch.Generator().manual_seed(4)).sample(None, 6)
    eps = torch.randn((6, 1, 2), generator=torch.Generator().manual_seed(4), dtype=F64)
    torch.testing.assert_close(z, mean + torch.tensor([0.5, 3.0], dtype=F64) * eps, rtol=0, atol=1e-15)


def test_vae_proposal_is_the_encoder_output_split_into_mean_and_log_std():
    gen = torch.Generator().manual_seed(1)
    model = VAE(4, 2, hidden=(6,), generator=gen).double()
    x = torch.randn(3, 4, generator=gen, dtype=F64)
    out = model.encoder(x)
    q = model.proposal(x)
    torch.testing.assert_close(q.mean, out[:, :2], rtol=0, atol=0)
    torch.testing.assert_close(q.log_std, out[:, 2:], rtol=0, atol=0)
    z = torch.randn(5, 3, 2, generator=gen, dtype=F64)
    reference = torch.distributions.Normal(out[:, :2], out[:, 2:].exp()).log_prob(z).sum(-1)
    torch.testing.assert_close(q.log_prob(z, x), reference, rtol=0, atol=1e-12)


def test_elbo_loss_uses_the_analytic_kl_of_the_proposal_from_the_prior():
    """loss(k=1) = −mean(log p(x|z) − KL(q ‖ N(0, I))) with z the proposal's draw from the same generator."""
    gen = torch.Generator().manual_seed(2)
    model = VAE(4, 2, hidden=(6,), generator=gen).double()
    x = torch.randn(3, 4, generator=gen, dtype=F64)
    loss = model.loss(x, 1, torch.Generator().manual_seed(9))
    q = model.proposal(x, torch.Generator().manual_seed(9))
    z = q.sample(x, 1)
    prior = torch.distributions.Normal(torch.zeros(2, dtype=F64), torch.ones(2, dtype=F64))
    kl = torch.distributions.kl_divergence(torch.distributions.Normal(q.mean, q.log_std.exp()), prior).sum(-1)
    torch.testing.assert_close(loss, -(model.log_conditional(x, z)[0] - kl).mean(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(standard_normal_log_prob(z[0]), prior.log_prob(z[0]).sum(-1), rtol=0, atol=1e-12)


def test_iwae_loss_is_the_log_mean_weight_of_k_draws():
    gen = torch.Generator().manual_seed(3)
    model = VAE(4, 2, hidden=(6,), generator=gen).double()
    x = torch.randn(3, 4, generator=gen, dtype=F64)
    loss = model.loss(x, 8, torch.Generator().manual_seed(5))
    q = model.proposal(x, torch.Generator().manual_seed(5))
    z = q.sample(x, 8)
    log_w = model.log_joint(x, z) - q.log_prob(z, x)
    torch.testing.assert_close(loss, -(torch.logsumexp(log_w, 0) - math.log(8)).mean(), rtol=1e-12, atol=1e-12)


def test_linear_gaussian_posterior_mean_is_bayes_conditioning():
    """E[z|x] = Aᵀ(AAᵀ + σ²I)⁻¹(x − c), checked at σ = 0.3 (at σ = 0.5, /σ² and ·2/σ coincide)."""
    from core.vae import LinearGaussian

    gen = torch.Generator().manual_seed(7)
    model = LinearGaussian.random(5, 2, 0.3, gen)
    x = model.sample(4, gen)
    mean, _ = model.posterior(x)
    want = (model.A.T @ torch.linalg.solve(model.covariance(), (x - model.c).T)).T
    torch.testing.assert_close(mean, want, rtol=1e-10, atol=1e-12)


def test_linear_gaussian_refuses_a_non_positive_sigma():
    import pytest

    from core.vae import LinearGaussian

    for sigma in (0.0, -0.5):
        with pytest.raises(ValueError, match="sigma"):
            LinearGaussian(torch.ones(3, 2, dtype=F64), torch.zeros(3, dtype=F64), sigma)


def test_full_gaussian_with_one_scale_per_row_has_each_rows_density():
    from core.vae import FullGaussian

    gen = torch.Generator().manual_seed(8)
    mean = torch.randn(3, 2, generator=gen, dtype=F64)
    tril = torch.tril(torch.randn(3, 2, 2, generator=gen, dtype=F64))
    tril.diagonal(dim1=-2, dim2=-1).copy_(torch.rand(3, 2, generator=gen, dtype=F64) + 0.5)
    z = torch.randn(4, 3, 2, generator=gen, dtype=F64)
    reference = torch.distributions.MultivariateNormal(mean, scale_tril=tril).log_prob(z)
    torch.testing.assert_close(FullGaussian(mean, tril).log_prob(z, None), reference, rtol=0, atol=1e-12)


def test_bernoulli_vae_has_no_variance_and_the_default_sigma_floor_is_e_minus_7():
    bern = VAE(4, 2, hidden=(3,), likelihood="bernoulli")
    assert bern.log_sigma is None
    assert sum(p.numel() for p in bern.parameters()) == sum(
        p.numel() for m in bern.modules() if isinstance(m, torch.nn.Linear) for p in m.parameters()
    )
    gauss = VAE(4, 2, hidden=(3,))
    with torch.no_grad():
        gauss.log_sigma.fill_(-10.0)
    torch.testing.assert_close(gauss.sigma(), torch.full((4,), math.exp(-7.0)))
