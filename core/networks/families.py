"""The Hugging Face model types this service builds from a config, and where each keeps its sizes.

An allowlist, not transformers' own registry: every family here is a native transformers class (no remote code),
is built with ``AutoModelForCausalLM``/``AutoModelForMaskedLM``, and names its sizes in known fields, so the API
can check and bound a config without importing transformers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Task = Literal["causal_lm", "masked_lm"]


@dataclass(frozen=True)
class Family:
    task: Task
    hidden: str
    layers: str
    heads: str
    vocab: str
    context: str
    ffn: str | None  # the feed-forward width field, when the family has one

    @property
    def size_fields(self) -> tuple[str, ...]:
        return (self.hidden, self.layers, self.heads, self.vocab, self.context)


_DECODER = Family(
    "causal_lm",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "vocab_size",
    "max_position_embeddings",
    "intermediate_size",
)
_ENCODER = Family(
    "masked_lm",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "vocab_size",
    "max_position_embeddings",
    "intermediate_size",
)

FAMILIES: dict[str, Family] = {
    "gpt2": Family("causal_lm", "n_embd", "n_layer", "n_head", "vocab_size", "n_positions", "n_inner"),
    "llama": _DECODER,
    "mistral": _DECODER,
    "qwen2": _DECODER,
    "gpt_neox": _DECODER,
    "bert": _ENCODER,
    "roberta": _ENCODER,
    "distilbert": Family(
        "masked_lm", "dim", "n_layers", "n_heads", "vocab_size", "max_position_embeddings", "hidden_dim"
    ),
}
