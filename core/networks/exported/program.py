"""An exported program's graph as plain data, parsed and checked from the archive's JSON (no torch).

Every field is read by name and type-checked here; nothing in the JSON is evaluated, imported or looked up by its
string. What the checks guarantee to the builder: each node calls an allowlisted operator (``ops.accept``), each
value a node uses was defined earlier (placeholders in signature order, then node outputs), arguments are literals,
value references, dtypes, layouts or "the device", inputs and outputs are flat tensors, guards are relations between
input sizes (``guards.parse_guards``), and the archive carries no custom objects or subgraphs.
"""

from __future__ import annotations

import re
from collections.abc import Container
from dataclasses import dataclass
from typing import Any

from core.networks.exported.errors import ArchiveRejected
from core.networks.exported.guards import Guard, parse_guards
from core.networks.exported.jsonsafe import loads
from core.networks.exported.ops import Op, accept

SCHEMA_MAJOR = 8
"""The major version of torch.export's JSON schema this reader understands (torch 2.13 writes 8.20)."""

DTYPES = {
    1: ("uint8", 1),
    2: ("int8", 1),
    3: ("int16", 2),
    4: ("int32", 4),
    5: ("int64", 8),
    6: ("float16", 2),
    7: ("float32", 4),
    8: ("float64", 8),
    12: ("bool", 1),
    13: ("bfloat16", 2),
}
"""torch.export's ScalarType codes this service accepts: name (a ``torch`` attribute) and bytes per element."""

STRIDED = 7
MEMORY_FORMATS = {1, 2, 3, 4}
MAX_INT = 2**63
"""Integers in a graph stay within int64 (a slice to the end is written as 2**63 - 1)."""
_SYMBOL = re.compile(r"Symbol\('(\w+)'[^)]*\)")


@dataclass(frozen=True)
class Ref:
    """A value defined earlier in the graph (a placeholder, a node's output, an element of a list output)."""

    name: str


@dataclass(frozen=True)
class Code:
    """An enum argument: ``kind`` is ``dtype``, ``layout`` or ``memory_format``; ``code`` its schema number."""

    kind: str
    code: int


@dataclass(frozen=True)
class Device:
    """A device argument: the builder substitutes the device the module runs on, whatever the archive recorded."""


@dataclass(frozen=True)
class TensorMeta:
    """A tensor's declared dtype (a ``DTYPES`` name), shape, strides and offset; a dynamic size is its symbol."""

    dtype: str
    shape: tuple[int | str, ...]
    strides: tuple[int | str, ...]
    offset: int | str
    requires_grad: bool


@dataclass(frozen=True)
class Node:
    """One operator call. ``inputs``: (schema argument name, value, kind 1 positional / 2 keyword / 0 unknown).
    ``outputs``: per returned value, its name, a tuple of names (a list return; None for an unnamed element) or
    None (not bound)."""

    name: str
    target: str
    op: Op
    inputs: tuple[tuple[str, Any, int], ...]
    outputs: tuple[str | tuple[str | None, ...] | None, ...]


@dataclass(frozen=True)
class Placeholder:
    """A graph input: ``kind`` parameter, buffer, constant or input; ``target`` the fqn (``l.weight``) or, for an
    input, its value name."""

    name: str
    kind: str
    target: str
    persistent: bool = True


@dataclass(frozen=True)
class Tree:
    """A pytree structure: ``leaf``, ``tuple``, ``list`` or ``dict`` (with ``keys``)."""

    kind: str
    children: tuple[Tree, ...] = ()
    keys: tuple[str | int, ...] = ()

    def leaves(self) -> int:
        return 1 if self.kind == "leaf" else sum(child.leaves() for child in self.children)


