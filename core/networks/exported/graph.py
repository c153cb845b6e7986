"""The ``nn.Module`` that runs a checked exported program: a small interpreter over its nodes (torch).

No code is generated: each node's operator is picked by the builder from ``torch.ops.aten``/``torch.ops.prims`` (names
already on the allowlist) or from a fixed table of integer operators, and ``forward`` calls them in graph order on
the module's own parameters and buffers. Those are ordinary ``nn.Parameter``s and buffers named as in the exported
model (``encoder.0.weight``), so optimizers, ``state_dict`` and ``.to(device)`` work, and autograd sees plain ATen
calls: gradients and double backward (``create_graph=True``) behave as on the original module.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from core.networks.exported.archive import Archive, StoredTensor
from core.networks.exported.errors import ArchiveRejected
from core.networks.exported.guards import first_broken
from core.networks.exported.ops import Op
from core.networks.exported.program import DTYPES, Code, Device, Node, Program, Ref, Tree

_DTYPES = {code: getattr(torch, name) for code, (name, _) in DTYPES.items()}
_BY_NAME = {name: getattr(torch, name) for name, _ in DTYPES.values()}
_CODES: dict[str, dict[int, Any]] = {
    "dtype": _DTYPES,
    "layout": {7: torch.strided},
    "memory_format": {
        1: torch.contiguous_format,
        2: torch.channels_last,
        3: torch.channels_last_3d,
        4: torch.preserve_format,
    },
}
_PYTHON: dict[str, Callable[..., Any]] = {
    "_operator.add": operator.add,
    "_operator.sub": operator.sub,
    "_operator.mul": operator.mul,
    "_operator.floordiv": operator.floordiv,
    "_operator.mod": operator.mod,
    "_operator.neg": operator.neg,
    "_operator.truediv": operator.truediv,
    "_operator.eq": operator.eq,
    "_operator.ne": operator.ne,
    "_operator.lt": operator.lt,
    "_operator.le": operator.le,
    "_operator.gt": operator.gt,
    "_operator.ge": operator.ge,
    "torch.sym_max": torch.sym_max,
    "torch.sym_min": torch.sym_min,
    "torch.sym_float": torch.sym_float,
    "torch.sym_int": torch.sym_int,
}
"""The integer operators of ``ops.SYMBOLIC``, by target."""


def _int64(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` on numbers only, whose result must stay within int64: a graph cannot repeat a list a trillion times
    or build a huge integer by repeated squaring."""

    def bounded(*args: Any) -> Any:
        if not all(type(a) in (int, float, bool) for a in args):
            raise TypeError(f"a size computation got {[type(a).__name__ for a in args]}, not numbers")
        result = fn(*args)
        if isinstance(result, int) and not -(2**63) <= result <= 2**63:
            raise OverflowError(f"a size computation gave {str(result)[:40]}..., outside int64")
        return result

    return bounded


SYMBOLIC = {target: _int64(fn) for target, fn in _PYTHON.items()}

Step = tuple[Callable[..., Any], list[Any], dict[str, Any], tuple[Any, ...]]


