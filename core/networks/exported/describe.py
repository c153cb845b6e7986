"""What ``GET /v1/models/{id}`` shows of an exported model: inputs, outputs, parameters, operators (no torch)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from core.networks.exported.archive import Archive
from core.networks.exported.chain import find_chain
from core.networks.exported.footprint import footprint
from core.networks.exported.program import Program, Tree


def describe(archive: Archive) -> dict[str, Any]:
    """A JSON-ready summary. Shapes are the exported ones; a dynamic size shows as its symbol (``"s77"``).

    ``outputs`` has the structure the model returns (a tensor's entry, or lists and objects of them); ``chain``
    says whether gradient_penalty_bound can take it."""
    program = archive.program

    def tensors(kind: str) -> list[dict[str, Any]]:
        out = []
        for p in program.of_kind(kind):
            meta = archive.tensors[p.target].meta
            entry = {"name": p.target, "dtype": meta.dtype, "shape": list(meta.shape)}
            out.append({**entry, "trainable": meta.requires_grad} if kind == "parameter" else entry)
        return out

    parameters = tensors("parameter")
    counts = [archive.tensors[p["name"]].numel for p in parameters]
    return {
        "model": archive.model,
        "torch_version": program.torch_version,
        "inputs": [_value(program, p.name) for p in program.inputs()],
        "outputs": _outputs(program, program.out_tree, iter(program.outputs)),
        "parameters": parameters,
        "buffers": tensors("buffer"),
        "constants": tensors("constant"),
        "n_params": sum(counts),
        "n_trainable": sum(n for n, p in zip(counts, parameters) if p["trainable"]),
        "n_nodes": len(program.nodes),
        "operators": dict(sorted(Counter(node.op.qualified for node in program.nodes).items())),
        "chain": _chain(program),
        "footprint": footprint(program),
    }


def _chain(program: Program) -> dict[str, Any]:
    """Whether the graph is a chain of affine layers and elementwise activations (``chain.find_chain``): its layers,
    or the first node that breaks it and why. Kept with the model, so a job is judged at submit without the file."""
    chain = find_chain(program)
    layers = [
        {"node": c.node, "op": c.op, "weight": c.weight, "bias": c.bias, "activations": list(c.activations)}
        for c in chain.layers
    ]
    return {"is_chain": chain.is_chain, "layers": layers, "breaks_at": chain.breaks_at, "reason": chain.reason}


def _value(program: Program, name: str) -> dict[str, Any]:
    meta = program.tensor_values.get(name)
    if meta is None:
        return {"name": name}
    return {"name": name, "dtype": meta.dtype, "shape": list(meta.shape)}


def _outputs(program: Program, tree: Tree, names: Any) -> Any:
    if tree.kind == "leaf":
        name = next(names)
        return None if name is None else _value(program, name)
    children = [_outputs(program, child, names) for child in tree.children]
    return {str(k): c for k, c in zip(tree.keys, children)} if tree.kind == "dict" else children
