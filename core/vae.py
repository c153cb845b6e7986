"""Per-sample log-likelihood by importance sampling, a VAE to supply the proposal, and an exact reference model.

docs/techniques.md#vae_density: with a proposal q(z|x) and a model p(x, z),
    L_K(x) = log (1/K) Σ_k exp(log p(x, z_k) − log q(z_k|x)),   z_k ~ q(z|x),
is the ELBO in expectation for K = 1 and the IWAE bound for K > 1 (non-decreasing in K, converging to log p(x)).
Everything here is plain torch: no job, context or HTTP. Natural logs (nats) throughout.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LOG_2PI = math.log(2.0 * math.pi)
# Default rows (draws of z times data rows) per chunk when the caller gives no chunk_size: bounds the
# decoder's activation memory at 4096 x width floats whatever K is.
DEFAULT_CHUNK_ROWS = 1 << 12
# Activation bytes of one chunk when the model's width is known: on CPU a cache-sized chunk evaluates ~2x faster
# than a 64 MiB one (measured, bench/vae_density.py); accelerators want large chunks to fill the device.
CPU_CHUNK_BYTES = 2 * 1024**2
ACCELERATOR_CHUNK_BYTES = 256 * 1024**2

SampleProposal = Callable[[Tensor, int], Tensor]
LogProposal = Callable[[Tensor, Tensor], Tensor]
LogJoint = Callable[[Tensor, Tensor], Tensor]
Likelihood = Literal["bernoulli", "gaussian", "dequantized"]


class ImportanceStats(NamedTuple):
    """What one pass of K importance weights tells about each sample (all shaped (B,))."""

    log_likelihood: Tensor  # L_K = logsumexp(log w) − log K
    elbo: Tensor  # mean of log w: the K-sample estimate of the ELBO (= L_1 in expectation)
    ess: Tensor  # effective sample size (Σw)² / Σw², in [1, K]: K means the proposal is the posterior


def _chunk_sizes(k: int, batch: int, chunk_size: int | None) -> Iterator[int]:
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if chunk_size is None:
        chunk_size = max(1, DEFAULT_CHUNK_ROWS // max(batch, 1))
    elif chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    done = 0
    while done < k:
        size = min(chunk_size, k - done)
        yield size
        done += size


def _log_weight_chunks(
    x: Tensor,
    sample_proposal: SampleProposal,
    log_proposal: LogProposal,
    log_joint: LogJoint,
    k: int,
    chunk_size: int | None,
) -> Iterator[Tensor]:
    """Log importance weights, (c, B) at a time, so that only one chunk of z is ever alive."""
    batch = x.shape[0]
    for size in _chunk_sizes(k, batch, chunk_size):
        z = sample_proposal(x, size)
        if z.dim() < 2 or z.shape[0] != size or z.shape[1] != batch:
            raise ValueError(f"sample_proposal(x, {size}) must return ({size}, {batch}, d_z), got {tuple(z.shape)}")
        yield log_joint(x, z) - log_proposal(z, x)


def importance_log_likelihood(
    x: Tensor,
    sample_proposal: SampleProposal,
    log_proposal: LogProposal,
    log_joint: LogJoint,
    k: int,
    chunk_size: int | None = None,
) -> Tensor:
    """L_K for each row of ``x``: log (1/K) Σ_k exp(log_joint(x, z_k) − log_proposal(z_k, x)), shape (B,).

    ``sample_proposal(x, c)`` returns z of shape (c, B, d_z); ``log_proposal(z, x)`` and ``log_joint(x, z)`` return
    (c, B). The K draws are taken ``chunk_size`` at a time (default: about DEFAULT_CHUNK_ROWS rows per chunk) and
    merged by a running logsumexp, so K = 5000 costs the memory of one chunk; the weights are never exponentiated.
    Gradients flow if the callables are differentiable (IWAE training); wrap in ``torch.no_grad()`` to evaluate.
    """
    total: Tensor | None = None
    for log_w in _log_weight_chunks(x, sample_proposal, log_proposal, log_joint, k, chunk_size):
        part = torch.logsumexp(log_w, dim=0)
        total = part if total is None else torch.logaddexp(total, part)
    assert total is not None  # k >= 1 (checked): one chunk at least
    return total - math.log(k)


def importance_statistics(
    x: Tensor,
    sample_proposal: SampleProposal,
    log_proposal: LogProposal,
    log_joint: LogJoint,
    k: int,
    chunk_size: int | None = None,
) -> ImportanceStats:
    """L_K, the K-sample ELBO and the effective sample size from the same K draws (same chunking as above).

    The ESS says how tight L_K is likely to be: near K the proposal matches the posterior and L_K ≈ log p(x);
    near 1 a single weight dominates and L_K may sit well below log p(x).
    """
    lse: Tensor | None = None
    lse_sq: Tensor | None = None
    total: Tensor | None = None
    for log_w in _log_weight_chunks(x, sample_proposal, log_proposal, log_joint, k, chunk_size):
        part, part_sq, part_sum = torch.logsumexp(log_w, 0), torch.logsumexp(2.0 * log_w, 0), log_w.sum(0)
        if lse is None:
            lse, lse_sq, total = part, part_sq, part_sum
        else:
            assert lse_sq is not None and total is not None  # set together with lse
            lse, lse_sq, total = torch.logaddexp(lse, part), torch.logaddexp(lse_sq, part_sq), total + part_sum
    assert lse is not None and lse_sq is not None and total is not None  # k >= 1 (checked): one chunk at least
    return ImportanceStats(lse - math.log(k), total / k, torch.exp(2.0 * lse - lse_sq))


def chunk_size_for(batch: int, bytes_per_row: int, device: torch.device) -> int:
    """Draws per chunk so that batch x chunk rows of ``bytes_per_row`` activations fit the device's chunk budget."""
    budget = CPU_CHUNK_BYTES if torch.device(device).type == "cpu" else ACCELERATOR_CHUNK_BYTES
    return max(1, budget // (max(1, bytes_per_row) * max(1, batch)))


def bits_per_dim(log_p: Tensor | float, dim: int) -> Tensor | float:
    """−log p / (D ln 2): the code length per dimension in bits."""
    return -log_p / (dim * math.log(2.0))


class DiagonalGaussian:
    """A per-row proposal N(mean, diag(exp(log_std))²) with the (x, k) / (z, x) call shapes the estimator wants.

    It is already conditioned on x (its mean and scale came from an encoder), so the ``x`` arguments only fix shapes.
    Samples are reparameterized: they carry gradients to ``mean`` and ``log_std``.
    """

    def __init__(self, mean: Tensor, log_std: Tensor, generator: torch.Generator | None = None):
        self.mean, self.log_std, self.generator = mean, log_std, generator

    def sample(self, x: Tensor, k: int) -> Tensor:
        eps = torch.randn(
            (k, *self.mean.shape), generator=self.generator, device=self.mean.device, dtype=self.mean.dtype
        )
        return self.mean + torch.exp(self.log_std) * eps

    def log_prob(self, z: Tensor, x: Tensor) -> Tensor:
        scaled = (z - self.mean) * torch.exp(-self.log_std)
        return -0.5 * (scaled.square() + LOG_2PI).sum(-1) - self.log_std.sum(-1)


class FullGaussian:
    """A proposal N(mean, L Lᵀ); lower-triangular ``scale_tril`` shared by all rows (d, d) or per row (B, d, d)."""

    def __init__(self, mean: Tensor, scale_tril: Tensor, generator: torch.Generator | None = None):
        self.mean, self.scale_tril, self.generator = mean, scale_tril, generator

    def sample(self, x: Tensor, k: int) -> Tensor:
        eps = torch.randn(
            (k, *self.mean.shape, 1), generator=self.generator, device=self.mean.device, dtype=self.mean.dtype
        )
        return self.mean + (self.scale_tril @ eps).squeeze(-1)

    def log_prob(self, z: Tensor, x: Tensor) -> Tensor:
        diff = (z - self.mean).unsqueeze(-1)
        white = torch.linalg.solve_triangular(self.scale_tril.expand(*diff.shape[:-2], -1, -1), diff, upper=False)
        log_det = torch.log(torch.diagonal(self.scale_tril, dim1=-2, dim2=-1)).sum(-1)
        d = self.mean.shape[-1]
        return -0.5 * (white.squeeze(-1).square().sum(-1) + d * LOG_2PI) - log_det


def standard_normal_log_prob(z: Tensor) -> Tensor:
    """log N(z; 0, I) summed over the last axis, constants included."""
    return -0.5 * (z.square() + LOG_2PI).sum(-1)


class LinearGaussian:
    """p(z) = N(0, I), p(x|z) = N(Az + c, σ²I): log p(x) and p(z|x) are known exactly, so estimators can be checked.

    log p(x) = log N(x; c, AAᵀ + σ²I); p(z|x) = N(S Aᵀ(x − c)/σ², S) with S = (I + AᵀA/σ²)⁻¹.
    """

    def __init__(self, A: Tensor, c: Tensor, sigma: float):
        if A.dim() != 2 or c.shape != (A.shape[0],) or sigma <= 0:
            raise ValueError("A must be (D, d_z), c must be (D,), sigma > 0")
        self.A, self.c, self.sigma = A, c, float(sigma)

    @classmethod
    def random(
        cls,
        data_dim: int,
        latent_dim: int,
        sigma: float,
        generator: torch.Generator,
        dtype: torch.dtype = torch.float64,
    ) -> LinearGaussian:
        """A with N(0, 1) entries and c with N(0, 1) entries: a generic model with known truth."""
        A = torch.randn(data_dim, latent_dim, generator=generator, dtype=dtype)
        c = torch.randn(data_dim, generator=generator, dtype=dtype)
        return cls(A, c, sigma)

    @property
    def data_dim(self) -> int:
        return self.A.shape[0]

    @property
    def latent_dim(self) -> int:
        return self.A.shape[1]

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        z = torch.randn(n, self.latent_dim, generator=generator, dtype=self.A.dtype)
        noise = torch.randn(n, self.data_dim, generator=generator, dtype=self.A.dtype)
        return z @ self.A.T + self.c + self.sigma * noise

    def log_conditional(self, x: Tensor, z: Tensor) -> Tensor:
        """log p(x|z) for z of shape (..., B, d_z) against x (B, D)."""
        resid = (x - (z @ self.A.T + self.c)) / self.sigma
        return -0.5 * (resid.square() + LOG_2PI).sum(-1) - self.data_dim * math.log(self.sigma)

    def log_joint(self, x: Tensor, z: Tensor) -> Tensor:
        return self.log_conditional(x, z) + standard_normal_log_prob(z)

    def covariance(self) -> Tensor:
        return self.A @ self.A.T + self.sigma**2 * torch.eye(self.data_dim, dtype=self.A.dtype)

    def log_marginal(self, x: Tensor) -> Tensor:
        """Exact log p(x) = log N(x; c, AAᵀ + σ²I), shape (B,)."""
        chol = torch.linalg.cholesky(self.covariance())
        white = torch.linalg.solve_triangular(chol, (x - self.c).T, upper=False)
        log_det = 2.0 * torch.log(torch.diagonal(chol)).sum()
        return -0.5 * (white.square().sum(0) + log_det + self.data_dim * LOG_2PI)

    def posterior(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Mean (B, d_z) and Cholesky factor (d_z, d_z) of the exact posterior p(z|x)."""
        precision = torch.eye(self.latent_dim, dtype=self.A.dtype) + self.A.T @ self.A / self.sigma**2
        cov = torch.cholesky_inverse(torch.linalg.cholesky(precision))
        mean = (x - self.c) @ self.A @ cov / self.sigma**2
        return mean, torch.linalg.cholesky(cov)

    def posterior_proposal(self, x: Tensor, generator: torch.Generator | None = None) -> FullGaussian:
        mean, scale_tril = self.posterior(x)
        return FullGaussian(mean, scale_tril, generator)


def _mlp(sizes: Sequence[int]) -> nn.Sequential:
    """Affine maps between consecutive sizes with tanh between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        if i:
            layers.append(nn.Tanh())
        layers.append(nn.Linear(fan_in, fan_out))
    return nn.Sequential(*layers)


class VAE(nn.Module):
    """MLP encoder q(z|x) = N(μ(x), diag σ(x)²), prior N(0, I), MLP decoder p(x|z) with a full normalized likelihood.

    likelihood:
      * ``"bernoulli"`` for binary data: decoder gives logits;
      * ``"gaussian"`` for continuous data: decoder gives the mean; σ is per dimension, learned (``fixed_sigma=None``)
        or fixed; the log-density keeps its −½ log 2π − log σ constants so the numbers are true densities;
      * ``"dequantized"`` for integer data on ``levels`` levels (8-bit: 256) fed as y = (v + u)/levels, u ~ U[0, 1):
        the Gaussian density of y minus D·ln(levels), a lower bound (in expectation over u) on log P(v).
    An empty ``hidden`` makes encoder and decoder affine (the linear-Gaussian family, exact in the limit).
    """

    def __init__(
        self,
        data_dim: int,
        latent_dim: int,
        hidden: Sequence[int] = (200, 200),
        likelihood: Likelihood = "gaussian",
        fixed_sigma: float | None = None,
        levels: int = 256,
        min_log_sigma: float = -7.0,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        if likelihood not in ("bernoulli", "gaussian", "dequantized"):
            raise ValueError(f"unknown likelihood {likelihood!r}")
        if likelihood == "bernoulli" and fixed_sigma is not None:
            raise ValueError("a Bernoulli likelihood has no variance to fix")
        self.data_dim, self.latent_dim, self.likelihood, self.levels = data_dim, latent_dim, likelihood, levels
        self.min_log_sigma = min_log_sigma
        hidden = list(hidden)
        self.encoder = _mlp([data_dim, *hidden, 2 * latent_dim])
        self.decoder = _mlp([latent_dim, *reversed(hidden), data_dim])
        self.log_sigma: Tensor | None  # a parameter (learned), a buffer (fixed) or None (Bernoulli)
        if likelihood == "bernoulli":
            self.log_sigma = None
        elif fixed_sigma is None:
            self.log_sigma = nn.Parameter(torch.zeros(data_dim))
        else:
            self.register_buffer("log_sigma", torch.full((data_dim,), math.log(fixed_sigma)))
        self.reset_parameters(generator)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """U(±1/√fan_in) weights and biases drawn from ``generator``, so a seed fixes the initial model."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                bound = 1.0 / math.sqrt(module.in_features)
                module.weight.uniform_(-bound, bound, generator=generator)
                module.bias.uniform_(-bound, bound, generator=generator)

    def proposal(self, x: Tensor, generator: torch.Generator | None = None) -> DiagonalGaussian:
        """The encoder's q(z|x) for each row of x, ready for importance_log_likelihood."""
        mean, log_std = self.encoder(x).chunk(2, dim=-1)
        return DiagonalGaussian(mean, log_std, generator)

    def sigma(self) -> Tensor:
        assert self.log_sigma is not None, "a Bernoulli likelihood has no σ"
        return torch.exp(self.log_sigma.clamp(min=self.min_log_sigma))

    def log_conditional(self, x: Tensor, z: Tensor) -> Tensor:
        """log p(x|z) for z of shape (..., B, d_z) against x (B, D), constants included."""
        out = self.decoder(z)
        if self.likelihood == "bernoulli":
            return -F.binary_cross_entropy_with_logits(out, x.expand_as(out), reduction="none").sum(-1)
        assert self.log_sigma is not None  # only Bernoulli has none
        log_sigma = self.log_sigma.clamp(min=self.min_log_sigma)
        resid = (x - out) * torch.exp(-log_sigma)
        log_density = -0.5 * (resid.square() + LOG_2PI).sum(-1) - log_sigma.sum()
        if self.likelihood == "dequantized":
            return log_density - self.data_dim * math.log(self.levels)
        return log_density

    def log_joint(self, x: Tensor, z: Tensor) -> Tensor:
        return self.log_conditional(x, z) + standard_normal_log_prob(z)

    def dequantize(self, v: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Integer levels v in [0, levels) to y = (v + u)/levels with fresh u ~ U[0, 1): the model's input."""
        u = torch.rand(v.shape, generator=generator, device=v.device, dtype=v.dtype)
        return (v + u) / self.levels

    def activation_bytes_per_row(self) -> int:
        """Bytes of the widest decoder activation for one draw: what a chunk of draws costs per row."""
        widest = max(layer.out_features for layer in self.decoder if isinstance(layer, nn.Linear))
        return widest * next(self.parameters()).element_size()

    def log_likelihood(
        self, x: Tensor, k: int, chunk_size: int | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """L_K for each row with the encoder as proposal (nats, shape (B,)); chunk_size defaults to chunk_size_for."""
        q = self.proposal(x, generator)
        chunk = chunk_size or chunk_size_for(x.shape[0], self.activation_bytes_per_row(), x.device)
        return importance_log_likelihood(x, q.sample, q.log_prob, self.log_joint, k, chunk)

    def importance_statistics(
        self, x: Tensor, k: int, chunk_size: int | None = None, generator: torch.Generator | None = None
    ) -> ImportanceStats:
        q = self.proposal(x, generator)
        chunk = chunk_size or chunk_size_for(x.shape[0], self.activation_bytes_per_row(), x.device)
        return importance_statistics(x, q.sample, q.log_prob, self.log_joint, k, chunk)

    def loss(self, x: Tensor, k: int = 1, generator: torch.Generator | None = None) -> Tensor:
        """Negative training bound, nats per row: −ELBO for k = 1 (analytic KL), −L_k (IWAE) for k > 1."""
        q = self.proposal(x, generator)
        z = q.sample(x, k)
        if k == 1:
            kl = 0.5 * (q.mean.square() + torch.exp(2.0 * q.log_std) - 1.0 - 2.0 * q.log_std).sum(-1)
            bound = self.log_conditional(x, z)[0] - kl
        else:
            bound = torch.logsumexp(self.log_joint(x, z) - q.log_prob(z, x), dim=0) - math.log(k)
        return -bound.mean()


class ModuleVAE(VAE):
    """A VAE from the user's own encoder and decoder modules (exported programs), prior N(0, I).

    encoder: x (shaped as ``input_shape``) → (mean, log-variance) of q(z|x); decoder: z → Bernoulli logits, a
    Gaussian mean (σ learned per dimension, or ``fixed_sigma``), or (mean, log-scale) of a Gaussian. Rows stay flat
    (B, D) outside: they are reshaped to the encoder's input, and the decoder's outputs are flattened to D values.
    """

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        input_shape: Sequence[int],
        likelihood: Likelihood = "gaussian",
        fixed_sigma: float | None = None,
        levels: int = 256,
        min_log_sigma: float = -7.0,
        row_bytes: int | None = None,
    ):
        """``row_bytes``: what one draw through the decoder holds (all its values for one row), when known."""
        nn.Module.__init__(self)
        self.row_bytes = row_bytes
        self.encoder, self.decoder = encoder, decoder  # type: ignore[assignment]  # any module, not VAE's MLPs
        self.input_shape = tuple(input_shape)
        self.data_dim, self.likelihood, self.levels = math.prod(self.input_shape), likelihood, levels
        self.min_log_sigma = min_log_sigma
        device = next(self.parameters()).device
        with torch.no_grad():
            encoded = encoder(torch.zeros(2, *self.input_shape, device=device))
            if not isinstance(encoded, (tuple, list)) or len(encoded) != 2 or encoded[0].shape != encoded[1].shape:
                raise ValueError("encoder: must return (mean, log-variance) of one shape")
            self.latent_dim = encoded[0][0].numel()
            decoded = decoder(torch.zeros(2, self.latent_dim, device=device))
        self.decoder_scale = isinstance(decoded, (tuple, list))
        mean = decoded[0] if self.decoder_scale else decoded
        if mean[0].numel() != self.data_dim:
            raise ValueError(f"decoder: returns {mean[0].numel()} values per row, the data have {self.data_dim}")
        if self.decoder_scale and likelihood == "bernoulli":
            raise ValueError("decoder: returns (mean, log-scale), a Gaussian; the data are binary (bernoulli)")
        if self.decoder_scale and fixed_sigma is not None:
            raise ValueError("fixed_sigma: the decoder gives its own log-scale")
        self.log_sigma = None
        if likelihood != "bernoulli" and not self.decoder_scale:
            if fixed_sigma is None:
                self.log_sigma = nn.Parameter(torch.zeros(self.data_dim, device=device))
            else:
                self.register_buffer("log_sigma", torch.full((self.data_dim,), math.log(fixed_sigma), device=device))

    def proposal(self, x: Tensor, generator: torch.Generator | None = None) -> DiagonalGaussian:
        mean, log_var = self.encoder(x.reshape(len(x), *self.input_shape))
        return DiagonalGaussian(mean.flatten(1), 0.5 * log_var.flatten(1), generator)

    def decode(self, z: Tensor) -> tuple[Tensor, Tensor | None]:
        """Mean or logits, and the log-scale when the decoder gives one, each (..., B, D) for z (..., B, d_z)."""
        out = self.decoder(z.reshape(-1, z.shape[-1]))
        mean, log_scale = (out[0], out[1]) if self.decoder_scale else (out, None)
        shape = (*z.shape[:-1], self.data_dim)
        return mean.reshape(shape), None if log_scale is None else log_scale.expand_as(mean).reshape(shape)

    def log_conditional(self, x: Tensor, z: Tensor) -> Tensor:
        out, log_scale = self.decode(z)
        if self.likelihood == "bernoulli":
            return -F.binary_cross_entropy_with_logits(out, x.expand_as(out), reduction="none").sum(-1)
        log_sigma = self.log_sigma if log_scale is None else log_scale
        assert log_sigma is not None  # only Bernoulli has none
        log_sigma = log_sigma.clamp(min=self.min_log_sigma)
        resid = (x - out) * torch.exp(-log_sigma)
        log_density = -0.5 * (resid.square() + LOG_2PI).sum(-1) - log_sigma.expand_as(resid).sum(-1)
        if self.likelihood == "dequantized":
            return log_density - self.data_dim * math.log(self.levels)
        return log_density

    def activation_bytes_per_row(self) -> int:
        """Bytes one draw holds in the decoder: ``row_bytes``, else its output's (mean and log-scale)."""
        return self.row_bytes or 2 * self.data_dim * next(self.parameters()).element_size()
