"""Exact large-batch InfoNCE gradients in the memory of one chunk (cached representation gradients).

InfoNCE couples every sample of a batch through its negatives, so summing per-chunk losses (``naive_*`` below) is a
different, weaker objective. The exact method runs the encoder once without a graph, computes the full-batch loss and
its gradient ``G = dL/dh`` with respect to the representations only, then re-runs each chunk with a graph and
backpropagates the surrogate ``sum(h_chunk * G_chunk)``, whose parameter gradient is the chunk's share of ``dL/dθ``.
Each chunk's RNG state is recorded in the first pass and replayed in the second, so dropout masks match and the
result stays exact; BatchNorm in training mode mixes samples across chunks and is refused.

The score matrix is never built whole here: the loss and ``G`` are computed in row blocks of at most ``chunk_size``
rows and ``max_score_elements`` entries, so a batch of B costs O(B·d) plus one block, not O(B²).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.costs import DEFAULT_MAX_SCORE_ELEMENTS, score_block_rows


class NaiveLosses(NamedTuple):
    """What a naive per-chunk step optimised (``chunk_mean``) and the true full-batch loss of its reps (``full``)."""

    full: float
    chunk_mean: float


def info_nce_loss(reps: Tensor, positives: Tensor, temperature: float = 0.05, normalize: bool = True) -> Tensor:
    """Single-encoder InfoNCE: row i's positive is row ``positives[i]``, every other row but itself a negative.

    ``reps`` is (B, d); ``positives`` (B,) long with ``positives[i] != i``. Scores are cosine similarities (dot
    products when ``normalize`` is False) over ``temperature``; the diagonal is masked out; the loss is the mean
    cross-entropy over rows. This builds the full B×B matrix: it is the definition and the plain full-batch baseline.
    """
    _check_positives(positives, reps.shape[0], reps.shape[0], forbid_self=True)
    z = F.normalize(reps, dim=1) if normalize else reps
    scores = (z / temperature) @ z.T
    return F.cross_entropy(scores.fill_diagonal_(float("-inf")), positives)


def two_tower_info_nce_loss(
    queries: Tensor,
    keys: Tensor,
    positives: Tensor | None = None,
    temperature: float = 0.05,
    normalize: bool = True,
    symmetric: bool = False,
) -> Tensor:
    """Two-tower InfoNCE (DPR; CLIP when ``symmetric``): query i must pick key ``positives[i]`` among all keys.

    ``positives`` defaults to the diagonal (key i belongs to query i). ``symmetric`` averages the query→key loss with
    the key→query one and then needs as many keys as queries and a permutation as ``positives``.
    """
    positives = _default_positives(positives, queries)
    _check_positives(positives, queries.shape[0], keys.shape[0], forbid_self=False)
    q = F.normalize(queries, dim=1) if normalize else queries
    k = F.normalize(keys, dim=1) if normalize else keys
    scores = (q / temperature) @ k.T
    loss = F.cross_entropy(scores, positives)
    if not symmetric:
        return loss
    back = _inverse_permutation(positives, keys.shape[0])
    return 0.5 * (loss + F.cross_entropy(scores.T, back))


def accumulated_backward(
    encoder: nn.Module,
    inputs: Tensor,
    positives: Tensor,
    chunk_size: int,
    temperature: float = 0.05,
    normalize: bool = True,
    *,
    max_score_elements: int = DEFAULT_MAX_SCORE_ELEMENTS,
) -> float:
    """Add the exact gradient of ``info_nce_loss(encoder(inputs), positives, ...)`` to the encoder's ``.grad``.

    Activation memory is that of ``chunk_size`` rows (plus B×d for the cached representations and their gradient).
    Returns the true full-batch loss, never the surrogate's value.
    """
    _refuse_batch_coupling(encoder)
    _check_positives(positives, inputs.shape[0], inputs.shape[0], forbid_self=True)
    reps, states = _forward_without_graph([(encoder, inputs)], chunk_size)
    after_first_pass = _rng_state(inputs.device)
    h = reps[0].requires_grad_()
    z = F.normalize(h, dim=1) if normalize else h
    loss, z_grad = _blockwise_loss_grad(
        z.detach(), positives, temperature, True, score_block_rows(z.shape[0], chunk_size, max_score_elements)
    )
    z.backward(z_grad)
    assert h.grad is not None  # h is a leaf that z was computed from
    _replay_backward([(encoder, inputs)], [h.grad], states, chunk_size)
    _set_rng_state(inputs.device, after_first_pass)
    return loss


def accumulated_backward_two_tower(
    query_encoder: nn.Module,
    key_encoder: nn.Module,
    queries: Tensor,
    keys: Tensor,
    chunk_size: int,
    positives: Tensor | None = None,
    temperature: float = 0.05,
    normalize: bool = True,
    symmetric: bool = False,
    *,
    max_score_elements: int = DEFAULT_MAX_SCORE_ELEMENTS,
) -> float:
    """Exact gradient of ``two_tower_info_nce_loss(query_encoder(queries), key_encoder(keys), ...)``, chunked.

    The two encoders may be the same module (shared weights): both towers' contributions then add up in its
    ``.grad``. Chunks are run alternately (query chunk i, then key chunk i) in both passes. Returns the true loss.
    """
    for enc in {id(query_encoder): query_encoder, id(key_encoder): key_encoder}.values():
        _refuse_batch_coupling(enc)
    positives = _default_positives(positives, queries)
    _check_positives(positives, queries.shape[0], keys.shape[0], forbid_self=False)
    towers = [(query_encoder, queries), (key_encoder, keys)]
    (hq, hk), states = _forward_without_graph(towers, chunk_size)
    after_first_pass = _rng_state(queries.device)
    hq.requires_grad_()
    hk.requires_grad_()
    q = F.normalize(hq, dim=1) if normalize else hq
    k = F.normalize(hk, dim=1) if normalize else hk
    qd, kd = q.detach(), k.detach()
    block = score_block_rows(max(keys.shape[0], queries.shape[0]), chunk_size, max_score_elements)
    loss, gq, gk = _blockwise_two_tower(qd, kd, positives, temperature, block)
    assert gq is not None and gk is not None  # need_grad: the gradients are there
    if symmetric:
        back = _inverse_permutation(positives, keys.shape[0])
        loss_back, gk_back, gq_back = _blockwise_two_tower(kd, qd, back, temperature, block)
        assert gq_back is not None and gk_back is not None
        loss, gq, gk = 0.5 * (loss + loss_back), 0.5 * (gq + gq_back), 0.5 * (gk + gk_back)
    torch.autograd.backward([q, k], [gq, gk])
    assert hq.grad is not None and hk.grad is not None  # leaves that q and k were computed from
    _replay_backward(towers, [hq.grad, hk.grad], states, chunk_size)
    _set_rng_state(queries.device, after_first_pass)
    return loss


def naive_accumulated_backward(
    encoder: nn.Module,
    inputs: Tensor,
    positives: Tensor,
    chunk_size: int,
    temperature: float = 0.05,
    normalize: bool = True,
    *,
    max_score_elements: int = DEFAULT_MAX_SCORE_ELEMENTS,
) -> NaiveLosses:
    """The common but inexact way: InfoNCE within each contiguous chunk, weighted by chunk length / B, summed.

    Every row's positive must lie in its own chunk (e.g. two views interleaved and an even ``chunk_size``).
    Negatives are only the chunk's rows, so the gradient is not that of the full-batch loss. Kept for comparison.
    """
    _check_positives(positives, inputs.shape[0], inputs.shape[0], forbid_self=True)
    total = inputs.shape[0]
    chunk_mean, outs = 0.0, []
    for start in range(0, total, chunk_size):
        stop = min(start + chunk_size, total)
        local = positives[start:stop] - start
        if bool(((local < 0) | (local >= stop - start)).any()):
            raise ValueError(f"naive accumulation: a positive of rows {start}..{stop - 1} lies outside their chunk")
        out = encoder(inputs[start:stop])
        loss = info_nce_loss(out, local, temperature, normalize) * ((stop - start) / total)
        loss.backward()
        chunk_mean += float(loss.detach())
        outs.append(out.detach())
    z = torch.cat(outs)
    z = F.normalize(z, dim=1) if normalize else z
    full, _ = _blockwise_loss_grad(
        z, positives, temperature, False, score_block_rows(total, chunk_size, max_score_elements)
    )
    return NaiveLosses(full=full, chunk_mean=chunk_mean)


def naive_accumulated_backward_two_tower(
    query_encoder: nn.Module,
    key_encoder: nn.Module,
    queries: Tensor,
    keys: Tensor,
    chunk_size: int,
    temperature: float = 0.05,
    normalize: bool = True,
    symmetric: bool = False,
    *,
    max_score_elements: int = DEFAULT_MAX_SCORE_ELEMENTS,
) -> NaiveLosses:
    """Naive two-tower accumulation with diagonal positives: query/key chunk i only see each other. For comparison."""
    if queries.shape[0] != keys.shape[0]:
        raise ValueError("naive two-tower accumulation needs as many keys as queries")
    total = queries.shape[0]
    chunk_mean, q_outs, k_outs = 0.0, [], []
    for start in range(0, total, chunk_size):
        stop = min(start + chunk_size, total)
        q, k = query_encoder(queries[start:stop]), key_encoder(keys[start:stop])
        loss = two_tower_info_nce_loss(q, k, None, temperature, normalize, symmetric) * ((stop - start) / total)
        loss.backward()
        chunk_mean += float(loss.detach())
        q_outs.append(q.detach())
        k_outs.append(k.detach())
    q, k = torch.cat(q_outs), torch.cat(k_outs)
    if normalize:
        q, k = F.normalize(q, dim=1), F.normalize(k, dim=1)
    diag = torch.arange(total, device=q.device)
    block = score_block_rows(total, chunk_size, max_score_elements)
    full, _, _ = _blockwise_two_tower(q, k, diag, temperature, block, need_grad=False)
    if symmetric:
        back, _, _ = _blockwise_two_tower(k, q, diag, temperature, block, need_grad=False)
        full = 0.5 * (full + back)
    return NaiveLosses(full=full, chunk_mean=chunk_mean)


def _default_positives(positives: Tensor | None, queries: Tensor) -> Tensor:
    if positives is None:
        return torch.arange(queries.shape[0], device=queries.device)
    return positives


def _check_positives(positives: Tensor, rows: int, cols: int, forbid_self: bool) -> None:
    if positives.dtype != torch.long or positives.shape != (rows,):
        raise ValueError(
            f"positives must be a long tensor of shape ({rows},), got {positives.dtype} {tuple(positives.shape)}"
        )
    if rows == 0:
        raise ValueError("empty batch")
    if bool(((positives < 0) | (positives >= cols)).any()):
        raise ValueError(f"positives must index 0..{cols - 1}")
    if forbid_self and bool((positives == torch.arange(rows, device=positives.device)).any()):
        raise ValueError("a row cannot be its own positive: its self-similarity is masked out")


def _inverse_permutation(positives: Tensor, keys: int) -> Tensor:
    """For the key→query direction: key j's positive query. Only defined when ``positives`` is a permutation."""
    if positives.shape[0] != keys or torch.unique(positives).numel() != keys:
        raise ValueError("symmetric loss needs positives to be a permutation of the keys")
    back = torch.empty_like(positives)
    back[positives] = torch.arange(keys, device=positives.device)
    return back