@dataclass(frozen=True)
class Program:
    placeholders: tuple[Placeholder, ...]
    nodes: tuple[Node, ...]
    outputs: tuple[str | None, ...]  # user outputs in order (None: the model returns None there)
    buffer_mutations: tuple[tuple[str, str], ...]  # (value name, buffer fqn) written back after each call
    arg_count: int  # positional user inputs; the rest are keywords
    kwarg_names: tuple[str, ...]
    out_tree: Tree
    tensor_values: dict[str, TensorMeta]
    arg_names: tuple[str, ...]  # forward()'s parameter names as exported
    guards: tuple[Guard, ...]  # relations the inputs' sizes must satisfy
    torch_version: str

    def inputs(self) -> list[Placeholder]:
        return [p for p in self.placeholders if p.kind == "input"]

    def of_kind(self, kind: str) -> list[Placeholder]:
        return [p for p in self.placeholders if p.kind == kind]


def parse_program(doc: Any, *, max_nodes: int, max_depth: int) -> Program:
    """The ``models/<name>.json`` document as a checked ``Program``; ``ArchiveRejected`` names what is wrong."""
    doc = _dict(doc, "program")
    version = _dict(doc.get("schema_version"), "program.schema_version")
    if version.get("major") != SCHEMA_MAJOR:
        raise ArchiveRejected(
            f"program: schema version {version.get('major')}.{version.get('minor')}; this service reads "
            f"{SCHEMA_MAJOR}.x (torch 2.13's torch.export.save)"
        )
    module = _dict(doc.get("graph_module"), "graph_module")
    graph = _dict(module.get("graph"), "graph")
    for key in ("custom_obj_values",):
        if graph.get(key):
            raise ArchiveRejected(f"graph: {key} is not empty; custom objects are refused")
    placeholders = _placeholders(graph, _dict(module.get("signature"), "signature"))
    defined = {p.name for p in placeholders}
    raw_nodes = _list(graph.get("nodes"), "graph.nodes")
    if len(raw_nodes) > max_nodes:
        raise ArchiveRejected(f"graph: {len(raw_nodes)} nodes, more than the {max_nodes} this service runs")
    nodes = tuple(_node(raw, i, defined) for i, raw in enumerate(raw_nodes))
    outputs, mutations = _outputs(graph, _dict(module.get("signature"), "signature"), defined)
    entry = _root_call(module)
    arg_count, kwarg_names = _in_tree(_tree(_str(entry.get("in_spec"), "in_spec"), "in_spec", max_depth))
    users = sum(p.kind == "input" for p in placeholders)
    if arg_count + len(kwarg_names) != users:
        raise ArchiveRejected(f"signature: in_spec has {arg_count + len(kwarg_names)} inputs, the graph {users}")
    out_tree = _tree(_str(entry.get("out_spec"), "out_spec"), "out_spec", max_depth)
    if out_tree.leaves() != len(outputs):
        raise ArchiveRejected(f"signature: out_spec has {out_tree.leaves()} outputs, the graph {len(outputs)}")
    values = _dict(graph.get("tensor_values", {}), "graph.tensor_values")
    names = tuple(
        _str(n, "forward_arg_names") for n in _list(entry.get("forward_arg_names") or [], "forward_arg_names")
    )
    positions = {name: i for i, name in enumerate(names[:arg_count])}
    positions.update({name: arg_count + i for i, name in enumerate(kwarg_names)})
    return Program(
        placeholders=placeholders,
        nodes=nodes,
        outputs=outputs,
        buffer_mutations=mutations,
        arg_count=arg_count,
        kwarg_names=kwarg_names,
        out_tree=out_tree,
        tensor_values={_str(k, "tensor_values"): tensor_meta(v, f"tensor_values[{k!r}]") for k, v in values.items()},
        arg_names=names,
        guards=parse_guards(doc.get("guards_code", []), positions),
        torch_version=str(doc.get("torch_version", ""))[:64],
    )


