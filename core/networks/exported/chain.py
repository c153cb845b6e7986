"""Is a graph a chain h ↦ σ(W h + b) ↦ … ↦ W h + b? The form gradient_penalty_bound's inequality covers (no torch).

Followed from the single input to the single output, every step must be an affine layer on one weight (linear,
addmm, mm or matmul with a bias add, a convolution), a parameter-free elementwise activation (``ops.ACTIVATIONS``),
or a reshape that only reorders entries (flatten, view). Anything else — a second use of a value (a branch or a
residual connection), normalisation, pooling, attention, a buffer or constant in the data path — breaks the
chain, and the answer names that node.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from core.networks.exported.ops import ACTIVATIONS
from core.networks.exported.program import Node, Program, Ref

_WEIGHT_VIEWS = {"t", "permute", "transpose", "view", "reshape", "_unsafe_view", "detach", "alias"}
_REORDERS = {"flatten", "view", "reshape", "_unsafe_view", "contiguous", "clone", "alias"}
_SHAPE_ONLY = {"sym_size", "sym_numel", "sym_stride", "sym_storage_offset", "_assert_tensor_metadata"}
_AFFINE_ARGS = {  # operator: (data argument, weight argument, bias argument)
    "linear": ("input", "weight", "bias"),
    "conv1d": ("input", "weight", "bias"),
    "conv2d": ("input", "weight", "bias"),
    "conv3d": ("input", "weight", "bias"),
    "convolution": ("input", "weight", "bias"),
    "conv_transpose1d": ("input", "weight", "bias"),
    "conv_transpose2d": ("input", "weight", "bias"),
    "conv_transpose3d": ("input", "weight", "bias"),
    "addmm": ("mat1", "mat2", "self"),
    "mm": ("self", "mat2", ""),
    "matmul": ("self", "other", ""),
}


@dataclass(frozen=True)
class Layer:
    """One affine layer: its node, operator, weight and bias names (fqns), and the activations after it; ``data``
    the value the node reads and ``steps`` each activation's (node, value it reads)."""

    node: str
    op: str
    weight: str
    bias: str | None
    activations: tuple[str, ...] = ()
    data: str = ""
    steps: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Chain:
    """``layers`` found from the input; ``breaks_at`` (a node, input or output name) and ``reason`` when the graph
    is not such a chain."""

    layers: tuple[Layer, ...]
    breaks_at: str | None = None
    reason: str | None = None

    @property
    def is_chain(self) -> bool:
        return self.breaks_at is None


@dataclass
class _Open:
    node: str
    op: str
    weight: str
    bias: str | None
    data: str = ""
    activations: list[str] = field(default_factory=list)
    steps: list[tuple[str, str]] = field(default_factory=list)

    def closed(self) -> Layer:
        return Layer(self.node, self.op, self.weight, self.bias, tuple(self.activations), self.data, tuple(self.steps))


def find_chain(program: Program) -> Chain:
    """Follow ``program`` from its input to its output as a chain of affine layers and activations."""
    inputs, outputs = program.inputs(), [o for o in program.outputs if o is not None]
    if len(inputs) != 1:
        return Chain((), inputs[1].name if inputs else "forward", f"the model takes {len(inputs)} inputs, not one")
    if len(outputs) != 1 or len(program.outputs) != 1 or program.buffer_mutations:
        return Chain((), outputs[-1] if outputs else "output", "the model must return exactly one tensor")
    weights = _weight_names(program)
    users = _users(program)
    layers: list[_Open] = []
    current = inputs[0].name
    while True:
        after = users.get(current, [])
        if current == outputs[0] and not after:
            break
        if len(after) != 1:
            breaker = after[1] if len(after) > 1 else None
            why = f"{current!r} feeds {len(after)} nodes (a branch or residual connection)"
            return _broken(layers, breaker.name if breaker else current, why if breaker else "the chain stops early")
        node = after[0]
        step = _step(node, current, weights, set(program.tensor_values))
        if isinstance(step, str):
            return _broken(layers, node.name, step)
        if step is None:  # a reorder
            pass
        elif isinstance(step, _Open):
            step.data = current
            layers.append(step)
            step, node = _absorb_bias(step, node, users, weights)
        elif not layers:
            return _broken(layers, node.name, "the chain must start with an affine layer (h¹ is the input itself)")
        else:
            layers[-1].activations.append(step[0])
            layers[-1].steps.append((node.name, current))
        current = _single_output(node)
    if not layers:
        return _broken(layers, outputs[0], "the graph has no affine layer")
    return Chain(tuple(o.closed() for o in layers))


