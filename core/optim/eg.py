"""Exponentiated-gradient (EG) step-size adaptation, shaped like ``torch.optim`` optimizers.

EG is gradient descent on ``log x`` for a positive variable ``x``: ``x ← x ⊙ exp(−η ∂L/∂x)``.
Applied to a learning-rate multiplier ν, whose hypergradient is ``∂L(θ_t)/∂ν_t = −lr · g_{t−1} ⊙ g_t``,
it gives ``ν ← ν ⊙ exp(γ g_{t−1} ⊙ g_t)`` (γ absorbs lr): agreeing consecutive gradients raise the
rate, sign flips lower it. ``EGFunnel`` is the fuller form of Amid, Anil, Fifty & Warmuth (2022) with a
scale ``s`` and per-coordinate gains ``p``; ``HypergradientSGD`` is the additive rule of Baydin et al.
(2018), kept here as the baseline the EG rules are compared against.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterable

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
        g = p.grad
        if g is None:
            continue
        if g.is_sparse:
            raise RuntimeError(f"{name} does not support sparse gradients")
        out.append(p)
    return out


def _grad(p: Tensor) -> Tensor:
    """The gradient of a parameter ``_grads`` kept: it has one (``Tensor.grad`` is annotated Optional)."""
    g = p.grad
    assert g is not None
    return g


def _check_positive(**values: float) -> None:
    for key, value in values.items():
        if not value > 0.0:
            raise ValueError(f"{key} must be > 0, got {value}")


def _check_non_negative(**values: float) -> None:
    for key, value in values.items():
        if not value >= 0.0:
            raise ValueError(f"{key} must be >= 0, got {value}")


def _check_clamps(**values: float | None) -> None:
    """A safety clamp is off (``None``) or a positive bound."""
    _check_positive(**{key: value for key, value in values.items() if value is not None})


def _bound(value: float | None) -> float:
    """A clamp's bound, infinite when the clamp is off."""
    return math.inf if value is None else value


# Speed. An EG step makes 7-10 elementwise passes over four to six buffers per parameter where SGD makes one,
# and on small tensors each pass is mostly fixed per-call cost (~1-2 us). So the state of a group's small
# parameters lives in one flat buffer per key (``_Flat``), ``state[p][key]`` being a view of it, and each pass is
# one call over all of them; the gradients are gathered into a flat buffer once per step to match. The 0-dim ν
# (or s) of all parameters likewise live in one vector. Big tensors keep their own buffers: for them the passes
# are bound by memory traffic, which gathering would only add to (cutting them into cache-sized blocks was tried
# and measured no faster on a CPU). The arithmetic is the per-tensor loop's, element for element, except that a
# ``global`` inner product adds up its terms in another order.
_FLAT_BYTES = 1 << 17


