"""Job kind ``contrastive_accumulation``: train a contrastive encoder at a large batch with the exact full-batch
InfoNCE gradient in the memory of one chunk, and show that it is exact (docs/techniques.md#contrastive_accumulation).

The batch is two augmented views (random pixel masking + Gaussian noise) of sampled rows. ``towers="shared"``: one
encoder sees both views, interleaved (row 2i and 2i+1 are a pair), B = batch_size rows, the rest of the batch as
negatives. ``towers="two_tower"``: a query encoder sees view 1 and a key encoder view 2 (batch_size of each), with
the symmetric CLIP loss. ``compare`` trains, from the same initialisation and on the same batches, the naive per-chunk
accumulation and, when it fits the memory budget, the plain full batch.
"""

from __future__ import annotations

import copy
import ctypes
import ctypes.util
import io
import json
import statistics
import time
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from core.contrastive import (
    accumulated_backward,
    accumulated_backward_two_tower,
    info_nce_loss,
    naive_accumulated_backward,
    naive_accumulated_backward_two_tower,
    two_tower_info_nce_loss,
)
from core.data import load_dataset
from core.data.batches import chunked_max
from core.data.loader import ArraysView, PairsView, TokenRows
from core.networks.build import BuiltModel, PooledEncoder, build
from core.networks.resolve import materialize
from core.networks.tokens import token_rows
from core.plots import new_figure, to_png
from core.techniques.contrastive_accumulation.spec import (
    ContrastiveAccumulationParams,
    check_budget,
    dataset_needs,
    full_batch_fits,
    tower_count,
)

PROBE_MAX_SAMPLES = 4000
METHODS = ("chunked", "naive", "full")


def _mlp(in_dim: int, widths: list[int], dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip([in_dim, *widths[:-1]], widths)):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 1:
            layers += [nn.ReLU(), nn.Dropout(dropout)]
    return nn.Sequential(*layers)


