"""Exponentiated-gradient (EG) step-size adaptation, shaped like ``torch.optim`` optimizers.

EG is gradient descent on ``log x`` for a positive variable ``x``: ``x ← x ⊙ exp(−η ∂L/∂x)``.
Applied to a learning-rate multiplier ν, whose hypergradient is ``∂L(θ_t)/∂ν_t = −lr · g_{t−1} ⊙ g_t``,
it gives ``ν ← ν ⊙ exp(γ g_{t−1} ⊙ g_t)`` (γ absorbs lr): agreeing consecutive gradients raise the
rate, sign flips lower it. ``EGFunnel`` is the fuller form of Amid, Anil, Fifty & Warmuth (2022) with a
scale ``s`` and per-coordinate gains ``p``; ``HypergradientSGD`` is the additive rule of Baydin et al.
(2018), kept here as the baseline the EG rules are compared against.
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import Tensor
from torch.optim import Optimizer

GRANULARITIES = ("coordinate", "layer", "global")
SCALES = ("layer", "global")


def eg_step_(tensor: Tensor, grad: Tensor, lr: float) -> Tensor:
    """In place ``tensor ← tensor ⊙ exp(−lr · grad)``: descent on ``log tensor``, so signs never change.

    Meant for non-negative tensors: positive entries stay positive and zeros stay zero.
    """
    return tensor.mul_(torch.exp(grad * -lr))


def _grads(params: list[Tensor], name: str) -> list[Tensor]:
    """The parameters that have a gradient; sparse gradients are refused (every update here is dense)."""
    out = []
    for p in params:
        if p.grad is None:
            continue
        if p.grad.is_sparse:
            raise RuntimeError(f"{name} does not support sparse gradients")
        out.append(p)
    return out


def _check_positive(**values: float) -> None:
    for key, value in values.items():
        if not value > 0.0:
            raise ValueError(f"{key} must be > 0, got {value}")


def _check_non_negative(**values: float) -> None:
    for key, value in values.items():
        if not value >= 0.0:
            raise ValueError(f"{key} must be >= 0, got {value}")


class EGStepSize(Optimizer):
    """SGD whose rate multiplier ν is meta-learned by EG: ``ν ← ν ⊙ exp(γ g_{t−1} ⊙ g_t)``, then ``θ ← θ − lr ν ⊙ g``.

    ``granularity`` picks what shares one ν: each coordinate, each tensor (``layer``: the product becomes the
    inner product ``<g_{t−1}, g_t>`` of that tensor) or the whole param group (``global``: the inner product over
    all of its tensors). ν is stored as ``log ν`` because the exponent is not scale invariant: each step's
    exponent is clamped to ``±max_log_step`` and ``log ν`` to ``±max_log_nu``, so a burst of large gradients
    cannot overflow it. ν is updated before θ, as in the derivation. State per parameter: ``prev_grad``,
    ``log_nu`` and ``nu`` (a copy of ν, 0-dim unless ``coordinate``).
    """

    def __init__(self, params: Iterable, lr: float = 1e-2, gamma: float = 1.0, granularity: str = "coordinate",
                 max_log_step: float = 0.5, max_log_nu: float = 20.0):
        _check_positive(lr=lr, max_log_step=max_log_step, max_log_nu=max_log_nu)
        _check_non_negative(gamma=gamma)
        if granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
        defaults = dict(lr=lr, gamma=gamma, granularity=granularity, max_log_step=max_log_step,
                        max_log_nu=max_log_nu)
        super().__init__(params, defaults)

    def _state(self, p: Tensor, coordinate: bool) -> dict:
        state = self.state[p]
        if not state:
            shape = p.shape if coordinate else ()
            state["prev_grad"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["log_nu"] = torch.zeros(shape, dtype=p.dtype, device=p.device)
            state["nu"] = torch.ones(shape, dtype=p.dtype, device=p.device)
        return state

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = _grads(group["params"], "EGStepSize")
            if not params:
                continue
            gamma, cap, bound = group["gamma"], group["max_log_step"], group["max_log_nu"]
            lr, granularity = group["lr"], group["granularity"]
            coordinate = granularity == "coordinate"
            states = [self._state(p, coordinate) for p in params]
            if granularity == "global":
                dot = sum(torch.vdot(s["prev_grad"].flatten(), p.grad.flatten()) for p, s in zip(params, states))
                shared = (states[0]["log_nu"] + (gamma * dot).clamp_(-cap, cap)).clamp_(-bound, bound)
            for p, state in zip(params, states):
                g, prev, log_nu, nu = p.grad, state["prev_grad"], state["log_nu"], state["nu"]
                if coordinate:
                    if gamma > 0:  # clamp(g_{t-1} g_t, ±cap/γ), scaled by γ inside add_: one pass fewer
                        prev.mul_(g).clamp_(-cap / gamma, cap / gamma)
                        log_nu.add_(prev, alpha=gamma).clamp_(-bound, bound)
                        torch.exp(log_nu, out=nu)
                else:
                    if granularity == "layer":
                        log_nu.add_((gamma * torch.vdot(prev.flatten(), g.flatten())).clamp_(-cap, cap))
                        log_nu.clamp_(-bound, bound)
                    else:
                        log_nu.copy_(shared)
                    torch.exp(log_nu, out=nu)
                p.addcmul_(g, nu, value=-lr)
                prev.copy_(g)
        return loss


class EGFunnel(Optimizer):
    """Momentum SGD with an EG-adapted scale ``s`` and EG-adapted per-coordinate gains ``p`` (Amid et al., 2022).

    One step with gradient ``g``, EMA of gradients ``m`` and velocity ``v``::

        p ← p ⊙ exp(γ_p m ⊙ g)          (m still the EMA through the previous step)
        m ← β m + (1 − β) g
        s ← s · exp(γ_s <v, g>)          (v the velocity that made the last move, so this is EG on ∂L/∂s)
        v ← μ v + lr (p ⊙ g)
        θ ← θ − s v

    ``scale="global"`` shares ``s`` over the param group (the paper's global scale); ``"layer"`` keeps one per
    tensor. Exponents are clamped to ``±max_log_step`` and ``log p``, ``log s`` to ``±max_log_gain`` for the same
    reason as in ``EGStepSize``. With ``gamma_p = gamma_s = 0`` it is ``torch.optim.SGD(lr, momentum)``.
    State per parameter: ``m``, ``v``, ``log_p``, ``p``, ``log_s``, ``s`` (0-dim).
    """

    def __init__(self, params: Iterable, lr: float = 1e-2, momentum: float = 0.9, gamma_p: float = 1.0,
                 gamma_s: float = 1.0, beta: float = 0.9, scale: str = "global", max_log_step: float = 0.5,
                 max_log_gain: float = 20.0):
        _check_positive(lr=lr, max_log_step=max_log_step, max_log_gain=max_log_gain)
        _check_non_negative(gamma_p=gamma_p, gamma_s=gamma_s)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"beta must be in [0, 1), got {beta}")
        if scale not in SCALES:
            raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
        defaults = dict(lr=lr, momentum=momentum, gamma_p=gamma_p, gamma_s=gamma_s, beta=beta, scale=scale,
                        max_log_step=max_log_step, max_log_gain=max_log_gain)
        super().__init__(params, defaults)

    def _state(self, p: Tensor) -> dict:
        state = self.state[p]
        if not state:
            state["m"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["v"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["log_p"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["p"] = torch.ones_like(p, memory_format=torch.preserve_format)
            state["log_s"] = torch.zeros((), dtype=p.dtype, device=p.device)
            state["s"] = torch.ones((), dtype=p.dtype, device=p.device)
        return state

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = _grads(group["params"], "EGFunnel")
            if not params:
                continue
            cap, bound = group["max_log_step"], group["max_log_gain"]
            states = [self._state(p) for p in params]
            dots = [torch.vdot(s["v"].flatten(), p.grad.flatten()) for p, s in zip(params, states)]
            if group["scale"] == "global":
                shared = (states[0]["log_s"] + (group["gamma_s"] * sum(dots)).clamp_(-cap, cap))
                shared.clamp_(-bound, bound)
            for p, state, dot in zip(params, states, dots):
                g, gamma_p = p.grad, group["gamma_p"]
                if gamma_p > 0:  # m is read before it is refreshed: the gains use m_{t-1} ⊙ g_t
                    gain_step = torch.mul(state["m"], g).clamp_(-cap / gamma_p, cap / gamma_p)
                    state["log_p"].add_(gain_step, alpha=gamma_p).clamp_(-bound, bound)
                    torch.exp(state["log_p"], out=state["p"])
                state["m"].lerp_(g, 1.0 - group["beta"])
                if group["scale"] == "global":
                    state["log_s"].copy_(shared)
                else:
                    state["log_s"].add_((group["gamma_s"] * dot).clamp_(-cap, cap)).clamp_(-bound, bound)
                torch.exp(state["log_s"], out=state["s"])
                state["v"].mul_(group["momentum"]).addcmul_(state["p"], g, value=group["lr"])
                p.addcmul_(state["v"], state["s"], value=-1.0)
        return loss


class HypergradientSGD(Optimizer):
    """SGD-HD (Baydin et al., 2018): ``α ← α + β <g_{t−1}, g_t>`` over the param group, then ``θ ← θ − α g``.

    α lives in ``group["lr"]`` so it is visible to callers and saved by ``state_dict``. It is floored at 0 (a
    negative rate would climb the loss; at 0 the iterate stops, consecutive gradients agree and α grows
    again), the one departure from the paper. State per parameter: ``prev_grad``.
    """

    def __init__(self, params: Iterable, lr: float = 1e-2, beta: float = 1e-3):
        _check_positive(lr=lr)
        _check_non_negative(beta=beta)
        super().__init__(params, dict(lr=lr, beta=beta))

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = _grads(group["params"], "HypergradientSGD")
            if not params:
                continue
            for p in params:
                if not self.state[p]:
                    self.state[p]["prev_grad"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            dot = sum(torch.vdot(self.state[p]["prev_grad"].flatten(), p.grad.flatten()) for p in params)
            group["lr"] = max(group["lr"] + group["beta"] * float(dot), 0.0)
            for p in params:
                p.add_(p.grad, alpha=-group["lr"])
                self.state[p]["prev_grad"].copy_(p.grad)
        return loss