def tensor_meta(raw: Any, where: str) -> TensorMeta:
    """A ``TensorMeta`` object: a strided tensor of an accepted dtype (sizes may be symbolic)."""
    raw = _dict(raw, where)
    code = raw.get("dtype")
    if not _code(code, DTYPES):
        raise ArchiveRejected(f"{where}: dtype code {code!r} is not one of {sorted(n for n, _ in DTYPES.values())}")
    if raw.get("layout") != STRIDED:
        raise ArchiveRejected(f"{where}: layout {raw.get('layout')!r} is not strided (sparse tensors are refused)")
    shape = tuple(_sym_int(s, f"{where}.sizes") for s in _list(raw.get("sizes"), f"{where}.sizes"))
    strides = tuple(_sym_int(s, f"{where}.strides") for s in _list(raw.get("strides"), f"{where}.strides"))
    if len(strides) != len(shape):
        raise ArchiveRejected(f"{where}: {len(shape)} sizes but {len(strides)} strides")
    return TensorMeta(
        dtype=DTYPES[code][0],
        shape=shape,
        strides=strides,
        offset=_sym_int(raw.get("storage_offset"), f"{where}.storage_offset"),
        requires_grad=_bool(raw.get("requires_grad", False), f"{where}.requires_grad"),
    )


def _placeholders(graph: dict, signature: dict) -> tuple[Placeholder, ...]:
    inputs = _list(graph.get("inputs"), "graph.inputs")
    specs = _list(signature.get("input_specs"), "signature.input_specs")
    if len(inputs) != len(specs):
        raise ArchiveRejected(f"signature: {len(specs)} input specs for {len(inputs)} graph inputs")
    out = []
    for i, (arg, spec) in enumerate(zip(inputs, specs)):
        where = f"signature.input_specs[{i}]"
        kind, body = _union(spec, where)
        body = _dict(body, where)
        if kind == "user_input":
            name = _tensor_name(body.get("arg"), where, "an input that is not a tensor (only tensors are accepted)")
            out.append(Placeholder(name, "input", name))
        elif kind in ("parameter", "buffer", "tensor_constant"):
            name = _str(_dict(body.get("arg"), where).get("name"), f"{where}.arg.name")
            key = {"parameter": "parameter_name", "buffer": "buffer_name", "tensor_constant": "tensor_constant_name"}
            fqn = fqn_of(body.get(key[kind]), where)
            persistent = _bool(body.get("persistent", True), where) if kind == "buffer" else True
            out.append(Placeholder(name, "constant" if kind == "tensor_constant" else kind, fqn, persistent))
        else:
            raise ArchiveRejected(f"{where}: a {kind} input is refused (custom objects, tokens, constant inputs)")
        if _tensor_name(arg, f"graph.inputs[{i}]", "not a tensor") != out[-1].name:
            raise ArchiveRejected(f"{where}: names {out[-1].name!r}, graph input {i} differs")
    if len({p.name for p in out}) != len(out):
        raise ArchiveRejected("signature: two graph inputs share a name")
    return tuple(out)


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|[0-9]+")


def fqn_of(raw: Any, where: str) -> str:
    """A dotted attribute path (``encoder.0.weight``): each part an identifier or an index, at most 32 parts."""
    fqn = _str(raw, where)
    parts = fqn.split(".")
    if len(parts) > 32 or not all(_NAME.fullmatch(p) for p in parts):
        raise ArchiveRejected(f"{where}: {fqn[:80]!r} is not a dotted attribute name")
    return fqn


def _node(raw: Any, index: int, defined: set[str]) -> Node:
    raw = _dict(raw, f"graph.nodes[{index}]")
    name = raw.get("name") if isinstance(raw.get("name"), str) else f"node {index}"
    where = f"graph: node {name!r}"
    op = accept(name, _str(raw.get("target"), f"{where}.target"))
    inputs = []
    for item in _list(raw.get("inputs"), f"{where}.inputs"):
        item = _dict(item, f"{where}.inputs")
        arg_name = _str(item.get("name", ""), f"{where}.inputs.name")
        kind: int = item["kind"] if item.get("kind") in (1, 2) else 0
        inputs.append((arg_name, _argument(item.get("arg"), f"{where} argument {arg_name!r}", defined), kind))
    outputs = tuple(_output(o, where) for o in _list(raw.get("outputs"), f"{where}.outputs"))
    for out in outputs:
        for value in out if isinstance(out, tuple) else (out,):
            if value is None:
                continue
            if value in defined:
                raise ArchiveRejected(f"{where}: defines {value!r}, which is already defined")
            defined.add(value)
    return Node(name=name, target=raw["target"], op=op, inputs=tuple(inputs), outputs=outputs)