def _step(node: Node, current: str, weights: dict[str, str], values: set[str]) -> _Open | tuple[str] | str | None:
    """An affine layer (``_Open``), an activation (``(name,)``), a reorder (None), or why the node breaks it.
    ``values``: the names of tensor values (a size list may hold symbolic sizes, which are not)."""
    name = node.op.name if node.op.namespace == "aten" else node.op.qualified
    tensors = {arg: value.name for arg, value, _ in node.inputs if isinstance(value, Ref)}
    others = {arg: v for arg, v in tensors.items() if v != current}
    if name in _AFFINE_ARGS:
        data, weight, bias = _AFFINE_ARGS[name]
        if tensors.get(data) != current or tensors.get(weight) not in weights:
            return f"aten.{name} does not apply one weight to the chain's value"
        if set(others) - {weight, bias} or (bias in others and others[bias] not in weights):
            return f"aten.{name} takes a tensor other than its weight and bias"
        return _Open(node.name, f"aten.{name}", weights[tensors[weight]], weights.get(others.get(bias, "")))
    if name not in ACTIVATIONS and name not in _REORDERS and name != "dropout":
        return f"{node.op.qualified} is neither an affine layer nor an elementwise activation"
    listed = [x for _, v, _ in node.inputs if isinstance(v, list) for x in v if isinstance(x, Ref)]
    if others or any(x.name in values for x in listed):
        return f"{node.op.qualified} combines the chain's value with another tensor"
    if name == "dropout":
        return None if _argument(node, "train") is False else "aten.dropout in training mode is not an activation"
    return (name,) if name in ACTIVATIONS else None


def _absorb_bias(layer: _Open, node: Node, users: dict[str, list[Node]], weights: dict[str, str]):
    """``mm``/``matmul`` followed by ``add(·, bias)``: the add is the layer's bias."""
    if layer.bias is not None or layer.op not in ("aten.mm", "aten.matmul"):
        return layer, node
    after = users.get(_single_output(node), [])
    if len(after) == 1 and after[0].op.qualified == "aten.add":
        refs = [v.name for _, v, _ in after[0].inputs if isinstance(v, Ref)]
        bias = [r for r in refs if r in weights]
        if len(refs) == 2 and len(bias) == 1:
            layer.bias = weights[bias[0]]
            return layer, after[0]
    return layer, node


def _broken(layers: list[_Open], where: str, reason: str) -> Chain:
    return Chain(tuple(o.closed() for o in layers), where, reason)


def _weight_names(program: Program) -> dict[str, str]:
    """Value name → parameter fqn, for parameters and their transposes or views (``permute(p_fc_weight)``)."""
    names = {p.name: p.target for p in program.of_kind("parameter")}
    for node in program.nodes:
        refs = [v.name for _, v, _ in node.inputs if isinstance(v, Ref)]
        if node.op.namespace == "aten" and node.op.name in _WEIGHT_VIEWS and len(refs) == 1 and refs[0] in names:
            names[_single_output(node)] = names[refs[0]]
    return names


def _users(program: Program) -> dict[str, list[Node]]:
    """Value name → the nodes that read it, leaving out those that only read its shape."""
    users: dict[str, list[Node]] = {}
    for node in program.nodes:
        if node.op.namespace == "symbolic" or node.op.name in _SHAPE_ONLY:
            continue
        for _, value, _ in node.inputs:
            for ref in value if isinstance(value, list) else [value]:
                if isinstance(ref, Ref) and node not in users.setdefault(ref.name, []):
                    users[ref.name].append(node)
    return users


def _single_output(node: Node) -> str:
    out = node.outputs[0] if len(node.outputs) == 1 else None
    return out if isinstance(out, str) else f"{node.name} (several outputs)"


def _argument(node: Node, name: str) -> object:
    return next((value for arg, value, _ in node.inputs if arg == name), None)