class _Flat:
    """The state of several parameters kept as one buffer per key, ``state[p][key]`` being views of it.

    ``full`` keys hold tensors shaped like the parameters, laid end to end in one flat buffer, for the parameters
    in ``members`` (small, contiguous, one dtype and device); ``scalar`` keys hold 0-dim tensors, one vector per
    key. ``rest`` lists the parameters left with separate tensors. The state reads, saves and loads exactly as
    separate tensors would; anything that replaces a member's state tensor (``load_state_dict``, a change in the
    set of parameters with gradients) makes ``matches`` fail, and the buffers are built again from the current
    values.
    """

    def __init__(
        self, group: dict, params: list[Tensor], states: list[dict], full: tuple[str, ...], scalar: tuple[str, ...]
    ):
        self.group, self.params, self.keys = group, list(params), full + scalar
        self.members = self._members(params, states, full, scalar)
        chosen = set(self.members)
        self.rest = [i for i in range(len(params)) if i not in chosen]
        self.flat: dict[str, Tensor] = {}
        self.views: dict[str, list[Tensor]] = {}
        self.grad: Tensor | None = None  # the gathered gradients, with ``full`` keys
        self.grad_views: list[Tensor] = []
        self.grad_segments: list[Tensor] = []
        self.segments: dict[str, list[Tensor]] = {}
        self._states: list[dict] = []
        self._entries: tuple[list[dict], list[str], list[Tensor]] = ([], [], [])
        if not self.members:
            return
        ps, ss = [params[i] for i in self.members], [states[i] for i in self.members]
        ref = ps[0]
        new = lambda n: torch.empty(n, dtype=ref.dtype, device=ref.device)  # noqa: E731
        offsets = [0]
        for p in ps:
            offsets.append(offsets[-1] + p.numel())
        segments = lambda buf: [buf.narrow(0, o, p.numel()) for o, p in zip(offsets, ps)]  # noqa: E731
        for key in full:
            self.flat[key] = new(offsets[-1])
            self.segments[key] = segments(self.flat[key])
            self.views[key] = [seg.view(p.shape) for seg, p in zip(self.segments[key], ps)]
        for key in scalar:
            self.flat[key] = new(len(ps))
            self.views[key] = [self.flat[key].select(0, i) for i in range(len(ps))]
        for key in self.keys:
            torch._foreach_copy_(self.views[key], [s[key] for s in ss])
            for s, view in zip(ss, self.views[key]):
                s[key] = view
        # what matches() checks: each member's state dict, and each state tensor in it, is still ours
        self._states = ss
        self._entries = (
            [s for key in self.keys for s in ss],
            [key for key in self.keys for _ in ss],
            [v for key in self.keys for v in self.views[key]],
        )
        if full:
            self.grad = new(offsets[-1])
            self.grad_segments = segments(self.grad)
            self.grad_views = [seg.view(p.shape) for seg, p in zip(self.grad_segments, ps)]

    @staticmethod
    def _members(params: list[Tensor], states: list[dict], full: tuple[str, ...], scalar: tuple[str, ...]):
        if full:
            fits = [
                i
                for i, (p, s) in enumerate(zip(params, states))
                if p.numel() * p.element_size() <= _FLAT_BYTES
                and p.is_contiguous()
                and all(s[key].shape == p.shape for key in full)
            ]
        else:
            fits = [i for i, s in enumerate(states) if all(s[key].dim() == 0 for key in scalar)]
        if fits:
            ref = params[fits[0]]
            fits = [i for i in fits if params[i].dtype == ref.dtype and params[i].device == ref.device]
        return fits if len(fits) > 1 else []

    def matches(self, group: dict, params: list[Tensor], states: list[dict]) -> bool:
        if self.group is not group or len(params) != len(self.params) or any(map(operator.is_not, params, self.params)):
            return False
        dicts, keys, views = self._entries
        return not (
            any(map(operator.is_not, [states[i] for i in self.members], self._states))
            or any(map(operator.is_not, map(dict.get, dicts, keys), views))
        )


def _flat_state(
    opt: Optimizer,
    group: dict,
    tag: str,
    params: list[Tensor],
    states: list[dict],
    full: tuple[str, ...] = (),
    scalar: tuple[str, ...] = (),
) -> _Flat:
    """The group's flat state for ``params`` under ``tag``, built (again) unless the current one still holds."""
    plans = opt.__dict__.setdefault("_flat_state", {})  # not in __getstate__: copies and pickles rebuild it
    key = (id(group), tag)
    plan = plans.get(key)
    if plan is None or not plan.matches(group, params, states):
        if len(plans) >= 4 * len(opt.param_groups):  # forget groups that are gone (load_state_dict replaces them)
            live = {id(g) for g in opt.param_groups}
            for stale in [k for k in plans if k[0] not in live]:
                del plans[stale]
        plan = plans[key] = _Flat(group, params, states, full, scalar)
    return plan


def _gather(plan: _Flat, grads: list[Tensor]) -> None:
    """Copy the plan's members' gradients into its gradient buffer, laid out like its flat state."""
    if plan.members:
        torch._foreach_copy_(plan.grad_views, [grads[i] for i in plan.members])