class PeakMemory:
    """Peak extra memory of one call. CUDA: ``torch.cuda.max_memory_allocated`` above what was allocated before.
    CPU: resident-set high-water mark (``VmHWM`` in /proc/self/status, reset by writing 5 to /proc/self/clear_refs)
    above ``VmRSS`` before the call, after ``malloc_trim`` returned freed heap pages so reuse is counted."""

    def __init__(self, device: torch.device):
        self.device = device
        self._trim = None
        if device.type == "cuda":
            self.method = "cuda.max_memory_allocated"
            return
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.method = "cpu RSS: /proc/self/status VmHWM - VmRSS before (clear_refs reset, malloc_trim)"
        except OSError:
            self.method = "unavailable (no writable /proc/self/clear_refs)"
            return
        libc_name = ctypes.util.find_library("c")
        libc = ctypes.CDLL(libc_name) if libc_name else None
        self._trim = getattr(libc, "malloc_trim", None)

    @property
    def available(self) -> bool:
        return not self.method.startswith("unavailable")

    def measure(self, fn):
        """(fn(), peak bytes above the start or None)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            before = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            out = fn()
            torch.cuda.synchronize(self.device)
            return out, torch.cuda.max_memory_allocated(self.device) - before
        if not self.available:
            return fn(), None
        if self._trim is not None:
            self._trim(0)
        before = _proc_status_kib("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        out = fn()
        return out, max(0, _proc_status_kib("VmHWM") - before) * 1024


def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"{field} missing from /proc/self/status")


class _Batches:
    """Two augmented views of sampled rows: pixels dropped with ``mask_prob``, noise of ``noise_std`` × feature std."""

    def __init__(self, x: np.ndarray, p, rng: np.random.Generator, device: torch.device):
        self.x, self.p, self.rng, self.device = x, p, rng, device
        self.scale = p.noise_std * x.std(axis=0, keepdims=True).astype(np.float32)

    def _view(self, rows: np.ndarray) -> np.ndarray:
        keep = self.rng.random(rows.shape, dtype=np.float32) >= self.p.mask_prob
        noise = self.rng.standard_normal(rows.shape, dtype=np.float32) * self.scale
        return rows * keep + noise

    def draw(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """shared: (B rows interleaved, unused); two_tower: (queries, keys)."""
        count = batch // 2 if self.p.towers == "shared" else batch
        idx = self.rng.choice(len(self.x), size=count, replace=count > len(self.x))
        rows = self.x[idx]
        a, b = self._view(rows), self._view(rows)
        if self.p.towers == "shared":
            both = np.stack([a, b], axis=1).reshape(2 * count, -1)
            return torch.from_numpy(both).to(self.device), torch.empty(0, device=self.device)
        return torch.from_numpy(a).to(self.device), torch.from_numpy(b).to(self.device)


class _TokenBatches(_Batches):
    """Two views of sampled token rows: each token replaced by the mask token with ``mask_prob``."""

    def __init__(self, x: np.ndarray, p, rng: np.random.Generator, device: torch.device, mask_id: int):
        self.x, self.p, self.rng, self.device, self.mask_id = x, p, rng, device, mask_id

    def _view(self, rows: np.ndarray) -> np.ndarray:
        return np.where(self.rng.random(rows.shape) < self.p.mask_prob, self.mask_id, rows)


class _PairBatches:
    """Sampled query/document pairs of a pairs dataset: the two views of a sample are its query and its document
    (the positives), each cut to ``length`` tokens; a shorter text is repeated to fill them, so that pooling sees
    only its own tokens (no padding id)."""

    def __init__(self, pairs: PairsView, p, rng: np.random.Generator, device: torch.device, length: int, vocab: int):
        for column in (pairs.query, pairs.document):
            if chunked_max(column.tokens) >= vocab:
                raise ValueError(f"dataset: {column.name} token ids exceed the model's vocabulary of {vocab}")
        self.pairs, self.p, self.rng, self.device, self.length = pairs, p, rng, device, length

    def _texts(self, column: TokenRows, idx: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(column.tiled(idx, self.length)).to(self.device)

    def draw(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """shared: (query and document of each pair interleaved, unused); two_tower: (queries, documents)."""
        count = batch // 2 if self.p.towers == "shared" else batch
        idx = self.rng.choice(len(self.pairs), size=count, replace=count > len(self.pairs))
        a, b = self._texts(self.pairs.query, idx), self._texts(self.pairs.document, idx)
        if self.p.towers == "shared":
            return torch.stack([a, b], dim=1).reshape(2 * count, -1), torch.empty(0, device=self.device)
        return a, b


def _model_towers(p, ctx, device: torch.device) -> tuple[BuiltModel, list[nn.Module]]:
    """The model's shape (built on ``meta``) and the initial towers pooled from the user's Transformer (one per
    tower, each its own init; uploaded weights: the same start)."""
    buildable, weights = materialize(p.model, ctx)
    probe = build(buildable, device="meta")
    towers: list[nn.Module] = [
        PooledEncoder(build(buildable, weights=weights), p.pooling).to(device) for _ in range(tower_count(p))
    ]
    return probe, towers


class _Trainer:
    """One method's encoder(s), optimizer and gradient step, so the three methods run on identical batches."""

    def __init__(self, method: str, towers: list[nn.Module], p):
        self.method, self.towers, self.p = method, towers, p
        params = [w for t in towers for w in t.parameters()]
        self.opt = (
            torch.optim.Adam(params, lr=p.lr)
            if p.optimizer == "adam"
            else torch.optim.SGD(params, lr=p.lr, momentum=0.9)
        )

    def zero_grad(self) -> None:
        for t in self.towers:
            t.zero_grad(set_to_none=True)

    def gradient(self, a: torch.Tensor, b: torch.Tensor, chunk: int | None = None) -> dict:
        """Fill .grad for one batch; returns the true full-batch loss (and, for naive, its per-chunk objective)."""
        p = self.p
        c = chunk or p.chunk_size
        if p.towers == "shared":
            enc = self.towers[0]
            pos = torch.arange(a.shape[0], device=a.device) ^ 1
            if self.method == "chunked":
                return {"loss": accumulated_backward(enc, a, pos, c, p.temperature, p.normalize)}
            if self.method == "naive":
                got = naive_accumulated_backward(enc, a, pos, c, p.temperature, p.normalize)
                return {"loss": got.full, "chunk_loss": got.chunk_mean}
            loss = info_nce_loss(enc(a), pos, p.temperature, p.normalize)
        else:
            q, k = self.towers
            if self.method == "chunked":
                return {"loss": accumulated_backward_two_tower(q, k, a, b, c, None, p.temperature, p.normalize, True)}
            if self.method == "naive":
                got = naive_accumulated_backward_two_tower(q, k, a, b, c, p.temperature, p.normalize, True)
                return {"loss": got.full, "chunk_loss": got.chunk_mean}
            loss = two_tower_info_nce_loss(q(a), k(b), None, p.temperature, p.normalize, True)
        loss.backward()
        return {"loss": float(loss.detach())}

    def reference_gradient(self, a: torch.Tensor, b: torch.Tensor, chunk: int) -> float:
        """Plain autograd over the whole batch, forwarding chunk by chunk in the chunked method's order so dropout
        draws the same masks; one graph, one backward: the gradient the chunked method must reproduce."""
        p = self.p
        c = chunk
        if p.towers == "shared":
            enc = self.towers[0]
            out = torch.cat([enc(a[s : s + c]) for s in range(0, a.shape[0], c)])
            loss = info_nce_loss(out, torch.arange(a.shape[0], device=a.device) ^ 1, p.temperature, p.normalize)
        else:
            q, k = self.towers
            qs, ks = [], []
            for s in range(0, a.shape[0], c):
                qs.append(q(a[s : s + c]))
                ks.append(k(b[s : s + c]))
            loss = two_tower_info_nce_loss(torch.cat(qs), torch.cat(ks), None, p.temperature, p.normalize, True)
        loss.backward()
        return float(loss.detach())

    def flat_grad(self) -> torch.Tensor:
        grads = [w.grad for t in self.towers for w in t.parameters()]
        present = [g for g in grads if g is not None]
        assert len(present) == len(grads)  # backward() reached every parameter
        return torch.cat([g.flatten() for g in present])