def _output(raw: Any, where: str) -> str | tuple[str | None, ...] | None:
    kind, body = _union(raw, f"{where}.outputs")
    if kind == "as_tensor":
        return _str(_dict(body, where).get("name"), f"{where}.outputs")
    if kind in ("as_tensors", "as_optional_tensors"):
        return tuple(_optional_name(t, where) for t in _list(body, f"{where}.outputs"))
    if kind in ("as_sym_int", "as_sym_float", "as_sym_bool"):
        sub, name = _union(body, f"{where}.outputs")
        return _str(name, f"{where}.outputs") if sub == "as_name" else None
    if kind in ("as_none", "as_int", "as_float", "as_bool"):
        return None
    raise ArchiveRejected(f"{where}: an output of kind {kind!r} is refused")


def _optional_name(raw: Any, where: str) -> str | None:
    if isinstance(raw, dict) and set(raw) == {"name"}:
        return _str(raw["name"], f"{where}.outputs")
    kind, body = _union(raw, f"{where}.outputs")
    if kind == "as_tensor":
        return _str(_dict(body, where).get("name"), f"{where}.outputs")
    if kind == "as_none":
        return None
    raise ArchiveRejected(f"{where}: a list output element of kind {kind!r} is refused")


_LITERALS: dict[str, type] = {"as_int": int, "as_bool": bool, "as_string": str}


def _argument(raw: Any, where: str, defined: set[str]) -> Any:
    kind, body = _union(raw, where)
    if kind == "as_none":
        return None
    if kind == "as_tensor":
        return _ref(_dict(body, where).get("name"), where, defined)
    if kind == "as_tensors":
        return [_ref(_dict(t, where).get("name"), where, defined) for t in _list(body, where)]
    if kind in ("as_optional_tensors", "as_optional_tensor"):
        items = [_optional_tensor(t, where, defined) for t in _list(body, where)] if kind.endswith("s") else None
        return items if items is not None else _optional_tensor(body, where, defined)
    if kind in ("as_int", "as_bool", "as_string"):
        return _literal(body, _LITERALS[kind], where)
    if kind in ("as_ints", "as_bools", "as_strings"):
        return [_literal(v, _LITERALS[kind[:-1]], where) for v in _list(body, where)]
    if kind == "as_float":
        return _float(body, where)
    if kind == "as_floats":
        return [_float(v, where) for v in _list(body, where)]
    if kind == "as_int_lists":
        return [[_literal(v, int, where) for v in _list(row, where)] for row in _list(body, where)]
    if kind == "as_float_lists":
        return [[_float(v, where) for v in _list(row, where)] for row in _list(body, where)]
    if kind in ("as_sym_int", "as_sym_float", "as_sym_bool"):
        return _sym_argument(body, where, defined)
    if kind in ("as_sym_ints", "as_sym_floats", "as_sym_bools"):
        return [_sym_argument(v, where, defined) for v in _list(body, where)]
    if kind == "as_scalar_type":
        if not _code(body, DTYPES):
            raise ArchiveRejected(f"{where}: dtype code {body!r} is not accepted")
        return Code("dtype", body)
    if kind == "as_layout":
        if body != STRIDED:
            raise ArchiveRejected(f"{where}: layout {body!r} is not strided")
        return Code("layout", body)
    if kind == "as_memory_format":
        if not _code(body, MEMORY_FORMATS):
            raise ArchiveRejected(f"{where}: memory format {body!r} is not accepted")
        return Code("memory_format", body)
    if kind == "as_device":
        _str(_dict(body, where).get("type"), f"{where}.type")
        return Device()
    if kind == "as_complex":
        body = _dict(body, where)
        return complex(_float(body.get("real"), where), _float(body.get("imag"), where))
    raise ArchiveRejected(f"{where}: an argument of kind {kind!r} is refused (subgraphs, custom objects, operators)")


