"""Gradient accumulation folded into the momentum (docs/techniques.md#momentum_accumulation): no extra gradient buffer.

With EMA momentum m_t = β m_{t-1} + (1-β) g_t, accumulating k micro-gradients and then stepping is exactly

    m_t = [(β-1)·χ_{t-1} + 1]·m_{t-1} + (1-β)/k · g_t,     θ_t = θ_{t-1} - χ_t·α·m_t,

with χ_t = 1 when the micro-step counter t (from 1) is a multiple of k. So the momentum itself is the accumulator:
it decays only on the first micro-step after an update, takes g/k on every micro-step, and the parameters move only
every k-th ``step()``. Call ``step()`` once per micro-batch and free the gradients after it
(``zero_grad(set_to_none=True)``): nothing gradient-sized has to live across micro-steps.

The micro-step and update counters are shared by all parameters of a group (χ is a property of the window), so they
live in the param group: ``group["micro_step"]`` and ``group["updates"]``; they travel with ``state_dict()``.
``group["lr"]`` is read only on update steps: step an LR scheduler once per update (when ``updates`` changed), not
once per micro-step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch.optim import Optimizer


def beta_tilde(beta: float, k: int) -> float:
    """The stock-optimizer substitute β̃ = 1 - (1-β)/k: per micro-step it adds (1-β)/k·g, as the exact rule does."""
    return 1.0 - (1.0 - beta) / k


def state_bytes(optimizer: Optimizer) -> int:
    """Bytes held by the tensors of ``optimizer.state`` (what an optimizer keeps between steps)."""
    return sum(
        t.numel() * t.element_size()
        for s in optimizer.state.values()
        for t in s.values()
        if isinstance(t, torch.Tensor)
    )


def _check_common(lr: float, accum_steps: int, weight_decay: float) -> None:
    if not lr >= 0.0:
        raise ValueError(f"lr must be >= 0, got {lr}")
    if isinstance(accum_steps, bool) or not isinstance(accum_steps, int) or accum_steps < 1:
        raise ValueError(f"accum_steps must be an int >= 1, got {accum_steps!r}")
    if not weight_decay >= 0.0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")


class _AccumOptimizer(Optimizer):
    """Shared bookkeeping: the χ counters per group and the split of parameters by state and gradient."""

    _state_keys: tuple[str, ...] = ()

    def __init__(self, params, defaults: dict) -> None:
        super().__init__(params, {**defaults, "micro_step": 0, "updates": 0})

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        for p in self.param_groups[-1]["params"]:
            if p.is_complex():
                raise ValueError("complex parameters are not supported; pass torch.view_as_real(p) instead")

    @staticmethod
    def _advance(group: dict) -> tuple[bool, bool]:
        """Count one micro-step; return (first micro-step of a window, i.e. χ_{t-1}=1; update step, i.e. χ_t=1)."""
        k = group["accum_steps"]
        first = group["micro_step"] % k == 0
        group["micro_step"] += 1
        update = group["micro_step"] % k == 0
        if update:
            group["updates"] += 1
        return first, update

    def _split(self, group: dict) -> tuple[list, list[list], list, list]:
        """(params with state, their state lists, grads present now, the state lists of those params).

        State is created on a parameter's first gradient. A parameter with state but no gradient this micro-step
        still decays and moves, i.e. it is treated as having a zero micro-gradient.
        """
        held: list[torch.Tensor] = []
        grads: list[torch.Tensor] = []
        held_state: list[list[torch.Tensor]] = [[] for _ in self._state_keys]
        grad_state: list[list[torch.Tensor]] = [[] for _ in self._state_keys]
        for p in group["params"]:
            state = self.state.get(p)
            if p.grad is not None:
                if p.grad.is_sparse:
                    raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
                if not state:
                    state = self.state[p]
                    for key in self._state_keys:
                        state[key] = torch.zeros_like(p, memory_format=torch.preserve_format)
                grads.append(p.grad)
                for lst, key in zip(grad_state, self._state_keys):
                    lst.append(state[key])
            if state:
                held.append(p)
                for lst, key in zip(held_state, self._state_keys):
                    lst.append(state[key])
        return held, held_state, grads, grad_state

    def _loss(self, closure: Callable[[], torch.Tensor] | None) -> torch.Tensor | None:
        """The closure's loss. Optimizer.step's overloads say a closure returns a float; here, as in torch's own
        optimizers, it returns the loss tensor (hence the ignored override on each ``step``)."""
        if closure is None:
            return None
        with torch.enable_grad():
            return closure()


class AccumSGDM(_AccumOptimizer):
    """EMA-form SGD with momentum whose buffer also accumulates ``accum_steps`` micro-gradients.

    Parameters move on every ``accum_steps``-th call of ``step()`` only; ``accum_steps=1`` is plain EMA SGDM
    (m = βm + (1-β)g, θ -= lr·m). That is not ``torch.optim.SGD``'s form, whose first buffer is g undamped.
    ``weight_decay`` is coupled (L2: λθ joins the averaged gradient) and added on update steps only, where θ is the
    value it had during the whole window, so it matches explicit accumulation exactly.
    State per parameter: ``exp_avg``.
    """

    _state_keys = ("exp_avg",)

    def __init__(
        self, params: Iterable, lr: float, momentum: float = 0.9, accum_steps: int = 1, weight_decay: float = 0.0
    ) -> None:
        _check_common(lr, accum_steps, weight_decay)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        super().__init__(params, dict(lr=lr, momentum=momentum, accum_steps=accum_steps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None):  # type: ignore[override]  # see _loss
        """One micro-step: fold the current gradients into the momentum; move parameters when χ_t = 1."""
        loss = self._loss(closure)
        for group in self.param_groups:
            first, update = self._advance(group)
            params, (ms,), grads, (grad_ms,) = self._split(group)
            if not params:
                continue
            beta, k = group["momentum"], group["accum_steps"]
            if first:
                torch._foreach_mul_(ms, beta)
            if grads:
                torch._foreach_add_(grad_ms, grads, alpha=(1.0 - beta) / k)
            if update:
                if group["weight_decay"]:
                    torch._foreach_add_(ms, params, alpha=(1.0 - beta) * group["weight_decay"])
                torch._foreach_add_(params, ms, alpha=-group["lr"])
        return loss


class AccumAdam(_AccumOptimizer):
    """Adam whose moment estimates also accumulate ``accum_steps`` micro-gradients
    (docs/techniques.md#momentum_accumulation).

    m follows the exact rule with β1 (so it equals explicit accumulation's m); v follows it with β2 and g², i.e. it
    averages squared micro-gradients, hence v ≥ explicit accumulation's v (mean(g²) ≥ mean(g)²): an approximation.
    Bias corrections count updates (t/k); decoupled weight decay θ ← θ(1 - lr·λ) is applied on update steps only.
    ``accum_steps=1`` is ``torch.optim.AdamW`` with the same weight decay. State per parameter: ``exp_avg``,
    ``exp_avg_sq``.
    """

    _state_keys = ("exp_avg", "exp_avg_sq")

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        accum_steps: int = 1,
        weight_decay: float = 0.0,
    ) -> None:
        _check_common(lr, accum_steps, weight_decay)
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        if not eps >= 0.0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        super().__init__(
            params, dict(lr=lr, betas=tuple(betas), eps=eps, accum_steps=accum_steps, weight_decay=weight_decay)
        )

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None):  # type: ignore[override]  # see _loss
        """One micro-step: fold g and g² into the moments; apply the bias-corrected update when χ_t = 1."""
        loss = self._loss(closure)
        for group in self.param_groups:
            first, update = self._advance(group)
            params, (ms, vs), grads, (grad_ms, grad_vs) = self._split(group)
            if not params:
                continue
            (beta1, beta2), k = group["betas"], group["accum_steps"]
            if first:
                torch._foreach_mul_(ms, beta1)
                torch._foreach_mul_(vs, beta2)
            if grads:
                torch._foreach_add_(grad_ms, grads, alpha=(1.0 - beta1) / k)
                torch._foreach_addcmul_(grad_vs, grads, grads, value=(1.0 - beta2) / k)
            if update:
                lr, t = group["lr"], group["updates"]
                if group["weight_decay"]:
                    torch._foreach_mul_(params, 1.0 - lr * group["weight_decay"])
                # m̂/(√v̂ + ε) = s·m / (bc1·(√v + ε·s)) with s = √(1-β2^t): one pass fewer than dividing √v by s.
                s = math.sqrt(1.0 - beta2**t)
                denom = torch._foreach_sqrt(vs)
                torch._foreach_add_(denom, group["eps"] * s)
                torch._foreach_addcdiv_(params, ms, denom, value=-lr * s / (1.0 - beta1**t))
        return loss
