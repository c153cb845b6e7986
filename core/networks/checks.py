"""The n > c·ln N check on a model's own sizes (docs/techniques.md#embedding_dim): its token embedding against its
vocabulary and its attention head against its context. Plain arithmetic on the sizes; a Hugging Face config's sizes
are read from transformers' config class (``core.networks.architectures``, imported only when one is asked: workers)."""

from __future__ import annotations

import math

from core.dimension import supported_limit
from core.networks.spec import TRANSFORMER_ARCHS, BuiltinModel, HFConfigModel

NOT_APPLICABLE = {
    "no_heads": "the model has no attention heads (a state-space or recurrent model): no head size to check",
    "no_context": "the model has no position embeddings or context length: no context to check the head against",
}


def embedding_sizes(model: BuiltinModel | HFConfigModel) -> dict[str, int | None] | None:
    """hidden, vocab, head_dim and context of a Transformer spec (head_dim and context None where the architecture
    has none); None for a model without token embeddings."""
    if isinstance(model, HFConfigModel):
        from core.networks.architectures import instantiate, read_sizes, resolve_task

        s = read_sizes(instantiate(model.config), resolve_task(model.config, model.task))
        return {"hidden": s["hidden"], "vocab": s["vocab"], "head_dim": s["head_dim"], "context": s["context"]}
    if model.arch not in TRANSFORMER_ARCHS:
        return None
    return {
        "hidden": model.hidden,
        "vocab": model.vocab_size,
        "head_dim": model.hidden // model.heads,
        "context": model.context,
    }


def _row(what: str, n: int, big_n: int, field: str, coefficient: float) -> dict:
    bound = coefficient * math.log(big_n) if big_n >= 2 else 0.0
    return {
        "what": what,
        "applies": True,
        "n": n,
        "N": big_n,
        "N_is": field,
        "bound": bound,
        "ok": n > bound,
        **supported_limit(n, coefficient),
    }


def model_checks(sizes: dict[str, int | None], coefficient: float) -> dict:
    """One row per embedding-like dimension (a row that does not apply says why), each with how large an N its n
    supports (``core.dimension.supported_limit``: ln and log10 of N_max, exact at any size)."""
    hidden, vocab, head_dim, context = sizes["hidden"], sizes["vocab"], sizes["head_dim"], sizes["context"]
    assert hidden is not None and vocab is not None  # every token model has both
    rows = [_row("token_embedding", hidden, vocab, "vocab_size", coefficient)]
    if head_dim is None or context is None:
        why = NOT_APPLICABLE["no_heads" if head_dim is None else "no_context"]
        rows.append({"what": "attention_head", "applies": False, "n": head_dim, "N": context, "ok": None, "why": why})
    else:
        rows.append(_row("attention_head", head_dim, context, "context", coefficient))
    return {"rows": rows, "all_ok": all(r["ok"] for r in rows if r["applies"])}
