"""Job kind ``gradnorm_gan``: gradient-normalized critics (GN, GraN, plain) beside GP, spectral norm and clipping.

One job trains one GAN with one Lipschitz constraint on the critic and then measures, rather than assumes, how
Lipschitz the constrained critic is (gradient norms on real, fake and interpolated points; finite-difference slopes
between sample pairs), how good the samples are (mode coverage on the 2-D mixtures; a classifier trained by the job
on the real data for labelled sets such as digits), and what the constraint costs per step (wall time, bytes saved
for backward, CUDA peak when on a GPU). Running the same spec with each ``constraint`` gives the comparison.
"""

from __future__ import annotations

import io
import json
import math
import time
import weakref
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core import plots
from core.data import load_arrays
from core.gan import (
    MIXTURES,
    GradNormalized,
    classifier_scores,
    frechet_distance,
    mixture,
    mode_coverage,
    probe_critic,
    summarize_probes,
)
from core.techniques.gradnorm_gan.exported import Flat, exported_nets
from core.techniques.gradnorm_gan.spec import GradnormGanParams, check_budget, image_side

NORMALIZED: dict[str, Literal["gn", "gran", "plain"]] = {"gn": "gn", "gran": "gran", "plain_norm": "plain"}
CLASSIFIER_STEPS = 400
CLASSIFIER_WIDTH = 128
CURVE_POINTS = 200


# ---------------------------------------------------------------------------------------------------------------
# Networks


def _mlp(d_in: int, d_out: int, width: int, depth: int, act: type[nn.Module]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(d_in if i == 0 else width, width), act()]
    layers.append(nn.Linear(width, d_out))
    return nn.Sequential(*layers)


class _LeakyReLU(nn.LeakyReLU):
    """LeakyReLU(0.2): piecewise linear, so the normalized critics keep their in-region gradient bound."""

    def __init__(self):
        super().__init__(0.2)