def _dots(
    a: list[Tensor], b: list[Tensor], plan: _Flat | None = None, key: str = "", total: bool = False
) -> list[Tensor]:
    """``<a_i, b_i>`` for each pair, as 0-dim tensors; with ``total``, terms that sum to ``Σ_i <a_i, b_i>``.

    With ``plan``, whose full ``key`` holds the members' ``a_i`` and whose gradient buffer holds their ``b_i``
    (``_gather``), the members' products are taken on its 1-D segments, or for ``total`` in one product of the
    flat buffers (the same sum, added up in another order).
    """
    if plan is None or not plan.members:
        return [torch.vdot(x.flatten(), y.flatten()) for x, y in zip(a, b)]
    if total:
        assert plan.grad is not None  # a plan with full keys gathers the gradients
        return [torch.vdot(plan.flat[key], plan.grad)] + [torch.vdot(a[i].flatten(), b[i].flatten()) for i in plan.rest]
    dots: list[Tensor] = [None] * len(a)  # type: ignore[list-item]
    for i, x, y in zip(plan.members, plan.segments[key], plan.grad_segments):
        dots[i] = torch.vdot(x, y)
    for i in plan.rest:
        dots[i] = torch.vdot(a[i].flatten(), b[i].flatten())
    return dots


def _eg_0dim_(
    log_values: list[Tensor],
    values: list[Tensor],
    dots: list[Tensor],
    shared: bool,
    gamma: float,
    cap: float,
    bound: float,
    plan: _Flat,
    keys: tuple[str, str],
    base2: bool = False,
) -> None:
    """EG on 0-dim quantities: ``log x ← clamp(log x + clamp(γ dot, ±cap), ±bound)``, ``x ← exp(log x)``.

    Per tensor, or, if ``shared``, one ``log x`` moved by ``γ Σ dots`` and copied to every tensor (``dots`` then
    need only add up to the total). The members of ``plan`` have their ``log x`` and ``x`` in one vector each
    (``keys``), updated in one call per operation. With ``base2`` the logs are ``log2 x`` (γ, cap and bound stay
    in nats). An infinite ``cap`` or ``bound`` (a clamp that is off) clamps nothing.
    """
    exp = torch.exp
    if base2:
        gamma, cap, bound, exp = gamma * _LOG2_E, cap * _LOG2_E, bound * _LOG2_E, torch.exp2
    if shared:
        dot = sum(dots[1:], dots[0])
        moved = (log_values[0] + (gamma * dot).clamp_(-cap, cap)).clamp_(-bound, bound)
    if plan.members:
        log_vec, vec = plan.flat[keys[0]], plan.flat[keys[1]]
        if shared:
            log_vec.copy_(moved)
        else:
            log_vec.add_((gamma * torch.stack([dots[i] for i in plan.members])).clamp_(-cap, cap))
            log_vec.clamp_(-bound, bound)
        exp(log_vec, out=vec)
    for i in plan.rest:
        if shared:
            log_values[i].copy_(moved)
        else:
            log_values[i].add_((gamma * dots[i]).clamp_(-cap, cap)).clamp_(-bound, bound)
        exp(log_values[i], out=values[i])


# torch.exp on a CPU tensor was measured at ~0.6 ns per float32 element, torch.exp2 at ~0.14 (both vectorized):
# exp(x) as exp2(x log2 e) costs one more pass but is 2.5-2.8x faster from ~10^4 elements on (float32 and float64),
# for a relative error of 1e-6 (float32) or 2e-15 (float64) at |x| <= 20. Below that size one call is cheaper,
# and on a GPU, where both are bound by memory traffic, so is the single pass.
_LOG2_E = 1.0 / math.log(2.0)
_EXP2_NUMEL = 1 << 13


