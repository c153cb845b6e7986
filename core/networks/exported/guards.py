"""An archive's ``guards_code`` read as data: relations between input sizes, never run as code (no torch).

torch writes each guard as Python source (``L['x'].size()[0] == L['y'].size()[0]`` when two inputs share a dynamic
batch) and ``ExportedProgram.module()`` exec()s it, so an archive can put any statement there. Here a guard is parsed
by ``ast.parse`` (which builds a syntax tree and runs nothing) and accepted only when it is made of integers, input
sizes and strides (``L['x'].size()[0]``), ``+ - * // %``, comparisons, ``and``/``or``/``not`` and ``Max``/``Min``;
any other name, attribute, call or constant refuses the archive. Accepted guards become small tuples that
``first_broken`` evaluates on each call's input shapes.
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from core.networks.exported.errors import ArchiveRejected

MAX_GUARDS = 256
MAX_CHARS = 500
MAX_DEPTH = 48
_COMPARE: dict[type, Callable[[Any, Any], bool]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
}
_ARITHMETIC: dict[type, Callable[[int, int], int]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
}


@dataclass(frozen=True)
class Guard:
    """One accepted guard: its text (for the error message) and its expression as nested tuples."""

    text: str
    expr: tuple


def parse_guards(codes: Any, inputs: dict[str, int]) -> tuple[Guard, ...]:
    """The guards of ``codes`` (the JSON list); ``inputs`` maps each input's name to its position."""
    if not isinstance(codes, list) or len(codes) > MAX_GUARDS:
        raise ArchiveRejected(f"program: guards_code must be a list of at most {MAX_GUARDS} strings")
    guards = []
    for text in codes:
        if not isinstance(text, str) or len(text) > MAX_CHARS:
            raise ArchiveRejected(f"program: guards_code holds a non-string or one longer than {MAX_CHARS} characters")
        try:
            tree = ast.parse(text, mode="eval")
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            raise ArchiveRejected(f"program: guards_code {text[:80]!r} is not an expression") from None
        guards.append(Guard(text, _expr(tree.body, text, inputs, 0)))
    return tuple(guards)


def first_broken(guards: Sequence[Guard], shapes: Sequence[tuple[Sequence[int], Sequence[int]]]) -> str | None:
    """The first guard that the inputs' (sizes, strides) break, or None when all hold."""
    for guard in guards:
        try:
            if not _evaluate(guard.expr, shapes):
                return guard.text
        except (IndexError, ZeroDivisionError):
            return guard.text
    return None


def _expr(node: ast.expr, text: str, inputs: dict[str, int], depth: int) -> tuple:
    """``node`` as a tuple tree, refusing anything outside the guard grammar."""
    if depth > MAX_DEPTH:
        raise ArchiveRejected(f"program: guards_code {text[:80]!r} is nested too deeply")

    def sub(child: ast.expr) -> tuple:
        return _expr(child, text, inputs, depth + 1)

    if isinstance(node, ast.Constant) and type(node.value) is int and abs(node.value) <= 2**63:
        return ("int", node.value)
    if isinstance(node, ast.Compare) and all(type(op) in _COMPARE for op in node.ops):
        pairs = tuple((_COMPARE[type(op)], sub(right)) for op, right in zip(node.ops, node.comparators))
        return ("compare", sub(node.left), pairs)
    if isinstance(node, ast.BoolOp):
        return ("and" if isinstance(node.op, ast.And) else "or", tuple(sub(v) for v in node.values))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not | ast.USub):
        return ("not" if isinstance(node.op, ast.Not) else "neg", sub(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _ARITHMETIC:
        return ("arith", _ARITHMETIC[type(node.op)], sub(node.left), sub(node.right))
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in ("Max", "Min")
        and node.args
        and not node.keywords
    ):
        return (node.func.id.lower(), tuple(sub(a) for a in node.args))
    if isinstance(node, ast.Subscript):
        size = _size(node, inputs)
        if size is not None:
            return size
    raise ArchiveRejected(
        f"program: guards_code {text[:80]!r} is code, not a relation between input sizes; this service never runs "
        "code from an archive"
    )


def _size(node: ast.Subscript, inputs: dict[str, int]) -> tuple | None:
    """``L['x'].size()[d]`` or ``L['x'].stride()[d]`` as ("size"/"stride", input position, d)."""
    call, index = node.value, node.slice
    if not (isinstance(index, ast.Constant) and type(index.value) is int and index.value >= 0):
        return None
    if not (isinstance(call, ast.Call) and not call.args and not call.keywords):
        return None
    attribute = call.func
    if not (isinstance(attribute, ast.Attribute) and attribute.attr in ("size", "stride")):
        return None
    source = attribute.value
    if not (isinstance(source, ast.Subscript) and isinstance(source.value, ast.Name) and source.value.id == "L"):
        return None
    name = source.slice
    if not (isinstance(name, ast.Constant) and isinstance(name.value, str) and name.value in inputs):
        return None
    return (attribute.attr, inputs[name.value], index.value)


def _evaluate(expr: tuple, shapes: Sequence[tuple[Sequence[int], Sequence[int]]]) -> Any:
    kind = expr[0]
    if kind == "int":
        return expr[1]
    if kind in ("size", "stride"):
        sizes, strides = shapes[expr[1]]
        return (sizes if kind == "size" else strides)[expr[2]]
    if kind == "compare":
        left = _evaluate(expr[1], shapes)
        for compare, right_expr in expr[2]:
            right = _evaluate(right_expr, shapes)
            if not compare(left, right):
                return False
            left = right
        return True
    if kind in ("and", "or"):
        lazily = (_evaluate(v, shapes) for v in expr[1])
        return all(lazily) if kind == "and" else any(lazily)
    if kind in ("not", "neg"):
        value = _evaluate(expr[1], shapes)
        return (not value) if kind == "not" else -value
    if kind == "arith":
        return expr[1](_evaluate(expr[2], shapes), _evaluate(expr[3], shapes))
    values = [_evaluate(v, shapes) for v in expr[1]]
    return max(values) if kind == "max" else min(values)
