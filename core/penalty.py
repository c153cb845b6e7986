"""The input- vs parameter-gradient inequality for MLPs, measured per sample.

For an MLP h^(t+1) = g^(t)(W^(t) h^(t) + b^(t)), h^(1) = x, and a scalar f of the output,

    ‖∇_x f‖² · Σ_t (1 + ‖h^(t)‖²) / (‖W^(t)‖₂² · ‖∂h^(t)/∂x‖₂²)  ≤  ‖∇_θ f‖²

(docs/techniques.md#gradient_penalty_bound). Each layer's term is bounded by that layer's share of the right side
because, with δ = ∂f/∂z^(t+1), ∇_x f = (∂h^(t)/∂x)ᵀ W^(t)ᵀ δ while ‖∇_W f‖² + ‖∇_b f‖² = ‖δ‖² (1 + ‖h^(t)‖²).

The functions here take a plain ``nn.Sequential`` of ``nn.Linear`` layers and parameter-free elementwise
activations; they never touch ``.grad`` of the model (everything runs on detached weights), so they can be
called in the middle of training.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.costs import auto_method

ELEMENTWISE = (nn.ReLU, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.Softplus, nn.Identity)
"""Activation modules accepted between Linear layers: parameter-free and applied entry by entry, so the Jacobian
of each is diagonal and the per-layer identity holds. A module whose class sets ``elementwise = True`` (an exported
graph's activation node, ``core.networks.exported.dense``) is accepted as well."""

_CHUNK_BYTES = 64 * 2**20
"""Rough cap on the scratch memory of one vmapped chunk (jacrev rows, Frobenius basis vectors)."""


def split_layers(model: nn.Sequential) -> list[tuple[nn.Linear, tuple[nn.Module, ...]]]:
    """The MLP as (Linear, following activations) pairs; refuses anything outside the stated form.

    BatchNorm couples samples, residuals and convolutions change the Jacobian structure: the bound as stated
    does not cover them, so they raise instead of giving a number that means something else.
    """
    if not isinstance(model, nn.Sequential) or len(model) == 0:
        raise ValueError("model must be a non-empty nn.Sequential")
    layers: list[tuple[nn.Linear, list[nn.Module]]] = []
    for module in model:
        if isinstance(module, nn.Linear):
            layers.append((module, []))
        elif isinstance(module, ELEMENTWISE) or getattr(module, "elementwise", False):
            if not layers:
                raise ValueError("model must start with nn.Linear (h^(1) is the input itself)")
            layers[-1][1].append(module)
        else:
            raise ValueError(f"{type(module).__name__} is outside the stated form (Linear + elementwise activations)")
    for (prev, _), (nxt, _) in zip(layers, layers[1:]):
        if prev.out_features != nxt.in_features:
            raise ValueError(f"Linear widths do not chain: {prev.out_features} -> {nxt.in_features}")
    return [(lin, tuple(acts)) for lin, acts in layers]


def _apply(layers, h: Tensor, upto: int) -> list[Tensor]:
    """Hidden states h^(2..upto+1) of the first ``upto`` layers on detached weights."""
    out = []
    for lin, acts in layers[:upto]:
        h = F.linear(h, lin.weight.detach(), None if lin.bias is None else lin.bias.detach())
        for act in acts:
            h = act(h)
        out.append(h)
    return out


def _scalar_f(out: Tensor, reduce, target) -> Tensor:
    """One scalar per sample from the output rows (B, k): the f of the inequality."""
    if callable(reduce):
        f = reduce(out)
    elif reduce == "sum":
        f = out.sum(dim=1)
    elif reduce == "mean":
        f = out.mean(dim=1)
    elif reduce in ("logit", "loss"):
        if target is None:
            raise ValueError(f"reduce={reduce!r} needs target (a class index or one per sample)")
        tgt = torch.as_tensor(target, dtype=torch.long, device=out.device).expand(out.shape[0])
        if reduce == "logit":
            f = out.gather(1, tgt[:, None])[:, 0]
        else:
            f = F.cross_entropy(out, tgt, reduction="none")
    else:
        raise ValueError(f"reduce must be 'sum', 'mean', 'logit', 'loss' or a callable, not {reduce!r}")
    if f.shape != out.shape[:1]:
        raise ValueError(f"reduce must give one scalar per sample, shape {tuple(out.shape[:1])}, got {tuple(f.shape)}")
    return f


def hidden_jacobians(model: nn.Sequential, x: Tensor) -> list[Tensor]:
    """Per-sample Jacobians ∂h^(t)/∂x for t = 2..l, each built by jacrev of its own prefix (vmapped over rows of x).

    Returns one (B, d_t, d) tensor per layer after the first; use only while B · Σ d_t · d fits in memory.
    """
    layers = split_layers(model)
    x = x.detach()
    jacs = []
    for t in range(1, len(layers)):
        widths = sum(lin.out_features for lin, _ in layers[:t])
        chunk = max(1, _CHUNK_BYTES // (x.shape[0] * widths * x.element_size()))
        jac = torch.func.jacrev(lambda xi, t=t: _apply(layers, xi, t)[-1], chunk_size=chunk)
        jacs.append(torch.func.vmap(jac)(x))
    return jacs


def _unit_rows(v: Tensor, fallback: Tensor) -> Tensor:
    """Rows of v scaled to unit length; rows that are exactly zero are replaced by the fallback's rows."""
    n = v.norm(dim=1, keepdim=True)
    fb = fallback / fallback.norm(dim=1, keepdim=True)
    return torch.where(n > 0, v / torch.where(n > 0, n, torch.ones_like(n)), fb)


def spectral_norm_power(
    fn: Callable[[Tensor], Tensor],
    x: Tensor,
    v0: Tensor | None = None,
    tol: float = 1e-6,
    max_iter: int = 100,
    seed: int = 0,
) -> tuple[Tensor, int]:
    """Per-sample ‖∂fn/∂x‖₂ by power iteration on JᵀJ, with J v by jvp and Jᵀ u by vjp (no Jacobian is formed).

    fn maps a batch (B, d) to (B, m) row by row (no mixing across samples). Each estimate sqrt(‖JᵀJ v‖) is a
    lower bound of σ_max that never decreases; iteration stops once every sample's relative increase is below
    ``tol`` or after ``max_iter`` steps. ``v0`` is the start (zero rows get a seeded random start). Starting from
    v0 = ∇_x f makes the first estimate at least ‖Jᵀa‖/‖a‖ for a = Wᵀδ, which keeps the bound's per-layer term
    within its share even if iteration stops early. Returns (σ (B,), iterations used).
    """
    x = x.detach()
    gen = torch.Generator(device="cpu").manual_seed(seed)
    rand = torch.randn(x.shape, generator=gen, dtype=x.dtype).to(x.device)
    v = _unit_rows(rand if v0 is None else v0.detach(), rand)
    _, vjp_fn = torch.func.vjp(fn, x)  # type: ignore[misc]  # the annotation includes has_aux=True's 3-tuple
    sigma = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    for it in range(1, max_iter + 1):
        _, u = torch.func.jvp(fn, (x,), (v,))  # type: ignore[misc]  # likewise: 2-tuple without has_aux
        (w,) = vjp_fn(u)
        wn = w.norm(dim=1)
        new = torch.maximum(sigma, wn.sqrt())
        converged = bool(((new - sigma) <= tol * new).all())
        sigma = new
        if converged:
            return sigma, it
        v = _unit_rows(w, v)
    return sigma, max_iter


def jacobian_fro_forward(model: nn.Sequential, x: Tensor) -> list[Tensor]:
    """Exact per-sample ‖∂h^(t)/∂x‖_F for t = 2..l by forward mode over the input basis, in chunks.

    Costs about d_in forward passes for all layers at once and never holds a whole Jacobian.
    """
    layers = split_layers(model)
    if len(layers) < 2:
        return []
    x = x.detach()
    b, d = x.shape
    widths = sum(lin.out_features for lin, _ in layers)
    chunk = max(1, min(d, _CHUNK_BYTES // (3 * b * widths * x.element_size())))

    def hidden(xb: Tensor) -> tuple[Tensor, ...]:
        return tuple(_apply(layers, xb, len(layers) - 1))

    def push(t: Tensor) -> tuple[Tensor, ...]:
        return torch.func.jvp(hidden, (x,), (t,))[1]

    sq = [torch.zeros(b, dtype=x.dtype, device=x.device) for _ in layers[1:]]
    eye = torch.eye(d, dtype=x.dtype, device=x.device)
    for start in range(0, d, chunk):
        basis = eye[start : start + chunk, None, :].expand(-1, b, d)
        for acc, col in zip(sq, torch.func.vmap(push)(basis)):
            acc += col.square().sum(dim=(0, 2))
    return [s.sqrt() for s in sq]


def jacobian_spectral_norms(
    model: nn.Sequential,
    x: Tensor,
    method: str = "jacrev",
    v0: Tensor | None = None,
    tol: float = 1e-6,
    max_iter: int = 100,
) -> list[Tensor]:
    """Per-sample ‖∂h^(t)/∂x‖₂ for every layer t = 1..l of the MLP (t = 1 is the identity, norm 1).

    ``method="jacrev"`` takes the largest singular value of the materialized Jacobian (exact);
    ``"power"`` runs ``spectral_norm_power`` on each prefix of the network (a lower bound that converges to it).
    x is (B, d); returns a list of (B,) tensors.
    """
    layers = split_layers(model)
    x = x.detach()
    norms = [torch.ones(x.shape[0], dtype=x.dtype, device=x.device)]
    if method == "jacrev":
        return norms + [torch.linalg.matrix_norm(j, ord=2) for j in hidden_jacobians(model, x)]
    if method != "power":
        raise ValueError(f"method must be 'jacrev' or 'power', not {method!r}")
    for t in range(1, len(layers)):
        norms.append(
            spectral_norm_power(
                lambda xx, t=t: _apply(layers, xx, t)[-1],  # type: ignore[misc]  # mypy infers no lambda with a default
                x,
                v0=v0,
                tol=tol,
                max_iter=max_iter,
                seed=t,
            )[0]
        )
    return norms


def _zero_safe_div(num: Tensor, den: Tensor) -> Tensor:
    """num / den with 0 where num is 0 (a zero input gradient makes its layer term 0, whatever the norms)."""
    return torch.where(num == 0, torch.zeros_like(num), num / den)


def gradient_bound_terms(
    model: nn.Sequential,
    x: Tensor,
    reduce="sum",
    target=None,
    method: str = "auto",
    frobenius: bool = True,
    tol: float = 1e-6,
    max_iter: int = 100,
) -> dict:
    """Both sides of the input- vs parameter-gradient inequality and their per-layer factors.

    model: ``nn.Sequential`` of ``nn.Linear`` and elementwise activations (see ``ELEMENTWISE``).
    x: one input (d,) or a batch (B, d); each row is its own sample with its own f (results per sample).
    reduce: how the output row o (k,) becomes the scalar f: ``"sum"`` Σ_j o_j (with k = 1 simply the output),
    ``"mean"``, ``"logit"`` o[target], ``"loss"`` cross-entropy(o, target) of that sample alone, or a callable
    mapping (B, k) to (B,) row by row.
    method: ``"jacrev"`` (materialize ∂h/∂x), ``"power"`` (power iteration with jvp/vjp, warm-started at ∇_x f,
    ``tol``/``max_iter``), or ``"auto"`` (``auto_method``: jacrev unless its cost or memory is too high).
    frobenius: also compute the looser Frobenius variant (‖W‖_F, ‖∂h/∂x‖_F; exact in both methods).

    ‖∇_θ f‖² is computed from the factorization ∇_W f = δ h^(t)ᵀ, ∇_b f = δ (a layer without bias drops the
    1 in 1 + ‖h‖²). Returns a dict of tensors, shaped (B,) for a batch and 0-dim for one input:
    ``f``, ``grad_x_norm``, ``lhs``, ``rhs``, ``ratio`` (lhs/rhs, NaN when both are 0), ``lhs_frobenius``,
    ``ratio_frobenius``, ``method``, ``power_iters`` (max over layers, 0 for jacrev) and ``layers``: per Linear,
    ``h_norm`` ‖h^(t)‖, ``w_norm`` ‖W‖₂, ``w_fro``, ``jac_norm`` ‖∂h^(t)/∂x‖₂ (1 for t = 1), ``jac_fro`` (√d_in
    for t = 1: the Frobenius variant replaces every spectral norm, the identity's included),
    ``term`` (the layer's summand times ‖∇_x f‖²), ``term_frobenius``, ``param_grad_sq`` ‖∇_W f‖² + ‖∇_b f‖²,
    ``share`` (param_grad_sq / rhs) and ``residual`` ‖∇_x f − (∂h/∂x)ᵀ Wᵀ δ‖ / (‖δ‖ ‖W‖₂ ‖∂h/∂x‖₂), the
    per-layer identity's error scaled by the bound it obeys (0 when both sides vanish).
    """
    layers = split_layers(model)
    if method not in ("auto", "jacrev", "power"):
        raise ValueError(f"method must be 'auto', 'jacrev' or 'power', not {method!r}")
    single = x.dim() == 1
    xb = _input_batch(layers, x)
    if method == "auto":
        method = auto_method(
            xb.shape[1], [lin.in_features for lin, _ in layers[1:]], xb.shape[0], max_iter, xb.element_size()
        )
    grads = _backprop(layers, xb, reduce, target)
    jac = _input_jacobians(model, layers, xb, grads, method, frobenius, tol, max_iter)
    gx_sq = grads.gx.square().sum(dim=1)
    per_layer = [
        _layer_terms(lin, grads.hs[t], grads.deltas[t], grads.gx, gx_sq, jac, t, frobenius)
        for t, (lin, _) in enumerate(layers)
    ]
    out = _both_sides(grads.f, gx_sq, per_layer, method, jac.iters, frobenius)
    if single:
        out = _squeeze(out)
    return out


def _input_batch(layers, x: Tensor) -> Tensor:
    """x as a detached (B, d) batch in the first layer's dtype and device; refuses an input of the wrong width."""
    weight = layers[0][0].weight
    xb = (x[None] if x.dim() == 1 else x).detach().to(dtype=weight.dtype, device=weight.device)
    if xb.dim() != 2 or xb.shape[1] != layers[0][0].in_features:
        raise ValueError(f"x must be (d,) or (B, d) with d = {layers[0][0].in_features}, got {tuple(x.shape)}")
    return xb


class _Backprop(NamedTuple):
    """What one forward and one backward pass give: f per sample, ∇_x f, every δ = ∂f/∂z^(t+1) and every h^(t)."""

    f: Tensor
    gx: Tensor
    deltas: list[Tensor]
    hs: list[Tensor]


def _backprop(layers, xb: Tensor, reduce, target) -> _Backprop:
    """One forward and one backward on detached weights give ∇_x f and every δ (rows never mix, so summing f over
    the batch is exact); an output f does not depend on gets a zero gradient."""
    xg = xb.clone().requires_grad_(True)
    hs, zs, h = [xg], [], xg
    for lin, acts in layers:
        z = F.linear(h, lin.weight.detach(), None if lin.bias is None else lin.bias.detach())
        zs.append(z)
        h = z
        for act in acts:
            h = act(h)
        hs.append(h)
    f = _scalar_f(h, reduce, target)
    grads = torch.autograd.grad(f.sum(), [xg, *zs], allow_unused=True)
    gx = grads[0] if grads[0] is not None else torch.zeros_like(xb)
    deltas = [g if g is not None else torch.zeros_like(z) for g, z in zip(grads[1:], zs)]
    return _Backprop(f, gx, deltas, [t.detach() for t in hs])


class _InputJacobians(NamedTuple):
    """Per layer t: ‖∂h^(t)/∂x‖₂ and ‖·‖_F per sample, the identity's right side (∂h^(t)/∂x)ᵀ Wᵀ δ, and the most
    power iterations any layer used (0 for jacrev)."""

    spec: list[Tensor]
    fro: list[Tensor]
    back: list[Tensor]
    iters: int


def _input_jacobians(
    model: nn.Sequential,
    layers,
    xb: Tensor,
    grads: _Backprop,
    method: str,
    frobenius: bool,
    tol: float,
    max_iter: int,
) -> _InputJacobians:
    """The norms of every ∂h^(t)/∂x and its product with Wᵀδ, by ``method``: the materialized Jacobians, or power
    iteration warm-started at ∇_x f with a vjp for the product (and the exact Frobenius norm by forward mode)."""
    aw = [d @ lin.weight.detach() for d, (lin, _) in zip(grads.deltas, layers)]  # δᵀ W, one row per sample
    ones = torch.ones(xb.shape[0], dtype=xb.dtype, device=xb.device)
    jac_spec, back, iters = [ones], [aw[0]], 0
    jac_fro = [ones * math.sqrt(xb.shape[1])]
    if method == "jacrev":
        for t, j in enumerate(hidden_jacobians(model, xb), start=1):
            jac_spec.append(torch.linalg.matrix_norm(j, ord=2))
            jac_fro.append(torch.linalg.matrix_norm(j, ord="fro"))
            back.append(torch.einsum("bm,bmd->bd", aw[t], j))
        return _InputJacobians(jac_spec, jac_fro, back, iters)
    for t in range(1, len(layers)):

        def prefix(xx: Tensor, t=t) -> Tensor:
            return _apply(layers, xx, t)[-1]

        sigma, used = spectral_norm_power(prefix, xb, v0=grads.gx, tol=tol, max_iter=max_iter, seed=t)
        jac_spec.append(sigma)
        iters = max(iters, used)
        back.append(torch.func.vjp(prefix, xb)[1](aw[t])[0])
    if frobenius:
        jac_fro.extend(jacobian_fro_forward(model, xb))
    return _InputJacobians(jac_spec, jac_fro, back, iters)


def _layer_terms(
    lin: nn.Linear,
    h: Tensor,
    delta: Tensor,
    gx: Tensor,
    gx_sq: Tensor,
    jac: _InputJacobians,
    t: int,
    frobenius: bool,
) -> dict:
    """Layer t's factors, its summand of the left side, its share of the right side (‖δ‖² (1 + ‖h‖²)) and the
    residual of its identity ∇_x f = (∂h/∂x)ᵀ Wᵀ δ."""
    w = lin.weight.detach()
    h_sq = h.square().sum(dim=1)
    one = 1.0 if lin.bias is not None else 0.0
    d_sq = delta.square().sum(dim=1)
    w_norm = torch.linalg.matrix_norm(w, ord=2)
    w_fro = torch.linalg.matrix_norm(w, ord="fro")
    scale = d_sq.sqrt() * w_norm * jac.spec[t]
    resid = (gx - jac.back[t]).norm(dim=1)
    layer = {
        "h_norm": h_sq.sqrt(),
        "w_norm": w_norm,
        "w_fro": w_fro,
        "jac_norm": jac.spec[t],
        "term": _zero_safe_div(gx_sq * (one + h_sq), w_norm.square() * jac.spec[t].square()),
        "param_grad_sq": d_sq * (one + h_sq),
        "residual": _zero_safe_div(resid, scale),
    }
    if frobenius:
        layer["jac_fro"] = jac.fro[t]
        layer["term_frobenius"] = _zero_safe_div(gx_sq * (one + h_sq), w_fro.square() * jac.fro[t].square())
    return layer


def _both_sides(f: Tensor, gx_sq: Tensor, per_layer: list[dict], method: str, iters: int, frobenius: bool) -> dict:
    """The two sides summed over layers, their ratio, and each layer's share of the right side (added in place)."""
    rhs = torch.stack([p["param_grad_sq"] for p in per_layer]).sum(dim=0)
    lhs = torch.stack([p["term"] for p in per_layer]).sum(dim=0)
    out = {
        "f": f.detach(),
        "grad_x_norm": gx_sq.sqrt(),
        "lhs": lhs,
        "rhs": rhs,
        "ratio": lhs / rhs,
        "method": method,
        "power_iters": iters,
        "layers": per_layer,
    }
    for p in per_layer:
        p["share"] = p["param_grad_sq"] / rhs
    if frobenius:
        lhs_f = torch.stack([p["term_frobenius"] for p in per_layer]).sum(dim=0)
        out["lhs_frobenius"] = lhs_f
        out["ratio_frobenius"] = lhs_f / rhs
    return out


def _squeeze(tree):
    """Drop the batch axis of every per-sample tensor (results for a single input)."""
    if isinstance(tree, dict):
        return {k: _squeeze(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_squeeze(v) for v in tree]
    if isinstance(tree, Tensor) and tree.dim() == 1:
        return tree[0]
    return tree