def _rel_diff(g: torch.Tensor, ref: torch.Tensor) -> float:
    return float((g - ref).abs().max() / ref.abs().max().clamp_min(torch.finfo(ref.dtype).tiny))


def _gradient_check(
    trainers: dict[str, _Trainer], batches: _Batches | _PairBatches, batch: int, chunk: int, device: torch.device
) -> dict:
    """Step-0 gradients of each method against the reference, all from the same RNG state and initial weights."""
    a, b = batches.draw(batch)
    devices = [device] if device.type == "cuda" else []
    grads, losses = {}, {}
    for name, method in (("reference", "chunked"), ("chunked", "chunked"), ("naive", "naive")):
        tr = trainers[method]
        tr.zero_grad()
        with torch.random.fork_rng(devices=devices):
            if name == "reference":
                losses[name] = tr.reference_gradient(a, b, chunk)
            else:
                losses[name] = tr.gradient(a, b, chunk)["loss"]
        grads[name] = tr.flat_grad().clone()
        tr.zero_grad()
    return {
        "batch_size": batch,
        "chunk_size": chunk,
        "rel_diff_accumulated": _rel_diff(grads["chunked"], grads["reference"]),
        "rel_diff_naive": _rel_diff(grads["naive"], grads["reference"]),
        "loss_reference": losses["reference"],
        "loss_accumulated": losses["chunked"],
        "loss_naive_full": losses["naive"],
    }


def _probe_accuracy(
    tower: nn.Module,
    x: np.ndarray | None,
    y: np.ndarray | None,
    rng: np.random.Generator,
    device: torch.device,
    normalize: bool,
) -> float | None:
    """Held-out accuracy of a logistic regression on the frozen encoder's clean (unaugmented) representations."""
    if x is None or y is None or len(np.unique(y)) < 2:
        return None
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    idx = rng.permutation(len(x))[:PROBE_MAX_SAMPLES]
    was_training = tower.training
    tower.eval()
    with torch.no_grad():
        feats = torch.cat([tower(torch.from_numpy(x[idx[s : s + 1024]]).to(device)) for s in range(0, len(idx), 1024)])
        if normalize:
            feats = nn.functional.normalize(feats, dim=1)
    tower.train(was_training)
    feats_np, labels = feats.cpu().numpy(), y[idx]
    cut = int(0.7 * len(idx))
    if len(np.unique(labels[:cut])) < 2 or cut == len(idx):
        return None
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    clf.fit(feats_np[:cut], labels[:cut])
    return float(clf.score(feats_np[cut:], labels[cut:]))


def _step_costs(times: dict[str, list[float]], peaks: dict[str, list[int]], methods: list[str]) -> tuple:
    """Per method the median seconds and peak bytes of one step over the run (None where memory was not measured),
    and the chunked method's time over the plain full batch's (None without a full-batch run)."""
    time_per_step = {m: statistics.median(times[m]) for m in methods}
    peak_memory = {m: (int(statistics.median(peaks[m])) if peaks[m] else None) for m in methods}
    ratio = time_per_step["chunked"] / time_per_step["full"] if "full" in time_per_step else None
    return time_per_step, peak_memory, ratio


def _finite_or_none(v):
    return v if v is None or np.isfinite(v) else None


def run(params: ContrastiveAccumulationParams, ctx) -> dict:
    device = torch.device(ctx.device)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(ctx.seed)
        return _run(params, ctx, device)