def _refuse_batch_coupling(encoder: nn.Module) -> None:
    """BatchNorm with batch statistics mixes rows across chunks, so no chunked method can reproduce its gradient."""
    for name, module in encoder.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and (module.training or not module.track_running_stats):
            raise ValueError(
                f"encoder module {name or type(module).__name__!r} is BatchNorm using batch statistics: "
                "it couples the samples of a batch, so chunked accumulation cannot be exact "
                "(use LayerNorm/GroupNorm, or put it in eval mode with running statistics)"
            )


def _rng_state(device: torch.device) -> tuple[Tensor, Tensor | None]:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _set_rng_state(device: torch.device, state: tuple[Tensor, Tensor | None]) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def _chunk_order(towers: list[tuple[nn.Module, Tensor]], chunk_size: int) -> list[tuple[int, int, int]]:
    """(tower, start, stop) in the order both passes visit them: chunk i of every tower before chunk i+1."""
    longest = max(x.shape[0] for _, x in towers)
    order = []
    for start in range(0, longest, chunk_size):
        for t, (_, x) in enumerate(towers):
            if start < x.shape[0]:
                order.append((t, start, min(start + chunk_size, x.shape[0])))
    return order


def _forward_without_graph(
    towers: list[tuple[nn.Module, Tensor]], chunk_size: int
) -> tuple[list[Tensor], list[tuple[Tensor, Tensor | None]]]:
    if chunk_size < 1:
        raise ValueError("chunk_size must be >= 1")
    outs: list[list[Tensor]] = [[] for _ in towers]
    states: list[tuple[Tensor, Tensor | None]] = []
    with torch.no_grad():
        for t, start, stop in _chunk_order(towers, chunk_size):
            encoder, x = towers[t]
            states.append(_rng_state(x.device))
            out = encoder(x[start:stop])
            if out.dim() != 2:
                raise ValueError(f"encoder must return (rows, dim) representations, got shape {tuple(out.shape)}")
            outs[t].append(out)
    return [torch.cat(o) for o in outs], states