def _exp(x: Tensor, out: Tensor) -> Tensor:
    """``out ← exp(x)``, by the faster route for the size."""
    if x.numel() < _EXP2_NUMEL or x.device.type != "cpu":
        return torch.exp(x, out=out)
    return torch.mul(x, _LOG2_E, out=out).exp2_()


def _log_rate_(g: Tensor, prev: Tensor, log2_nu: Tensor, nu: Tensor, gamma: float, cap: float, bound: float) -> None:
    """``log ν ← clamp(log ν + clamp(γ prev ⊙ g, ±cap), ±bound)``, ``ν ← exp(log ν)``, with ν's log kept in base 2
    (``ν = exp2(log2_nu)``: no pass to convert, see ``_exp``); ``prev`` is left as scratch. A clamp whose bound is
    infinite (off) is skipped."""
    prev.mul_(g)
    if cap < math.inf:
        prev.clamp_(-cap / gamma, cap / gamma)  # scaled by γ inside add_: one pass fewer
    log2_nu.add_(prev, alpha=gamma * _LOG2_E)
    if bound < math.inf:
        log2_nu.clamp_(-bound * _LOG2_E, bound * _LOG2_E)
    torch.exp2(log2_nu, out=nu)


# ``EGStepSize(fused=True)``: the tensors too big for the flat buffers (where the eager update is bound by memory
# traffic, up to seven passes per tensor) are updated by one function compiled with ``torch.compile``, once per
# granularity, that reads and writes each of their buffers once: for ``coordinate`` the whole per-tensor update, for
# ``layer``/``global`` the move and the copy to ``prev_grad`` (their inner products and ν are settled before, as in
# the eager path). The small tensors keep the eager path on the flat buffers: a compiled call costs tens of
# microseconds of guards and wrappers, more than a few passes over them (hence also ``_FUSED_NUMEL``). The
# hyperparameters reach it as one tensor, so a changing ``lr`` (a scheduler) does not recompile; a new set of
# big-tensor shapes does, up to torch._dynamo's recompile limit (``torch._dynamo.config.recompile_limit``), past
# which dynamo runs the same function uncompiled.
# The arithmetic is the eager path's, operation for operation, up to float rounding.
_COMPILED: dict[str, Callable] = {}
# Tensors from this many elements on go through the compiled update: a compiled call costs ~0.1-0.2 ms on a CPU
# (guards, wrappers), measured to outweigh the saved passes at 256 x 256 and to pay off at 1024 x 1024.
_FUSED_NUMEL = 1 << 18


def _big(params: list[Tensor], rest: list[int]) -> list[int]:
    """The indices in ``rest`` (tensors with their own state) big enough for the compiled update."""
    return [i for i in rest if params[i].numel() >= _FUSED_NUMEL]


def _fused_rate_move(
    hp: Tensor,
    adapt: bool,
    ps: list[Tensor],
    gs: list[Tensor],
    prevs: list[Tensor],
    log2_nus: list[Tensor],
    nus: list[Tensor],
) -> None:
    """``coordinate``, per tensor: ``_log_rate_``, then ``θ ← θ − lr ν ⊙ g`` and ``prev ← g``."""
    lr, gamma, cap, bound = hp[0], hp[1], hp[2], hp[3]
    for p, g, prev, log2_nu, nu in zip(ps, gs, prevs, log2_nus, nus):
        if adapt:
            step = (gamma * _LOG2_E) * (prev * g).clamp(-cap / gamma, cap / gamma)
            log_new = (log2_nu + step).clamp(-bound * _LOG2_E, bound * _LOG2_E)
            nu_new = torch.exp2(log_new)
            log2_nu.copy_(log_new)
            nu.copy_(nu_new)
        else:
            nu_new = nu
        p.copy_(p - lr * g * nu_new)
        prev.copy_(g)


