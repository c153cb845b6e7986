"""What each kind asks of the exported programs its params name, judged at submit from the stored description
(``describe``): the graph's inputs and outputs, whether it is a chain, and whether a step fits a worker (no torch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Role:
    """One exported network of a kind: the params field naming it, what it maps (for messages), how many outputs
    it may return, whether it must be a chain, and the batch field with the rows one step sends through it (times
    the copies autograd keeps: a double backward keeps about three)."""

    field: str
    maps: str
    outputs: tuple[int, ...]
    rows: tuple[str, int]
    chain: bool = False
    score: bool = False


ROLES: dict[str, tuple[Role, ...]] = {
    "gradient_penalty_bound": (Role("model", "x -> logits", (1,), ("batch_size", 3), chain=True),),
    "vae_density": (
        Role("encoder", "x -> (mean, log-variance)", (2,), ("batch_size", 3)),
        Role("decoder", "z -> logits, mean, or (mean, log-scale)", (1, 2), ("batch_size", 3)),
    ),
    "init_averaging": (Role("model", "x -> outputs", (1,), ("batch", 2)),),
    "gradnorm_gan": (
        Role("critic", "x -> score", (1,), ("batch", 6), score=True),
        Role("generator", "z -> x", (1,), ("batch", 2)),
    ),
}
"""The kinds that take exported programs, and in which params fields."""


def refusal(role: Role, described: dict[str, Any]) -> str | None:
    """Why the described program cannot play ``role`` (None when it can). Shapes after the first are as exported
    (static); a score is one value per row."""
    n_inputs = len(described["inputs"])
    outputs = described["outputs"]
    n_outputs = len(outputs) if isinstance(outputs, list) else 1
    if n_inputs != 1:
        return f"the program takes {n_inputs} inputs; {role.field} maps {role.maps} from one tensor"
    if n_outputs not in role.outputs:
        return f"the program returns {n_outputs} tensors; {role.field} maps {role.maps}"
    if role.score and isinstance(outputs, dict) and outputs.get("shape", [None, 1])[1:] not in ([], [1]):
        return f"the program returns {outputs['shape'][1:]} values per row; {role.field} maps {role.maps} (one)"
    chain = described.get("chain")
    if role.chain and chain is not None and not chain["is_chain"]:
        return (
            f"not a chain of affine layers and elementwise activations: node {chain['breaks_at']!r} breaks it "
            f"({chain['reason']})"
        )
    return None


def step_bytes(role: Role, described: dict[str, Any], params: Any) -> int:
    """Memory one training step of ``params`` needs for this network: weights, gradients and two Adam moments,
    plus the graph's values for the step's rows (``footprint``)."""
    batch_field, copies = role.rows
    rows = int(getattr(params, batch_field)) * int(getattr(params, "train_k", 1) if role.field == "decoder" else 1)
    foot = described.get("footprint", {"bytes_per_row": 0, "fixed_bytes": 0})
    return 16 * int(described["n_params"]) + copies * (foot["fixed_bytes"] + rows * foot["bytes_per_row"])


def _width(entry: Any) -> int | None:
    """Values per row of a described input or output tensor (None: a dynamic size past the batch, or not one)."""
    shape = entry.get("shape") if isinstance(entry, dict) else None
    if not isinstance(shape, list) or not all(isinstance(s, int) for s in shape[1:]):
        return None
    return math.prod(shape[1:])


SIZES_AGREE = (("encoder", "outputs", "decoder", "inputs"), ("generator", "outputs", "critic", "inputs"))
"""(field, side, field, side) pairs whose widths per row must agree: the latent z, the generated x."""
TAKES_ROWS = ("model", "encoder", "critic")
"""The parts that read the dataset's rows."""


def sizes_refusal(described: dict[str, dict[str, Any]], columns: int | None) -> tuple[str, str] | None:
    """(field, why) when the programs' widths per row disagree with each other or with the dataset's ``columns``
    (None: unknown at submit); ``described``: each exported program's description by params field."""
    for field in TAKES_ROWS:
        if field in described and columns is not None:
            width = _width(described[field]["inputs"][0])
            if width is not None and width != columns:
                return field, f"the program takes {width} values per row; the dataset's rows have {columns}"
    for source, side, target, other in SIZES_AGREE:
        if source in described and target in described:
            out = described[source][side]
            width = _width(out[0] if isinstance(out, list) else out)
            takes = _width(described[target][other][0])
            if width is not None and takes is not None and width != takes:
                return target, f"the program takes {takes} values per row; the {source} gives {width}"
    return None