def _replay_backward(
    towers: list[tuple[nn.Module, Tensor]],
    grads: list[Tensor],
    states: list[tuple[Tensor, Tensor | None]],
    chunk_size: int,
) -> None:
    for (t, start, stop), state in zip(_chunk_order(towers, chunk_size), states):
        encoder, x = towers[t]
        _set_rng_state(x.device, state)
        out = encoder(x[start:stop])
        torch.sum(out * grads[t][start:stop]).backward()


def _blockwise_loss_grad(
    z: Tensor, positives: Tensor, temperature: float, need_grad: bool, block: int
) -> tuple[float, Tensor | None]:
    """Single-encoder InfoNCE (mean over rows, diagonal masked) and its gradient w.r.t. z, one row block at a time.

    Each sample enters as an anchor (its row block) and as a candidate (a column of every block), so the gradient
    collects both roles: G_i = Σ_j (p_ij + p_ji − 2 t_ij) z_j / (Bτ) for a symmetric pairing.
    """
    total = z.shape[0]
    z = z.detach().requires_grad_(need_grad)
    minus_inf = torch.tensor(float("-inf"), dtype=z.dtype, device=z.device)
    loss = 0.0
    with torch.set_grad_enabled(need_grad):
        for start in range(0, total, block):
            stop = min(start + block, total)
            scores = (z[start:stop] / temperature) @ z.T  # scaling the block, not the scores: one copy fewer
            rows = torch.arange(stop - start, device=z.device)
            scores = scores.index_put((rows, rows + start), minus_inf)
            part = F.cross_entropy(scores, positives[start:stop], reduction="sum") / total
            if need_grad:
                part.backward()
            loss += float(part.detach())
    return loss, z.grad


def _blockwise_two_tower(
    q: Tensor, k: Tensor, positives: Tensor, temperature: float, block: int, need_grad: bool = True
) -> tuple[float, Tensor | None, Tensor | None]:
    """Query→key InfoNCE (mean over queries) and its gradients w.r.t. q and k, in blocks of queries."""
    q = q.detach().requires_grad_(need_grad)
    k = k.detach().requires_grad_(need_grad)
    total = q.shape[0]
    loss = 0.0
    with torch.set_grad_enabled(need_grad):
        for start in range(0, total, block):
            stop = min(start + block, total)
            part = F.cross_entropy((q[start:stop] / temperature) @ k.T, positives[start:stop], reduction="sum") / total
            if need_grad:
                part.backward()
            loss += float(part.detach())
    return loss, q.grad, k.grad