def _sym_argument(raw: Any, where: str, defined: set[str]) -> Any:
    kind, body = _union(raw, where)
    if kind == "as_name":
        return _ref(body, where, defined)
    if kind == "as_int":
        return _literal(body, int, where)
    if kind == "as_bool":
        return _literal(body, bool, where)
    if kind == "as_float":
        return _float(body, where)
    raise ArchiveRejected(f"{where}: a symbolic argument of kind {kind!r} is refused")


def _optional_tensor(raw: Any, where: str, defined: set[str]) -> Ref | None:
    kind, body = _union(raw, where)
    if kind == "as_none":
        return None
    if kind == "as_tensor":
        return _ref(_dict(body, where).get("name"), where, defined)
    raise ArchiveRejected(f"{where}: an optional tensor of kind {kind!r} is refused")


def _ref(raw: Any, where: str, defined: set[str]) -> Ref:
    name = _str(raw, where)
    if name not in defined:
        raise ArchiveRejected(f"{where}: uses {name[:80]!r} before it is defined")
    return Ref(name)


def _outputs(graph: dict, signature: dict, defined: set[str]):
    """(user outputs, buffer mutations) from the output specs, each checked against the graph's outputs."""
    values = _list(graph.get("outputs"), "graph.outputs")
    specs = _list(signature.get("output_specs"), "signature.output_specs")
    if len(values) != len(specs):
        raise ArchiveRejected(f"signature: {len(specs)} output specs for {len(values)} graph outputs")
    outputs: list[str | None] = []
    mutations = []
    for i, (value, spec) in enumerate(zip(values, specs)):
        where = f"signature.output_specs[{i}]"
        kind, body = _union(spec, where)
        body = _dict(body, where)
        if kind == "user_output":
            arg_kind, arg = _union(body.get("arg"), where)
            if arg_kind == "as_none":
                outputs.append(None)
                continue
            if arg_kind != "as_tensor":
                raise ArchiveRejected(f"{where}: the model returns a {arg_kind}; only tensors (or None) are accepted")
            name = _str(_dict(arg, where).get("name"), f"{where}.arg.name")
            outputs.append(name)
        elif kind == "buffer_mutation":
            name = _str(_dict(body.get("arg"), where).get("name"), f"{where}.arg.name")
            mutations.append((name, fqn_of(body.get("buffer_name"), where)))
        else:
            raise ArchiveRejected(f"{where}: a {kind} output is refused (only outputs and buffer updates)")
        if name not in defined or _tensor_name(value, f"graph.outputs[{i}]", "not a tensor") != name:
            raise ArchiveRejected(f"{where}: returns {name[:80]!r}, which is not the graph's output {i}")
    return tuple(outputs), tuple(mutations)


def _tensor_name(raw: Any, where: str, refusal: str) -> str:
    """The name in an ``{"as_tensor": {"name": ...}}`` argument; ``refusal`` says why anything else is refused."""
    kind, body = _union(raw, where)
    if kind != "as_tensor":
        raise ArchiveRejected(f"{where}: {refusal}")
    return _str(_dict(body, where).get("name"), f"{where}.name")


def _root_call(module: dict) -> dict:
    for entry in _list(module.get("module_call_graph"), "module_call_graph"):
        if isinstance(entry, dict) and entry.get("fqn") == "":
            return _dict(entry.get("signature"), "module_call_graph root signature")
    raise ArchiveRejected("module_call_graph: no entry for the root module")


def _tree(text: str, where: str, max_depth: int) -> Tree:
    """A pytree spec string (``[1, {type, context, children_spec}]``) as a ``Tree`` of tuples, lists and dicts."""
    doc = _list(loads(text.encode(), where, max_depth), where)
    if len(doc) != 2 or doc[0] != 1:
        raise ArchiveRejected(f"{where}: not a version-1 pytree spec")
    return _tree_node(doc[1], where, max_depth)