class ExportedModule(nn.Module):
    """An exported program as a module: ``forward`` takes the tensors the original took (same order and keywords)
    and returns what it returned (a tensor, or tuples, lists and dicts of them)."""

    def __init__(self, program: Program, tensors: dict[str, torch.Tensor]):
        super().__init__()
        self._program = program
        self._steps = [_step(node) for node in program.nodes]
        self._index = {node.name: i for i, node in enumerate(program.nodes)}
        self.constants = nn.Module()  # lifted constant tensors, apart so their names cannot clash with buffers
        for p in program.placeholders:
            if p.kind == "input":
                continue
            value = tensors[p.target]
            if p.kind == "parameter":  # trainable as exported (a frozen layer stays frozen)
                _attach(self, p.target, nn.Parameter(value, requires_grad=value.requires_grad))
            else:
                holder = self.constants if p.kind == "constant" else self
                _attach(holder, p.target, value.detach(), persistent=p.persistent and p.kind == "buffer")

    def forward(self, *args: torch.Tensor, **kwargs: torch.Tensor) -> Any:
        program = self._program
        env = self.values(*args, **kwargs)
        if program.buffer_mutations:
            with torch.no_grad():
                for name, fqn in program.buffer_mutations:
                    _attribute(self, fqn).copy_(env[name])
        return _unflatten(program.out_tree, iter([None if n is None else env[n] for n in program.outputs]))

    def values(self, *args: torch.Tensor, **kwargs: torch.Tensor) -> dict[str, Any]:
        """Every value of the graph for these inputs, by name (buffers are not updated: ``forward`` does that)."""
        program = self._program
        if len(args) != program.arg_count or set(kwargs) != set(program.kwarg_names):
            named = f" and keywords {list(program.kwarg_names)}" if program.kwarg_names else ""
            raise TypeError(f"the exported model takes {program.arg_count} positional tensors{named}")
        given = [*args, *(kwargs[k] for k in program.kwarg_names)]
        if not all(isinstance(t, torch.Tensor) for t in given):
            raise TypeError(f"the exported model takes tensors, not {[type(t).__name__ for t in given]}")
        broken = first_broken(program.guards, [(t.shape, t.stride()) for t in given])
        if broken is not None:
            raise ValueError(f"the inputs' shapes break the exported model's guard {broken}")
        inputs = iter(given)
        env: dict[str, Any] = {}
        for p in program.placeholders:
            if p.kind == "input":
                env[p.name] = next(inputs)
            else:
                env[p.name] = _attribute(self.constants if p.kind == "constant" else self, p.target)
        device = _device(env, program, self)
        for step in self._steps:
            _bind(step[3], call(step, env, device), env)
        return env

    @property
    def program(self) -> Program:
        return self._program

    def input_shape(self) -> tuple[int, ...]:
        """The shape of one sample of the program's single input (its sizes after the batch's), as exported."""
        inputs = self._program.inputs()
        meta = self._program.tensor_values.get(inputs[0].name) if len(inputs) == 1 else None
        if meta is None or any(not isinstance(s, int) for s in meta.shape[1:]):
            raise ValueError("the exported program must take one tensor, dynamic in its first (batch) size only")
        return tuple(int(s) for s in meta.shape[1:])

    def step(self, node: str) -> Step:
        """The operator call of the node named ``node``, to run alone with ``call``."""
        return self._steps[self._index[node]]


def call(step: Step, env: dict[str, Any], device: torch.device) -> Any:
    """Run one node's operator on the values in ``env``."""
    fn, positional, keywords, _ = step
    return fn(*(_value(a, env, device) for a in positional), **{k: _value(v, env, device) for k, v in keywords.items()})


def build_module(archive: Archive, *, device: str | torch.device = "cpu") -> ExportedModule:
    """The archive's program as an ``ExportedModule`` with its weights on ``device``.

    On ``meta`` no tensor bytes are read: the module has the right shapes and dtypes for tracing memory use."""
    device = torch.device(device)
    storages: dict[str, torch.Tensor] = {}
    tensors = {fqn: _tensor(archive, stored, device, storages) for fqn, stored in archive.tensors.items()}
    return ExportedModule(archive.program, tensors)


def _tensor(archive: Archive, stored: StoredTensor, device: torch.device, storages: dict) -> torch.Tensor:
    """One weight as a fresh contiguous tensor, viewed from its member's raw bytes as the archive declares."""
    meta = stored.meta
    dtype = _BY_NAME[meta.dtype]
    shape = [int(s) for s in meta.shape]
    if device.type == "meta" or stored.numel == 0:
        value = torch.zeros(shape, dtype=dtype, device=device)
    else:
        if stored.member not in storages:
            raw = bytearray(archive.member_bytes(stored.member))
            # a bool byte other than 0 or 1 is not a valid bool: read them as bytes and compare
            flat = torch.frombuffer(raw, dtype=torch.uint8 if dtype is torch.bool else dtype)
            storages[stored.member] = flat != 0 if dtype is torch.bool else flat
        view = storages[stored.member].as_strided(shape, [int(s) for s in meta.strides], int(meta.offset))
        value = view.clone(memory_format=torch.contiguous_format).to(device)
    return value.requires_grad_(meta.requires_grad and value.is_floating_point())