class _ConvCritic(nn.Module):
    def __init__(self, side: int, c: int):
        super().__init__()
        self.side = side
        self.net = nn.Sequential(
            nn.Conv2d(1, c, 3, 1, 1),
            _LeakyReLU(),
            nn.Conv2d(c, 2 * c, 4, 2, 1),
            _LeakyReLU(),
            nn.Conv2d(2 * c, 4 * c, 4, 2, 1),
            _LeakyReLU(),
            nn.Flatten(),
            nn.Linear(4 * c * (side // 4) ** 2, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.reshape(len(x), 1, self.side, self.side))


class _ConvGenerator(nn.Module):
    def __init__(self, side: int, c: int, z_dim: int):
        super().__init__()
        self.side, self.c = side, c
        self.fc = nn.Sequential(nn.Linear(z_dim, 4 * c * (side // 4) ** 2), nn.ReLU())
        self.net = nn.Sequential(
            nn.ConvTranspose2d(4 * c, 2 * c, 4, 2, 1),
            nn.ReLU(),
            nn.ConvTranspose2d(2 * c, c, 4, 2, 1),
            nn.ReLU(),
            nn.Conv2d(c, 1, 3, 1, 1),
        )

    def forward(self, z: Tensor) -> Tensor:
        h = self.fc(z).reshape(len(z), 4 * self.c, self.side // 4, self.side // 4)
        return self.net(h).reshape(len(z), -1)


class _Bounded(nn.Module):
    """Sigmoid output for data in [0, 1] (digits), so the generator cannot leave the pixel range."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, z: Tensor) -> Tensor:
        return torch.sigmoid(self.net(z))


def build_nets(params: GradnormGanParams, dim: int, bounded: bool, seed: int) -> tuple[nn.Module, nn.Module]:
    """Generator and critic initialised from ``seed`` without disturbing the global RNG; spectral norm applied here."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if params.arch == "conv":
            side = image_side(dim)
            assert side is not None  # check_budget refused a conv on inputs that are not square images
            G: nn.Module = _ConvGenerator(side, params.channels, params.z_dim)
            D: nn.Module = _ConvCritic(side, params.channels)
        else:
            G = _mlp(params.z_dim, dim, params.width, params.depth, nn.ReLU)
            D = _mlp(dim, 1, params.width, params.depth, _LeakyReLU)
        if bounded:
            G = _Bounded(G)
        if params.constraint == "spectral":
            for _name, module in list(D.named_modules()):
                if isinstance(module, (nn.Linear, nn.Conv2d)):
                    nn.utils.parametrizations.spectral_norm(module)
    return G, D


# ---------------------------------------------------------------------------------------------------------------
# Losses and one training step


def critic_loss(kind: str, s_real: Tensor, s_fake: Tensor) -> Tensor:
    if kind == "wasserstein":
        return s_fake.mean() - s_real.mean()
    if kind == "hinge":
        return F.relu(1 - s_real).mean() + F.relu(1 + s_fake).mean()
    return F.softplus(-s_real).mean() + F.softplus(s_fake).mean()


def generator_loss(kind: str, s_fake: Tensor) -> Tensor:
    if kind == "bce":
        return F.softplus(-s_fake).mean()
    return -s_fake.mean()


def gradient_penalty(D: nn.Module, real: Tensor, fake: Tensor, generator: torch.Generator) -> Tensor:
    """WGAN-GP: E[(‖∇D(x̂)‖ − 1)²] on random interpolates of real and fake samples."""
    alpha = torch.rand(len(real), 1, generator=generator, device=real.device)
    inter = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    (g,) = torch.autograd.grad(D(inter).sum(), inter, create_graph=True)
    return (g.reshape(len(g), -1).norm(dim=1) - 1).square().mean()


class SavedBytes:
    """Counts the distinct storages autograd saves for backward (double backprop included) while active.

    A storage is told apart by identity, not by address: a temporary freed between two critic updates leaves its
    address to the next one's, and counting by address made the total depend on the allocator (it changed from run
    to run). torch keeps one Python object per live storage, held here by weak reference only (the count keeps no
    memory alive)."""

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self._seen: dict[int, list[weakref.ref]] = {}  # by address: the storages seen there, live or freed

    def pack(self, t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        at = self._seen.setdefault(storage.data_ptr(), [])
        if not any(ref() is storage for ref in at):
            at.append(weakref.ref(storage))
            self.sizes.append(storage.nbytes())
        return t

    def __enter__(self):
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)

    @property
    def total(self) -> int:
        return sum(self.sizes)


class Trainer:
    """Holds the nets, optimizers and RNGs of one job; ``step`` is one generator update with its critic updates."""

    def __init__(
        self,
        params: GradnormGanParams,
        data: Tensor,
        bounded: bool,
        seed: int,
        device: torch.device,
        given: tuple[Flat | None, Flat | None] = (None, None),
    ):
        """``given``: the user's (generator, critic), exported, in place of the built-in ones where not None."""
        self.p = params
        self.data = data
        self.device = device
        self.G, self.D = build_nets(params, data.shape[1], bounded and given[0] is None, seed)
        self.G, self.D = given[0] or self.G, given[1] or self.D
        self.z_dim = given[0].width if given[0] is not None else params.z_dim
        self.G.to(device)
        self.D.to(device)
        variant = NORMALIZED.get(params.constraint)
        self.score = GradNormalized(self.D, variant, params.eps) if variant else self.D
        betas = (params.beta1, params.beta2)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=params.lr_d, betas=betas)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=params.lr_g, betas=betas)
        self.cpu_gen = torch.Generator().manual_seed(seed + 1)
        self.dev_gen = torch.Generator(device=device).manual_seed(seed + 2)

    def scores(self, x: Tensor) -> Tensor:
        return self.score(x).reshape(len(x))

    def noise(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return torch.randn(n, self.z_dim, generator=generator or self.dev_gen, device=self.device)

    def real_batch(self) -> Tensor:
        idx = torch.randint(len(self.data), (self.p.batch,), generator=self.cpu_gen)
        return self.data[idx.to(self.data.device)]

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` generated points; evaluation passes its own ``generator`` so it does not shift the training noise."""
        with torch.no_grad():
            return torch.cat([self.G(self.noise(min(1024, n - i), generator)) for i in range(0, n, 1024)])

    def step(self, meter_d: SavedBytes | None = None, meter_g: SavedBytes | None = None) -> dict[str, float]:
        p = self.p
        self.D.requires_grad_(True)
        for _ in range(p.n_critic):
            real = self.real_batch()
            fake = self.sample(p.batch)
            with meter_d or nullcontext():
                s_real, s_fake = self.scores(real), self.scores(fake)
                loss_d = critic_loss(p.loss, s_real, s_fake)
                total = loss_d
                if p.constraint == "gp":
                    total = loss_d + p.gp_weight * gradient_penalty(self.D, real, fake, self.dev_gen)
            self.opt_d.zero_grad(set_to_none=True)
            total.backward()
            self.opt_d.step()
            if p.constraint == "clip":
                with torch.no_grad():
                    for w in self.D.parameters():
                        w.clamp_(-p.clip_value, p.clip_value)
        self.D.requires_grad_(False)
        with meter_g or nullcontext():
            loss_g = generator_loss(p.loss, self.scores(self.G(self.noise(p.batch))))
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_g.step()
        return {
            "loss_d": float(loss_d.detach()),
            "loss_g": float(loss_g.detach()),
            "w_estimate": float((s_real.mean() - s_fake.mean()).detach()),
        }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------------------------------
# Quality measures


def train_classifier(
    x: Tensor, y: Tensor, seed: int, device: torch.device, check
) -> tuple[nn.Sequential, float, Tensor]:
    """A small MLP classifier trained on 80% of the real data: the fixed judge of generated samples.

    Returns the classifier, its accuracy on the held-out 20% (to show the judge is worth trusting) and the held-out
    indices. Its hidden layer is the feature space of the Fréchet distance.
    """
    gen = torch.Generator().manual_seed(seed + 3)
    order = torch.randperm(len(x), generator=gen)
    n_test = max(1, len(x) // 5)
    test, train = order[:n_test], order[n_test:]
    classes = int(y.max()) + 1
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 4)
        net = nn.Sequential(
            nn.Linear(x.shape[1], CLASSIFIER_WIDTH), nn.ReLU(), nn.Linear(CLASSIFIER_WIDTH, classes)
        ).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    xd, yd = x.to(device), y.to(device)
    for _ in range(CLASSIFIER_STEPS):
        check()
        idx = train[torch.randint(len(train), (128,), generator=gen)].to(device)
        loss = F.cross_entropy(net(xd[idx]), yd[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    net.eval().requires_grad_(False)
    accuracy = float((net(xd[test.to(device)]).argmax(1) == yd[test.to(device)]).float().mean())
    return net, accuracy, test


def _features(classifier: nn.Sequential | None, x: Tensor) -> np.ndarray:
    with torch.no_grad():
        return (classifier[:2](x) if classifier is not None else x).double().cpu().numpy()


# ---------------------------------------------------------------------------------------------------------------
# Plots


def _plot_losses(curves: dict[str, list], params: GradnormGanParams) -> bytes:
    fig, ax = plots.new_figure()
    ax.plot(curves["step"], curves["loss_d"], label="critic loss")
    ax.plot(curves["step"], curves["loss_g"], label="generator loss")
    ax.plot(curves["step"], curves["w_estimate"], label="E[D̂(real)] − E[D̂(fake)]", alpha=0.7)
    ax.set_xlabel("generator step")
    ax.set_ylabel(f"{params.loss} loss (critic units)")
    ax.set_title(f"gradnorm_gan: constraint={params.constraint}, loss={params.loss}")
    ax.legend()
    return plots.to_png(fig)


def _plot_samples(trainer: Trainer, real: Tensor, fake: Tensor, centres: Tensor | None, params) -> bytes:
    dim = real.shape[1]
    side = math.isqrt(dim)
    if dim == 2:
        fig, ax = plots.new_figure(6.5, 6)
        r, f = real.cpu().numpy(), fake.cpu().numpy()
        both = np.concatenate([r, np.clip(np.nan_to_num(f), -10, 10)])
        lo, hi = both.min(0) - 0.5, both.max(0) + 0.5
        gx, gy = np.meshgrid(np.linspace(lo[0], hi[0], 80), np.linspace(lo[1], hi[1], 80))
        grid = torch.tensor(np.stack([gx.ravel(), gy.ravel()], 1), dtype=torch.float32, device=trainer.device)
        with torch.enable_grad():
            s = trainer.scores(grid).detach().cpu().numpy().reshape(gx.shape)
        if np.isfinite(s).all():
            contour = ax.contourf(gx, gy, s, levels=20, cmap="coolwarm", alpha=0.5)
            fig.colorbar(contour, ax=ax, label="critic score (constrained critic)")
        ax.scatter(r[:, 0], r[:, 1], s=2, c="black", alpha=0.3, label="real")
        ax.scatter(f[:, 0], f[:, 1], s=2, c="tab:green", alpha=0.5, label="generated")
        if centres is not None:
            c = centres.numpy()
            ax.scatter(c[:, 0], c[:, 1], marker="x", c="red", s=40, label="mode centres")
        ax.set_xlim(lo[0], hi[0])
        ax.set_ylim(lo[1], hi[1])
        ax.set_xlabel("x₁")
        ax.set_ylabel("x₂")
        for handle in ax.legend(loc="upper right").legend_handles:
            handle.set_sizes([20])
    elif side * side == dim:
        fig, axes = plots.plt.subplots(2, 1, figsize=(6, 6.5), dpi=100)
        for ax, x, name in ((axes[0], real, "real"), (axes[1], fake, "generated")):
            tiles = np.nan_to_num(x[:32].cpu().numpy()).reshape(-1, side, side)
            tiles = np.pad(tiles, ((0, 32 - len(tiles)), (1, 1), (1, 1)))
            sheet = tiles.reshape(4, 8, side + 2, side + 2).transpose(0, 2, 1, 3).reshape(4 * (side + 2), -1)
            ax.imshow(sheet, cmap="gray_r")
            ax.set_title(f"{name} samples ({side}×{side} pixels)")
            ax.set_xlabel("pixel column (tiled)")
            ax.set_ylabel("pixel row (tiled)")
    else:
        fig, ax = plots.new_figure()
        r = real.double().cpu().numpy()
        mean = r.mean(0)
        basis = np.linalg.svd(r - mean, full_matrices=False)[2][:2].T
        for x, name, colour in ((real, "real", "black"), (fake, "generated", "tab:green")):
            proj = (np.nan_to_num(x.double().cpu().numpy()) - mean) @ basis
            ax.scatter(proj[:, 0], proj[:, 1], s=3, alpha=0.4, c=colour, label=name)
        ax.set_xlabel("principal component 1 of the real data")
        ax.set_ylabel("principal component 2 of the real data")
        ax.legend()
    return plots.to_png(fig)


def _plot_lipschitz(norms: dict[str, np.ndarray], params: GradnormGanParams) -> bytes:
    fig, ax = plots.new_figure()
    finite = np.concatenate([v[np.isfinite(v)] for v in norms.values()] + [np.array([0.0, 1.0])])
    bins = np.linspace(0, max(1.05, float(np.quantile(finite, 0.99)) * 1.05), 60)
    for name, values in norms.items():
        ax.hist(np.clip(values[np.isfinite(values)], None, bins[-1]), bins=bins, alpha=0.5, label=name)
    ax.axvline(1.0, color="black", linestyle="--", label="Lipschitz bound 1")
    ax.set_xlabel("‖∇ₓ critic score‖ (score units per input unit)")
    ax.set_ylabel("number of points")
    ax.set_title(f"measured gradient norms of the constrained critic ({params.constraint})")
    ax.legend()
    return plots.to_png(fig)


# ---------------------------------------------------------------------------------------------------------------


def _step_times(times: list[float]) -> dict:
    """Mean and median milliseconds of the timed training steps (None when none was timed)."""
    return {
        "time_per_step_ms": 1e3 * float(np.mean(times)) if times else None,
        "time_per_step_ms_median": 1e3 * float(np.median(times)) if times else None,
    }


def _thinned(curves: dict[str, list]) -> dict[str, list]:
    """The logged curves, every k-th point with k = points // CURVE_POINTS (at least 1): fewer than twice
    CURVE_POINTS points stay."""
    every = max(1, len(curves["step"]) // CURVE_POINTS)
    return {k: v[::every] for k, v in curves.items()}


def _clean(value):
    """JSON-safe copy: non-finite floats become None, numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def _load(params: GradnormGanParams, ctx) -> tuple[Tensor, Tensor | None, Tensor | None, float | None]:
    if isinstance(params.dataset, str) and params.dataset in MIXTURES:
        gen = torch.Generator().manual_seed(ctx.seed)
        return mixture(params.dataset, params.n_data, gen, params.mixture_std)
    arrays = load_arrays(params.dataset, ctx)
    x = torch.as_tensor(np.asarray(arrays["x"], dtype=np.float32)).reshape(len(arrays["x"]), -1)
    if len(x) < 2 or not torch.isfinite(x).all():
        raise ValueError("dataset: needs at least 2 samples and only finite values")
    labels = arrays.get("y")
    y = torch.as_tensor(np.asarray(labels, dtype=np.int64)) if labels is not None else None
    if y is not None and (len(y) != len(x) or int(y.min()) < 0 or int(y.max()) >= 1000):
        raise ValueError("dataset: labels must be one integer in [0, 1000) per sample")
    return x, y, None, None


def run(params: GradnormGanParams, ctx) -> dict:
    x, y, centres, std = _load(params, ctx)
    check_budget(params, x.shape[1])
    device = torch.device(ctx.device)
    bounded = bool(x.min() >= 0 and x.max() <= 1) and centres is None
    classifier, accuracy, held_out = None, None, None
    if y is not None and centres is None:
        ctx.progress(0.0, "training the judge classifier on the real data")
        classifier, accuracy, held_out = train_classifier(x, y, ctx.seed, device, ctx.check_cancelled)
    trainer = Trainer(params, x.to(device), bounded, ctx.seed, device, exported_nets(params, ctx, x.shape[1]))
    eval_noise = torch.Generator(device=device).manual_seed(ctx.seed + 6)
    training = _train(params, ctx, trainer, centres, std, eval_noise)

    ctx.progress(0.92, "measuring the critic and the samples")
    n_eval = min(params.eval_samples, len(x))
    eval_gen = torch.Generator().manual_seed(ctx.seed + 5)
    real = x[torch.randperm(len(x), generator=eval_gen)[:n_eval]].to(device)
    fake = trainer.sample(params.eval_samples, eval_noise)
    probes = probe_critic(trainer.scores, real, fake, generator=eval_gen)
    lip = summarize_probes(probes, generator=eval_gen)
    norms = {name: g.cpu().numpy() for name, (_, _, g) in probes.items()}
    if centres is not None:  # a mixture: its modes and their spread are known
        quality = _mode_quality(fake, centres, std)
    elif classifier is not None:
        assert held_out is not None and accuracy is not None  # trained together with the classifier
        quality = _judged_quality(classifier, accuracy, held_out, x, fake)
    else:
        raw_fake = torch.nan_to_num(fake[:n_eval]).double().cpu().numpy()
        quality = {"frechet_raw": frechet_distance(real.double().cpu().numpy(), raw_fake)}

    ctx.artifact("losses.png", _plot_losses(training.curves, params), "image/png")
    ctx.artifact("samples.png", _plot_samples(trainer, real[:1000], fake[:1000], centres, params), "image/png")
    ctx.artifact("lipschitz.png", _plot_lipschitz(norms, params), "image/png")
    buf = io.BytesIO()
    np.save(buf, fake.cpu().numpy(), allow_pickle=False)
    ctx.artifact("samples.npy", buf.getvalue(), "application/x-npy")

    curves = training.curves
    result = _clean(
        {
            "dataset": str(params.dataset),
            "constraint": params.constraint,
            "exported": [name for name in ("critic", "generator") if getattr(params, name) is not None],
            "loss": params.loss,
            "steps_run": training.completed,
            "diverged_at_step": training.diverged_at,
            "final_loss_d": curves["loss_d"][-1] if curves["loss_d"] else None,
            "final_loss_g": curves["loss_g"][-1] if curves["loss_g"] else None,
            "lipschitz": lip,
            "quality": quality,
            "cost": training.cost(device),
            "curves": _thinned(curves),
        }
    )
    ctx.artifact("result.json", json.dumps(result).encode(), "application/json")
    ctx.progress(1.0, "done")
    return result


@dataclass
class _Training:
    """What the training loop leaves for the result: the logged curves, the timed steps' seconds, the bytes saved
    for backward in the one measured step, its CUDA peak, where it diverged and how many steps completed."""

    curves: dict[str, list] = field(default_factory=lambda: {"step": [], "loss_d": [], "loss_g": [], "w_estimate": []})
    times: list[float] = field(default_factory=list)
    saved_d: SavedBytes = field(default_factory=SavedBytes)
    saved_g: SavedBytes = field(default_factory=SavedBytes)
    peak_cuda: int | None = None
    diverged_at: int | None = None
    completed: int = 0

    def cost(self, device: torch.device) -> dict:
        """The result's ``cost``: what the constraint costs per step in time and memory."""
        return {
            **_step_times(self.times),
            "saved_bytes_critic_update": self.saved_d.total,
            "saved_bytes_generator_update": self.saved_g.total,
            "peak_cuda_bytes": self.peak_cuda,
            "device": str(device),
        }


def _train(
    params: GradnormGanParams,
    ctx,
    trainer: Trainer,
    centres: Tensor | None,
    std: float | None,
    eval_noise: torch.Generator,
) -> _Training:
    """``steps`` generator updates, stopping at the first non-finite loss. The second step (the first when there
    is one) is measured for memory and left out of the timings; every ``log_every`` steps the losses are logged, and
    on a mixture the mode coverage ten times over the run."""
    device = trainer.device
    out = _Training()
    measure_at = min(1, params.steps - 1)
    eval_every = max(1, params.steps // 10)
    for step in range(params.steps):
        ctx.check_cancelled()
        if step == measure_at:
            losses = _measured_step(trainer, out)
        else:
            _sync(device)
            start = time.perf_counter()
            losses = trainer.step()
            _sync(device)
            out.times.append(time.perf_counter() - start)
        if not all(math.isfinite(v) for v in losses.values()):
            out.diverged_at = step
            ctx.metric(step, "diverged", 1.0)
            break
        out.completed += 1
        if step % params.log_every == 0 or step == params.steps - 1:
            _log_step(ctx, step, losses, trainer, out)
        if centres is not None and std is not None and (step % eval_every == 0 or step == params.steps - 1):
            cov = mode_coverage(trainer.sample(params.eval_samples, eval_noise).cpu(), centres, std)
            ctx.metric(step, "modes_covered", cov["modes_covered"])
            ctx.metric(step, "high_quality_share", cov["high_quality_share"])
        ctx.progress(0.05 + 0.85 * (step + 1) / params.steps, f"step {step + 1}/{params.steps}")
    return out


def _measured_step(trainer: Trainer, out: _Training) -> dict[str, float]:
    """One training step counting the bytes autograd saves (and, on CUDA, the peak above what was allocated)."""
    device = trainer.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    losses = trainer.step(out.saved_d, out.saved_g)
    if device.type == "cuda":
        out.peak_cuda = torch.cuda.max_memory_allocated(device) - base
    return losses


def _log_step(ctx, step: int, losses: dict[str, float], trainer: Trainer, out: _Training) -> None:
    """A logged step: its losses as metrics and curve points, the last timed step's time and, for a normalized
    critic, the mean raw gradient norm on the fake batch."""
    for name, value in losses.items():
        ctx.metric(step, name, value)
        out.curves[name].append(value)
    out.curves["step"].append(step)
    if out.times:
        ctx.metric(step, "step_time_ms", 1e3 * out.times[-1])
    if isinstance(trainer.score, GradNormalized) and trainer.score.last_grad_norm is not None:
        ctx.metric(step, "raw_grad_norm_fake", float(trainer.score.last_grad_norm.mean()))


def _mode_quality(fake: Tensor, centres: Tensor, std: float | None) -> dict:
    """On a mixture, whose modes and spread are known: how many modes the samples cover and how many samples
    sit near one."""
    if std is None:
        return {}
    cov = mode_coverage(fake.cpu(), centres, std)
    return {
        "modes_covered": cov["modes_covered"],
        "n_modes": cov["n_modes"],
        "high_quality_share": cov["high_quality_share"],
        "mode_counts": cov["counts"],
        "mixture_std": std,
    }


def _judged_quality(classifier: nn.Sequential, accuracy: float, held_out: Tensor, x: Tensor, fake: Tensor) -> dict:
    """On labelled data, by the judge classifier: its scores of the samples, its own held-out accuracy, and the
    Fréchet distance in its features from the held-out real rows to the samples and, as the floor, to the rest
    of the real rows."""
    device = fake.device
    with torch.no_grad():
        probs = torch.softmax(classifier(torch.nan_to_num(fake)), dim=1)
    real_test = x[held_out].to(device)
    real_train = x[torch.ones(len(x), dtype=torch.bool).index_fill_(0, held_out, False)].to(device)
    quality = classifier_scores(probs)
    quality["classifier_test_accuracy"] = accuracy
    quality["frechet_classifier_features"] = frechet_distance(
        _features(classifier, real_test), _features(classifier, torch.nan_to_num(fake))
    )
    quality["frechet_real_vs_real"] = frechet_distance(
        _features(classifier, real_test), _features(classifier, real_train)
    )
    return quality