def _tree_node(raw: Any, where: str, max_depth: int) -> Tree:
    raw = _dict(raw, where)
    kind = raw.get("type")
    children = tuple(_tree_node(c, where, max_depth) for c in _list(raw.get("children_spec", []), where))
    if kind is None:
        return Tree("leaf")
    if kind in ("builtins.tuple", "builtins.list"):
        return Tree(kind.removeprefix("builtins."), children)
    if kind in ("builtins.dict", "collections.OrderedDict"):
        keys = _list(loads(_str(raw.get("context"), where).encode(), where, max_depth), where)
        if len(keys) != len(children) or not all(isinstance(k, str | int) for k in keys):
            raise ArchiveRejected(f"{where}: a dict whose keys do not match its values")
        return Tree("dict", children, tuple(keys))
    raise ArchiveRejected(f"{where}: a {str(kind)[:80]!r} is refused (tensors, tuples, lists and dicts only)")


def _in_tree(tree: Tree) -> tuple[int, tuple[str, ...]]:
    """(positional count, keyword names) of an in_spec ``((args...), {kwargs...})`` whose leaves are tensors."""
    if tree.kind != "tuple" or len(tree.children) != 2 or tree.children[1].kind != "dict":
        raise ArchiveRejected("in_spec: not (args, kwargs)")
    args, kwargs = tree.children
    if any(c.kind != "leaf" for c in (*args.children, *kwargs.children)):
        raise ArchiveRejected("in_spec: nested inputs are refused; forward() must take tensors")
    if not all(isinstance(k, str) for k in kwargs.keys):
        raise ArchiveRejected("in_spec: keyword inputs must have string names")
    return len(args.children), tuple(str(k) for k in kwargs.keys)


def _sym_int(raw: Any, where: str) -> int | str:
    kind, body = _union(raw, where)
    if kind == "as_int":
        return _literal(body, int, where)
    if kind == "as_expr":
        text = _str(_dict(body, where).get("expr_str"), where)
        return _SYMBOL.sub(r"\1", text)[:64]
    raise ArchiveRejected(f"{where}: a size of kind {kind!r} is refused")


def _code(raw: Any, known: Container[int]) -> bool:
    """Whether ``raw`` is an integer enum code in ``known`` (JSON may hold a list or object there instead)."""
    return isinstance(raw, int) and not isinstance(raw, bool) and raw in known


def _union(raw: Any, where: str) -> tuple[str, Any]:
    if not isinstance(raw, dict) or len(raw) != 1:
        raise ArchiveRejected(f"{where}: expected an object with one field")
    ((key, value),) = raw.items()
    return key, value


def _dict(raw: Any, where: str) -> dict:
    if not isinstance(raw, dict):
        raise ArchiveRejected(f"{where}: expected an object")
    return raw


def _list(raw: Any, where: str) -> list:
    if not isinstance(raw, list):
        raise ArchiveRejected(f"{where}: expected a list")
    return raw


def _str(raw: Any, where: str) -> str:
    if not isinstance(raw, str):
        raise ArchiveRejected(f"{where}: expected a string")
    return raw


def _bool(raw: Any, where: str) -> bool:
    if not isinstance(raw, bool):
        raise ArchiveRejected(f"{where}: expected true or false")
    return raw


def _literal(raw: Any, kind: type, where: str) -> Any:
    if not isinstance(raw, kind) or (kind is int and isinstance(raw, bool)):
        raise ArchiveRejected(f"{where}: expected {kind.__name__}")
    if isinstance(raw, int) and not -MAX_INT <= raw <= MAX_INT:
        raise ArchiveRejected(f"{where}: {str(raw)[:40]} is outside int64")
    return raw


def _float(raw: Any, where: str) -> float:
    """A float; torch writes infinities and NaN as the strings ``Infinity``, ``-Infinity`` and ``NaN``."""
    if isinstance(raw, str) and raw in ("Infinity", "-Infinity", "NaN"):
        return float(raw.lower().replace("infinity", "inf"))
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise ArchiveRejected(f"{where}: expected a number")
    try:
        return float(raw)
    except OverflowError:
        raise ArchiveRejected(f"{where}: {str(raw)[:40]}... is out of range") from None