def _attach(root: nn.Module, fqn: str, value: torch.Tensor, persistent: bool = True) -> None:
    """Register ``value`` at the dotted path ``fqn``, creating plain submodules on the way."""
    *path, leaf = fqn.split(".")
    module = root
    try:
        for part in path:
            child = module._modules.get(part)
            if child is None:
                child = nn.Module()
                module.add_module(part, child)
            module = child
        if isinstance(value, nn.Parameter):
            module.register_parameter(leaf, value)
        else:
            module.register_buffer(leaf, value, persistent=persistent)
    except (KeyError, TypeError, AttributeError) as exc:
        raise ArchiveRejected(f"archive: tensor {fqn!r} cannot be a module attribute ({exc})") from None


def _attribute(root: nn.Module, fqn: str) -> torch.Tensor:
    """The tensor at ``fqn`` as it is now (``torch.func.functional_call`` swaps parameters for plain tensors)."""
    return functools.reduce(getattr, fqn.split("."), root)  # type: ignore[arg-type, return-value]


def _step(node: Node) -> Step:
    """The operator a node calls and its arguments laid out by the operator's schema (positional, then keywords)."""
    fn = _operator(node)
    if node.op.namespace == "symbolic":
        return fn, [value for _, value, _ in node.inputs], {}, node.outputs
    schema = fn._schema.arguments  # type: ignore[attr-defined]
    given = {name: (value, kind) for name, value, kind in node.inputs}
    unknown = set(given) - {a.name for a in schema}
    if unknown:
        raise ArchiveRejected(f"graph: node {node.name!r} passes {sorted(unknown)} to {node.target}, which has none")
    positional: list[Any] = []
    keywords: dict[str, Any] = {}
    gap = False  # once an argument is left to its default, later ones must go by name
    for a in schema:
        if a.name not in given:
            gap = True
            continue
        value, kind = given[a.name]
        if kind == 2 or a.kwarg_only or gap or keywords:
            keywords[a.name] = value
        else:
            positional.append(value)
    return fn, positional, keywords, node.outputs


def _operator(node: Node) -> Callable[..., Any]:
    op: Op = node.op
    if op.namespace == "symbolic":
        return SYMBOLIC[op.name]
    packet = getattr(getattr(torch.ops, op.namespace), op.name)
    if op.overload not in packet.overloads():
        raise ArchiveRejected(f"graph: node {node.name!r} calls {node.target}, an overload torch does not have")
    return getattr(packet, op.overload)


def _value(arg: Any, env: dict[str, Any], device: torch.device) -> Any:
    if isinstance(arg, Ref):
        return env[arg.name]
    if isinstance(arg, list):
        return [_value(a, env, device) for a in arg]
    if isinstance(arg, Code):
        return _CODES[arg.kind][arg.code]
    if isinstance(arg, Device):
        return device
    return arg


def _bind(outputs: tuple[Any, ...], result: Any, env: dict[str, Any]) -> None:
    values = (result,) if len(outputs) == 1 else tuple(result or ())
    if len(values) != len(outputs):
        raise RuntimeError(f"an operator returned {len(values)} values where the graph names {len(outputs)}")
    for names, value in zip(outputs, values):
        if isinstance(names, tuple):
            for name, item in zip(names, value):
                if name is not None:
                    env[name] = item
        elif names is not None:
            env[names] = value


def _device(env: dict[str, Any], program: Program, module: nn.Module) -> torch.device:
    """Where operators that create tensors put them: the first input's device (else the weights')."""
    for p in program.placeholders:
        if p.kind == "input":
            return env[p.name].device
    first = next(iter(module.parameters()), None) or next(iter(module.buffers()), None)
    return first.device if first is not None else torch.device("cpu")


def _unflatten(tree: Tree, leaves: Iterator[Any]) -> Any:
    if tree.kind == "leaf":
        return next(leaves)
    children = [_unflatten(child, leaves) for child in tree.children]
    if tree.kind == "dict":
        return dict(zip(tree.keys, children))
    return tuple(children) if tree.kind == "tuple" else children
