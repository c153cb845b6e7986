"""The n > c·ln N check on a model's own sizes (docs/techniques.md#embedding_dim): its token embedding against its
vocabulary and its attention head against its context. Plain arithmetic on the config, so it needs neither torch nor a
build."""

from __future__ import annotations

import math

from core.networks.spec import TRANSFORMER_ARCHS, BuiltinModel, HFConfigModel, hf_sizes


def embedding_sizes(model: BuiltinModel | HFConfigModel) -> dict[str, int] | None:
    """hidden, vocab, head_dim and context of a Transformer spec; None for a model without token embeddings."""
    if isinstance(model, HFConfigModel):
        s = hf_sizes(model.config)
        assert s["head_dim"] is not None  # the model's validation refused a config without one
        return {"hidden": s["hidden"], "vocab": s["vocab"], "head_dim": s["head_dim"], "context": s["context"]}
    if model.arch not in TRANSFORMER_ARCHS:
        return None
    return {
        "hidden": model.hidden,
        "vocab": model.vocab_size,
        "head_dim": model.hidden // model.heads,
        "context": model.context,
    }


def largest_supported(n: int, coefficient: float) -> int:
    """The largest N with n > c·ln N, i.e. N < e^(n/c)."""
    limit = n / coefficient
    if limit > 43:  # e^43 > 2^62: any vocabulary or context fits
        return 2**62
    largest = math.ceil(math.exp(limit)) - 1
    while largest > 1 and not n > coefficient * math.log(largest):  # float rounding at the edge
        largest -= 1
    return largest


def model_checks(sizes: dict[str, int], coefficient: float) -> dict:
    """One row per embedding-like dimension, and the largest context the head size supports."""
    rows = []
    for what, n, big_n, field in (
        ("token_embedding", sizes["hidden"], sizes["vocab"], "vocab_size"),
        ("attention_head", sizes["head_dim"], sizes["context"], "context"),
    ):
        bound = coefficient * math.log(big_n) if big_n >= 2 else 0.0
        rows.append(
            {
                "what": what,
                "n": n,
                "N": big_n,
                "N_is": field,
                "bound": bound,
                "ok": n > bound,
                "largest_N_supported": largest_supported(n, coefficient),
            }
        )
    return {
        "rows": rows,
        "max_context_for_head_dim": largest_supported(sizes["head_dim"], coefficient),
        "all_ok": all(r["ok"] for r in rows),
    }