def _fused_move(
    hp: Tensor, ps: list[Tensor], gs: list[Tensor], prevs: list[Tensor], nu: Tensor | list[Tensor], pos: tuple[int, ...]
) -> None:
    """``layer``/``global``, per tensor: ``θ ← θ − lr ν ⊙ g``, ``prev ← g``; ν is ``nu[pos[k]]`` of a vector (the
    group's shared one: passing its 0-dim views instead would alias inputs) or ``nu[k]`` of a list."""
    lr = hp[0]
    for k, (p, g, prev) in enumerate(zip(ps, gs, prevs)):
        p.copy_(p - lr * g * (nu[pos[k]] if isinstance(nu, Tensor) else nu[k]))
        prev.copy_(g)


_FUSED: dict[str, Callable[..., None]] = {"rate_move": _fused_rate_move, "move": _fused_move}


def _compiled(name: str) -> Callable:
    """The compiled form of ``_FUSED[name]``, compiled on first use (torch.compile itself is lazy as well)."""
    fn = _COMPILED.get(name)
    if fn is None:
        fn = _COMPILED[name] = torch.compile(_FUSED[name], dynamic=False)
    return fn


class EGStepSize(Optimizer):
    """SGD whose rate multiplier ν is meta-learned by EG: ``ν ← ν ⊙ exp(γ g_{t−1} ⊙ g_t)``, then ``θ ← θ − lr ν ⊙ g``.

    ``granularity`` picks what shares one ν: each coordinate, each tensor (``layer``: the product becomes the
    inner product ``<g_{t−1}, g_t>`` of that tensor) or the whole param group (``global``: the inner product over
    all of its tensors). With the default arguments this is the published rule exactly: ν_t = exp(γ Σ_{k≤t}
    g_{k−1} ⊙ g_k). Two safety clamps, both off by default (``None``), depart from it on purpose: each step's
    exponent is clamped to ``±max_log_step`` and ``log ν`` to ``±max_log_nu`` (both in nats), so a burst of large
    gradients (the exponent is not scale invariant) cannot overflow ν; without them ν may reach 0 or infinity as
    the rule says. ν is updated before θ, as in the derivation. State per parameter:
    ``prev_grad``, ``log2_nu`` (``log₂ ν``: ``exp2`` is the cheap exponential on a CPU) and ``nu`` (a copy of ν,
    0-dim unless ``coordinate``); for speed, those of small parameters (and every 0-dim ν) are views of buffers
    shared within the param group.

    ``fused=True`` (like ``torch.optim.Adam(fused=True)``) updates the tensors too big for the shared buffers by
    one ``torch.compile``'d function, one pass over their buffers instead of several: the same arithmetic and state,
    up to float rounding. Its first step with such tensors compiles it (seconds); new shapes compile it again.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-2,
        gamma: float = 1.0,
        granularity: str = "coordinate",
        max_log_step: float | None = None,
        max_log_nu: float | None = None,
        fused: bool = False,
    ):
        _check_positive(lr=lr)
        _check_clamps(max_log_step=max_log_step, max_log_nu=max_log_nu)
        _check_non_negative(gamma=gamma)
        if granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
        defaults = dict(
            lr=lr,
            gamma=gamma,
            granularity=granularity,
            max_log_step=max_log_step,
            max_log_nu=max_log_nu,
            fused=bool(fused),
        )
        super().__init__(params, defaults)

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("fused", False)
        for st in self.state.values():  # a state saved when ν's log was kept in nats
            if "log_nu" in st:
                st["log2_nu"] = st.pop("log_nu") * _LOG2_E

    def _hyper(self, group: dict, ref: Tensor) -> Tensor:
        """``[lr, γ, max_log_step, max_log_nu]`` as one tensor on ``ref``'s device, kept while they stay the same."""
        key = (
            group["lr"],
            group["gamma"],
            _bound(group["max_log_step"]),
            _bound(group["max_log_nu"]),
            ref.dtype,
            ref.device,
        )
        cache = self.__dict__.setdefault("_fused_hyper", {})  # not in __getstate__, like _flat_state
        held = cache.get(id(group))
        if held is None or held[0] != key:
            held = cache[id(group)] = (key, torch.tensor(key[:4], dtype=ref.dtype, device=ref.device))
        return held[1]

    def _state(self, p: Tensor, coordinate: bool) -> dict:
        state = self.state[p]
        if not state:
            shape = p.shape if coordinate else ()
            state["prev_grad"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["log2_nu"] = torch.zeros(shape, dtype=p.dtype, device=p.device)
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
            coordinate = group["granularity"] == "coordinate"
            states = [self._state(p, coordinate) for p in params]
            if coordinate:
                self._coordinate_step(group, params, states)
            else:
                self._tensor_rate_step(group, params, states)
        return loss

    def _coordinate_step(self, group: dict, params: list[Tensor], states: list[dict]) -> None:
        """``coordinate``: ν ⊙ exp(γ g_{t−1} ⊙ g_t) per coordinate, then the move; the small tensors in one pass over
        the group's flat buffers, the big ones by the compiled update when ``fused``, the rest tensor by tensor."""
        gamma, cap, bound = group["gamma"], _bound(group["max_log_step"]), _bound(group["max_log_nu"])
        lr = group["lr"]
        plan = _flat_state(self, group, "coordinate", params, states, full=("prev_grad", "log2_nu", "nu"))
        if plan.members:
            ps = [params[i] for i in plan.members]
            grads = [_grad(p) for p in ps]
            torch._foreach_copy_(plan.grad_views, grads)
            g, prev = plan.grad, plan.flat["prev_grad"]
            assert g is not None  # full keys: the gradients are gathered
            if gamma > 0:
                _log_rate_(g, prev, plan.flat["log2_nu"], plan.flat["nu"], gamma, cap, bound)
            torch._foreach_addcmul_(ps, grads, plan.views["nu"], value=-lr)
            prev.copy_(g)
        rest = plan.rest
        if group.get("fused", False):
            big = _big(params, rest)
            if big:
                _compiled("rate_move")(
                    self._hyper(group, params[0]),
                    gamma > 0,
                    [params[i] for i in big],
                    [params[i].grad for i in big],
                    *([states[i][k] for i in big] for k in ("prev_grad", "log2_nu", "nu")),
                )
                rest = [i for i in rest if i not in big]
        for i in rest:
            p, s = params[i], states[i]
            g = _grad(p)
            if gamma > 0:
                _log_rate_(g, s["prev_grad"], s["log2_nu"], s["nu"], gamma, cap, bound)
            p.addcmul_(g, s["nu"], value=-lr)
            s["prev_grad"].copy_(g)

    def _tensor_rate_step(self, group: dict, params: list[Tensor], states: list[dict]) -> None:
        """``layer``/``global``: every inner product <g_{t−1}, g_t> first (before any ``prev_grad`` is overwritten),
        then the 0-dim ν per tensor or shared by the group, then the move (``_move_with_tensor_rate``)."""
        prevs, grads = [s["prev_grad"] for s in states], [_grad(p) for p in params]
        flat = _flat_state(self, group, "prev", params, states, full=("prev_grad",))
        _gather(flat, grads)
        shared = group["granularity"] == "global"
        dots = _dots(prevs, grads, flat, "prev_grad", shared)  # all before any prev_grad is overwritten
        plan = _flat_state(self, group, "nu", params, states, scalar=("log2_nu", "nu"))
        nus = [s["nu"] for s in states]
        _eg_0dim_(
            [s["log2_nu"] for s in states],
            nus,
            dots,
            shared,
            group["gamma"],
            _bound(group["max_log_step"]),
            _bound(group["max_log_nu"]),
            plan,
            ("log2_nu", "nu"),
            base2=True,
        )
        self._move_with_tensor_rate(group, params, grads, prevs, nus, flat, plan)

    def _move_with_tensor_rate(
        self,
        group: dict,
        params: list[Tensor],
        grads: list[Tensor],
        prevs: list[Tensor],
        nus: list[Tensor],
        flat: _Flat,
        plan: _Flat,
    ) -> None:
        """θ ← θ − lr ν g and ``prev_grad`` ← g once the 0-dim ν are settled: the small tensors in one call over the
        flat ``prev_grad`` buffer, the big ones by the compiled update when ``fused``, the rest tensor by tensor."""
        lr = group["lr"]
        if flat.members:
            torch._foreach_addcmul_(
                [params[i] for i in flat.members],
                [grads[i] for i in flat.members],
                [nus[i] for i in flat.members],
                value=-lr,
            )
            assert flat.grad is not None  # full keys: the gradients are gathered
            flat.flat["prev_grad"].copy_(flat.grad)
        rest = flat.rest
        big = _big(params, rest) if group.get("fused", False) else []
        if big:
            inside = [i in plan.members for i in big]
            nu: Tensor | list[Tensor]
            if all(inside):  # their ν are views of the plan's vector: pass it whole, with their places in it
                nu, pos = plan.flat["nu"], tuple(plan.members.index(i) for i in big)
            elif not any(inside):
                nu, pos = [nus[i] for i in big], ()
            if all(inside) or not any(inside):
                _compiled("move")(
                    self._hyper(group, params[0]),
                    [params[i] for i in big],
                    [grads[i] for i in big],
                    [prevs[i] for i in big],
                    nu,
                    pos,
                )
                rest = [i for i in rest if i not in big]
        for i in rest:
            params[i].addcmul_(grads[i], nus[i], value=-lr)
            prevs[i].copy_(grads[i])


class EGFunnel(Optimizer):
    """Momentum SGD with an EG-adapted scale ``s`` and EG-adapted per-coordinate gains ``p`` (Amid et al., 2022).

    One step with gradient ``g``, EMA of gradients ``m`` and velocity ``v``::

        p ← p ⊙ exp(γ_p m ⊙ g)          (m still the EMA through the previous step)
        m ← β m + (1 − β) g
        s ← s · exp(γ_s <v, g>)          (v the velocity that made the last move, so this is EG on ∂L/∂s)
        v ← μ v + lr (p ⊙ g)
        θ ← θ − s v

    ``scale="global"`` shares ``s`` over the param group (the paper's global scale); ``"layer"`` keeps one per
    tensor. As in ``EGStepSize`` the defaults compute the published rule, and two safety clamps are off unless
    given: each exponent to ``±max_log_step``, ``log p`` and ``log s`` to ``±max_log_gain``. With
    ``gamma_p = gamma_s = 0`` it is ``torch.optim.SGD(lr, momentum)``.
    State per parameter: ``m``, ``v``, ``log_p``, ``p``, ``log_s``, ``s`` (0-dim); as in ``EGStepSize``, those of
    small parameters (and every ``s``) are views of buffers shared within the param group.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-2,
        momentum: float = 0.9,
        gamma_p: float = 1.0,
        gamma_s: float = 1.0,
        beta: float = 0.9,
        scale: str = "global",
        max_log_step: float | None = None,
        max_log_gain: float | None = None,
    ):
        _check_positive(lr=lr)
        _check_clamps(max_log_step=max_log_step, max_log_gain=max_log_gain)
        _check_non_negative(gamma_p=gamma_p, gamma_s=gamma_s)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"beta must be in [0, 1), got {beta}")
        if scale not in SCALES:
            raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
        defaults = dict(
            lr=lr,
            momentum=momentum,
            gamma_p=gamma_p,
            gamma_s=gamma_s,
            beta=beta,
            scale=scale,
            max_log_step=max_log_step,
            max_log_gain=max_log_gain,
        )
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
            cap, bound = _bound(group["max_log_step"]), _bound(group["max_log_gain"])
            moments = dict(
                gamma_p=group["gamma_p"],
                cap=cap,
                bound=bound,
                lr=group["lr"],
                momentum=group["momentum"],
                weight=1.0 - group["beta"],
            )
            states = [self._state(p) for p in params]
            grads = [_grad(p) for p in params]
            keys = ("m", "v", "log_p", "p")
            flat = _flat_state(self, group, "gains", params, states, full=keys)
            _gather(flat, grads)
            # s depends only on <v, g> with v from before this step, so it is settled first
            shared = group["scale"] == "global"
            dots = _dots([s["v"] for s in states], grads, flat, "v", shared)
            plan = _flat_state(self, group, "s", params, states, scalar=("log_s", "s"))
            _eg_0dim_(
                [s["log_s"] for s in states],
                [s["s"] for s in states],
                dots,
                shared,
                group["gamma_s"],
                cap,
                bound,
                plan,
                ("log_s", "s"),
            )
            if flat.members:
                assert flat.grad is not None  # full keys: the gradients are gathered
                self._moments(flat.grad, flat.flat["m"], flat.flat["v"], flat.flat["log_p"], flat.flat["p"], **moments)
                torch._foreach_addcmul_(
                    [params[i] for i in flat.members],
                    flat.views["v"],
                    [states[i]["s"] for i in flat.members],
                    value=-1.0,
                )
            for i in flat.rest:
                s = states[i]
                self._moments(grads[i], *(s[k] for k in keys), **moments)
                params[i].addcmul_(s["v"], s["s"], value=-1.0)
        return loss

    @staticmethod
    def _moments(
        g: Tensor,
        m: Tensor,
        v: Tensor,
        log_gain: Tensor,
        gain: Tensor,
        gamma_p: float,
        cap: float,
        bound: float,
        lr: float,
        momentum: float,
        weight: float,
    ) -> None:
        """Gains from ``m_{t-1} ⊙ g`` (``p`` as scratch), then ``m ← lerp(m, g, 1 − β)``, ``v ← μ v + lr p ⊙ g``."""
        if gamma_p > 0:
            torch.mul(m, g, out=gain)
            if cap < math.inf:
                gain.clamp_(-cap / gamma_p, cap / gamma_p)
            log_gain.add_(gain, alpha=gamma_p)
            if bound < math.inf:
                log_gain.clamp_(-bound, bound)
            _exp(log_gain, out=gain)
        m.lerp_(g, weight)
        v.mul_(momentum).addcmul_(gain, g, value=lr)


class HypergradientSGD(Optimizer):
    """SGD-HD (Baydin et al., 2018): ``α ← α + β <g_{t−1}, g_t>`` over the param group, then ``θ ← θ − α g``.

    α lives in ``group["lr"]`` so it is visible to callers and saved by ``state_dict``. The defaults are the paper's
    rule, under which α may turn negative (and then climb the loss). ``lr_floor`` (off by default, ``None``) is a
    safety clamp α ← max(α, lr_floor): at a floor of 0 the iterate stops, consecutive gradients agree and α grows
    again. State per parameter: ``prev_grad``.
    """

    def __init__(self, params: Iterable, lr: float = 1e-2, beta: float = 1e-3, lr_floor: float | None = None):
        _check_positive(lr=lr)
        _check_non_negative(beta=beta)
        if lr_floor is not None:
            _check_non_negative(lr_floor=lr_floor)
        super().__init__(params, dict(lr=lr, beta=beta, lr_floor=lr_floor))

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
            dot = sum(torch.vdot(self.state[p]["prev_grad"].flatten(), _grad(p).flatten()) for p in params)
            group["lr"] += group["beta"] * float(dot)
            floor = group.get("lr_floor")
            if floor is not None:
                group["lr"] = max(group["lr"], floor)
            for p in params:
                g = _grad(p)
                p.add_(g, alpha=-group["lr"])
                self.state[p]["prev_grad"].copy_(g)
        return loss