def _run(p: ContrastiveAccumulationParams, ctx, device: torch.device) -> dict:
    data = load_dataset(p.dataset, ctx, dataset_needs(p).kinds)
    y = data.get("y") if isinstance(data, ArraysView) else None
    setup = _setup(p, ctx, data, np.random.default_rng(ctx.seed), device)
    methods = ["chunked"] + (["naive"] + (["full"] if setup.full_fits else []) if p.compare else [])
    trainers = {
        m: _Trainer(m, [copy.deepcopy(t) for t in setup.init], p) for m in METHODS if m in methods or m == "naive"
    }

    check_batch, check_chunk = _check_sizes(p, setup.in_dim)
    ctx.progress(0.02, f"gradient check at batch {check_batch}, chunk {check_chunk}")
    grad_check = _gradient_check(trainers, setup.batches, check_batch, check_chunk, device)
    ctx.metric(0, "grad_rel_diff_accumulated", grad_check["rel_diff_accumulated"])
    ctx.metric(0, "grad_rel_diff_naive", grad_check["rel_diff_naive"])

    meter = PeakMemory(device)
    curves, times, peaks = _train_side_by_side(p, ctx, methods, trainers, setup.batches, meter, device)

    ctx.progress(0.92, "linear probes")
    towers = {"init": setup.init[0], **{m: trainers[m].towers[0] for m in methods}}
    probe = {
        name: _probe_accuracy(tower, setup.x, y, np.random.default_rng(ctx.seed + 1), device, p.normalize)
        for name, tower in towers.items()
    }

    time_per_step, peak_memory, time_ratio = _step_costs(times, peaks, methods)
    result = {
        "towers": p.towers,
        "batch_size": p.batch_size,
        "chunk_size": p.chunk_size,
        "device": str(device),
        "methods": methods,
        "full_batch_fits": setup.full_fits,
        "loss_curve": [_finite_or_none(v) for v in curves["chunked"]],
        "final_loss": {m: _finite_or_none(curves[m][-1]) for m in methods},
        "grad_check": {k: (_finite_or_none(v) if isinstance(v, float) else v) for k, v in grad_check.items()},
        "time_per_step_s": time_per_step,
        "time_ratio_chunked_over_full": time_ratio,
        "peak_memory_bytes": peak_memory,
        "peak_memory_method": meter.method + " (median over steps of one gradient computation)",
        "linear_probe_accuracy": probe,
    }
    _save_artifacts(ctx, p, result, curves, meter.method)
    ctx.progress(1.0, "done")
    return result


class _Setup(NamedTuple):
    """What a run trains on: the rows to probe (None for pairs), the input width, the batch source, the initial
    towers every method copies, and whether the plain full batch fits the memory budget."""

    x: np.ndarray | None
    in_dim: int
    batches: _Batches | _PairBatches
    init: list[nn.Module]
    full_fits: bool


def _setup(p: ContrastiveAccumulationParams, ctx, data, rng: np.random.Generator, device: torch.device) -> _Setup:
    """The batches and the initial towers: the user's Transformer on token rows or query/document pairs, or the
    job's MLP on the rows of x (checked against the budget here; the API budgeted a model, its full batch
    included)."""
    if p.model is not None:
        probe_model, init = _model_towers(p, ctx, device)
        vocab, context = probe_model.vocab_size, probe_model.context
        assert vocab is not None and context is not None  # a Transformer (the params checked)
        if isinstance(data, PairsView):
            return _Setup(None, context, _PairBatches(data, p, rng, device, context, vocab), init, True)
        assert isinstance(data, ArraysView)
        x = token_rows(data["x"], vocab - 1, context, pixel_levels=p.dataset == "digits")  # vocab - 1: the views' mask
        return _Setup(x, x.shape[1], _TokenBatches(x, p, rng, device, vocab - 1), init, True)
    assert isinstance(data, ArraysView)
    x = np.ascontiguousarray(data["x"], dtype=np.float32)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError("dataset: x must be a 2-D array with at least 2 rows")
    in_dim = x.shape[1]
    check_budget(p, in_dim)
    batches = _Batches(x, p, rng, device)
    init = [_mlp(in_dim, p.widths, p.dropout).to(device) for _ in range(tower_count(p))]
    return _Setup(x, in_dim, batches, init, full_batch_fits(p, in_dim, p.batch_size))


