"""Inspect a model on the ``meta`` device (torch): parameters, layer shapes, and the activation bytes autograd saves
for one micro-batch. Nothing is allocated, so an 8B-parameter config costs seconds, not memory.

Run as ``python -m core.networks.meta_summary``: one JSON request per line on stdin, one JSON answer per line on stdout.
The API keeps it as a child process (``core.networks.inspector``) so that torch and transformers never load into
the API process, and are imported once, not per request.
"""

from __future__ import annotations

import json
import re
import sys

import torch
from pydantic import TypeAdapter, ValidationError

from core.networks.architectures import instantiate, read_sizes
from core.networks.build import BuiltModel, build
from core.networks.spec import MAX_PARAMS, BuiltinModel, HFConfigModel

MAX_LAYERS_LISTED = 400
FIELD_PREFIX = re.compile(r"^(config|weights|model|task)[\w.\[\]-]*: ")


def saved_activation_bytes(
    built: BuiltModel, batch: int, seq_len: int | None, features: int | None, classes: int | None
) -> int:
    """Bytes of the tensors autograd saves for backward in one forward and loss, measured on ``meta`` tensors."""
    seen: dict[int, int] = {}  # storage -> its bytes: a tensor saved by two ops (a conv's input, a norm's) counts once
    kept: list[torch.Tensor] = []  # alive until the sum, so a storage's address is not reused meanwhile

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        seen[storage._cdata] = max(seen.get(storage._cdata, 0), storage.nbytes())
        kept.append(t)
        return t

    built.module.train()
    inputs, targets = built.sample_inputs(batch, seq_len, features, classes, "meta")
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        built.loss(inputs, targets)
    return sum(seen.values())


def modelled_activation_bytes(sizes: dict, batch: int, seq_len: int) -> int:
    """Activations of a Transformer that cannot run on ``meta`` (an op reads a value: DeBERTa's relative positions,
    grouped expert matmuls), in float32: per token and layer, six hidden-sized tensors (norms, q, k, v, attention
    output), two attention maps (scores and softmax) and three feed-forward tensors per expert taken; per token the
    logits, their softmax and its gradient; and a fifth more for what the model keeps besides (within 0.9-1.25x of
    the measured peak on the tests' models)."""
    heads = sizes["heads"] or 0
    per_token = 6 * sizes["hidden"] + 2 * heads * seq_len + 3 * sizes["ffn"] * sizes["experts_per_token"]
    floats = batch * seq_len * (sizes["layers"] * per_token + 3 * sizes["vocab"])
    return int(1.2 * 4 * floats)


def weight_mismatches(built: BuiltModel, header: dict[str, list]) -> list[str]:
    """Names and shapes of a safetensors header against the model (aliases of tied weights may be absent)."""
    own = built.module.state_dict()
    distinct = {n for n, _ in built.module.named_parameters()} | {n for n, _ in built.module.named_buffers()}
    problems = [f"{n}: the model has no such tensor" for n in sorted(set(header) - set(own))]
    problems += [
        f"{n}: shape {list(header[n][1])} in the file, {list(own[n].shape)} in the model"
        for n in sorted(set(header) & set(own))
        if list(header[n][1]) != list(own[n].shape)
    ]
    problems += [f"{n}: missing from the file" for n in sorted((set(own) - set(header)) & distinct)]
    return problems


def _sizes(spec: BuiltinModel | HFConfigModel, built: BuiltModel) -> dict | None:
    """A token model's sizes: a config's as its transformers class reads them, a built-in Transformer's own."""
    if isinstance(spec, HFConfigModel):
        return dict(read_sizes(instantiate(spec.config), built.task))  # type: ignore[arg-type]  # an HF task
    if not built.tokens:
        return None
    heads = spec.heads
    return {
        "hidden": spec.hidden,
        "layers": spec.depth,
        "heads": heads,
        "kv_heads": heads,
        "head_dim": spec.hidden // heads,
        "vocab": spec.vocab_size,
        "context": spec.context,
        "labels": None,
    }


def _activations(built: BuiltModel, sizes: dict | None, shape: dict) -> tuple[int, bool]:
    """(bytes saved for backward by one micro-batch, whether measured on ``meta`` rather than modelled)."""
    batch, seq_len = shape["batch"], shape.get("seq_len")
    try:
        return saved_activation_bytes(built, batch, seq_len, shape.get("features"), shape.get("classes")), True
    except (RuntimeError, NotImplementedError):  # an op with no meta kernel (Mixtral's routing, DeBERTa's attention)
        if sizes is None or built.context is None:
            raise
        return modelled_activation_bytes(sizes, batch, min(seq_len or built.context, built.context)), False


def summarize(request: dict) -> dict:
    spec = TypeAdapter(BuiltinModel | HFConfigModel).validate_python(request["model"])
    shape = request.get("input") or {}
    built = build(spec, features=shape.get("features"), classes=shape.get("classes"), device="meta")
    named = list(built.module.named_parameters())
    n_params = sum(p.numel() for _, p in named)
    if n_params > MAX_PARAMS:
        raise ValueError(
            f"config: {n_params:,} parameters exceed the limit of {MAX_PARAMS:.0e} (counted on the built model)"
        )
    out = {
        "task": built.task,
        "n_params": n_params,
        "n_tensors": len(named),
        "sizes": _sizes(spec, built),
        "labels": built.labels,
        "layers": [{"name": n, "shape": list(p.shape)} for n, p in named[:MAX_LAYERS_LISTED]],
        "vocab_size": built.vocab_size,
        "context": built.context,
    }
    if request.get("weights_header") is not None:
        problems = weight_mismatches(built, request["weights_header"])
        if problems:
            raise ValueError(f"weights: {len(problems)} tensors do not match the config ({'; '.join(problems[:3])})")
    if request.get("input"):
        out["activation_bytes"], out["activations_measured"] = _activations(built, _sizes(spec, built), shape)
    return out


def answer(line: str) -> dict:
    """One request line to one answer: {"summary": ...} or {"error": "<field>: <why>"}."""
    try:
        return {"summary": summarize(json.loads(line))}
    except (ValueError, ValidationError) as exc:
        message = str(exc).splitlines()[0][:2000]
        return {"error": message if FIELD_PREFIX.match(message) else f"config: cannot be built ({message})"}
    except Exception as exc:  # noqa: BLE001 (transformers refusing a config its own way is the config's fault)
        return {"error": f"config: cannot be built ({type(exc).__name__}: {str(exc)[:500]})"}


def main() -> int:
    """Serve requests, one JSON object per line, until stdin closes."""
    for line in sys.stdin:
        print(json.dumps(answer(line)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
