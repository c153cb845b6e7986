"""How much memory one row of a batch costs an exported program, read from the shapes its graph recorded (no torch).

Every value the graph computes has a declared dtype and shape; a dynamic size is a symbol (the batch). A value
with a symbol in its shape grows with the batch and is counted per row (symbols as 1); one without is counted once.
Autograd keeps at most these values for backward, so their sum bounds a forward's saved activations.
"""

from __future__ import annotations

import math

from core.networks.exported.program import DTYPES, Program

_BYTES = {name: size for name, size in DTYPES.values()}


def footprint(program: Program) -> dict[str, int]:
    """``bytes_per_row`` (values that grow with the batch, per row) and ``fixed_bytes`` (the others)."""
    per_row = fixed = 0
    for meta in program.tensor_values.values():
        sizes = [s for s in meta.shape if isinstance(s, int)]
        nbytes = _BYTES.get(meta.dtype, 8) * math.prod(sizes)
        if len(sizes) < len(meta.shape):
            per_row += nbytes
        else:
            fixed += nbytes
    return {"bytes_per_row": per_row, "fixed_bytes": fixed}