def _check_sizes(p: ContrastiveAccumulationParams, in_dim: int) -> tuple[int, int]:
    """Batch and chunk of the step-0 gradient check: the job's, or for an MLP whose full batch does not fit, a
    batch halved until the reference gradient fits, with a chunk that keeps at least two chunks in it (or the
    naive method would see the whole batch and agree)."""
    check_batch = p.batch_size
    while p.model is None and not full_batch_fits(p, in_dim, check_batch) and check_batch > 2:
        check_batch = max(2, check_batch // 4 * 2)
    half = check_batch // 2
    check_chunk = min(p.chunk_size, max(2, half - half % 2) if p.towers == "shared" else max(1, half))
    return check_batch, check_chunk


def _train_side_by_side(
    p: ContrastiveAccumulationParams,
    ctx,
    methods: list[str],
    trainers: dict[str, _Trainer],
    batches: _Batches | _PairBatches,
    meter: PeakMemory,
    device: torch.device,
) -> tuple[dict[str, list[float]], dict[str, list[float]], dict[str, list[int]]]:
    """Every method steps on the same batch in turn: per method the loss, seconds and peak bytes of each step."""
    curves: dict[str, list[float]] = {m: [] for m in methods}
    times: dict[str, list[float]] = {m: [] for m in methods}
    peaks: dict[str, list[int]] = {m: [] for m in methods}
    for step in range(p.steps):
        ctx.check_cancelled()
        a, b = batches.draw(p.batch_size)
        for m in methods:
            tr = trainers[m]
            tr.zero_grad()
            start = time.perf_counter()
            got, peak = meter.measure(lambda: tr.gradient(a, b))
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times[m].append(time.perf_counter() - start)
            tr.opt.step()
            if peak is not None:
                peaks[m].append(peak)
            curves[m].append(got["loss"])
            ctx.metric(step, "loss" if m == "chunked" else f"loss_{m}", got["loss"])
            if "chunk_loss" in got:
                ctx.metric(step, "loss_naive_per_chunk_objective", got["chunk_loss"])
            ctx.metric(step, f"step_time_s_{m}", times[m][-1])
            ctx.check_cancelled()
        if step % max(1, p.steps // 10) == 0 or step == p.steps - 1:
            ctx.progress(
                0.05 + 0.85 * (step + 1) / p.steps, f"step {step + 1}/{p.steps} loss {curves['chunked'][-1]:.4f}"
            )
    return curves, times, peaks


def _save_artifacts(
    ctx, p: ContrastiveAccumulationParams, result: dict, curves: dict[str, list[float]], memory_method: str
) -> None:
    """The loss and cost plots, the result as JSON and every method's loss curve as one (methods, steps) array."""
    ctx.artifact("loss.png", _loss_plot(curves, p), "image/png")
    cost = _cost_plot(result["time_per_step_s"], result["peak_memory_bytes"], memory_method)
    ctx.artifact("cost.png", cost, "image/png")
    ctx.artifact("result.json", json.dumps(result).encode(), "application/json")
    buf = io.BytesIO()
    np.save(buf, np.array([curves[m] for m in result["methods"]], dtype=np.float64), allow_pickle=False)
    ctx.artifact("loss_curves.npy", buf.getvalue(), "application/x-npy")


_LABELS = {
    "chunked": "exact chunked accumulation",
    "naive": "naive per-chunk InfoNCE (true full-batch loss)",
    "full": "plain full batch",
}


def _loss_plot(curves: dict[str, list[float]], p) -> bytes:
    fig, ax = new_figure()
    styles = {"chunked": "-", "naive": "--", "full": ":"}
    for m, ys in curves.items():
        ax.plot(range(len(ys)), ys, styles[m], label=_LABELS[m], lw=2 if m == "full" else 1.5)
    ax.set_xlabel("training step")
    ax.set_ylabel(f"full-batch InfoNCE loss (nats), B={p.batch_size}")
    ax.set_title(f"{p.towers}: chunk {p.chunk_size}, τ={p.temperature}")
    ax.legend()
    return to_png(fig)


def _cost_plot(time_per_step: dict[str, float], peak_memory: dict[str, int | None], method: str) -> bytes:
    fig, ax = new_figure()
    names = list(time_per_step)
    pos = np.arange(len(names))
    ax.bar(pos - 0.2, [1000 * time_per_step[m] for m in names], 0.4, label="time per step (ms)", color="tab:blue")
    ax.set_ylabel("median time per gradient step (ms)")
    ax.set_xticks(pos, names)
    ax.set_xlabel("method")
    ax2 = ax.twinx()
    mem = [(peak_memory[m] or 0) / 2**20 for m in names]
    ax2.bar(pos + 0.2, mem, 0.4, label="peak memory (MiB)", color="tab:orange")
    ax2.set_ylabel("peak extra memory (MiB)")
    ax.set_title(f"cost per step; memory: {method.split(':')[0]}")
    handles = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], loc="upper left")
    return to_png(fig)
