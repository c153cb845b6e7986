"""Tiny Hugging Face configs (2 layers, width 64) for the model tests: one per family, decoders, encoders and
state-space models, each with the head the service should build for it (written here, not derived from the
service's own rules)."""

from __future__ import annotations

_SIZES = {"hidden_size": 64, "num_hidden_layers": 2, "vocab_size": 512, "max_position_embeddings": 64}
_IDS = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
_DECODER = {**_SIZES, **_IDS, "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 128}
_ENCODER = {**_SIZES, "num_attention_heads": 4, "intermediate_size": 128, "pad_token_id": 0}

TINY_BERT = {
    "model_type": "bert",
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 128,
    "vocab_size": 512,
    "max_position_embeddings": 64,
}
TINY_GPT2 = {
    "model_type": "gpt2",
    "n_embd": 64,
    "n_layer": 2,
    "n_head": 2,
    "vocab_size": 512,
    "n_positions": 64,
    "bos_token_id": 0,
    "eos_token_id": 0,
}
TINY_LLAMA = {
    "model_type": "llama",
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "intermediate_size": 128,
    "vocab_size": 512,
    "max_position_embeddings": 64,
}
TINY_QWEN3 = {"model_type": "qwen3", **_DECODER, "head_dim": 32}  # explicit head_dim: 32, not 64/4 = 16
TINY_MAMBA = {"model_type": "mamba", "hidden_size": 64, "num_hidden_layers": 2, "vocab_size": 512, "state_size": 8}
TINY_BERT_CLASSIFIER = {**TINY_BERT, "architectures": ["BertForSequenceClassification"], "num_labels": 3}

TINY = {"bert": TINY_BERT, "gpt2": TINY_GPT2, "llama": TINY_LLAMA}
"""The families of the upload tests."""

FAMILIES: dict[str, tuple[dict, str]] = {
    "gpt2": (TINY_GPT2, "causal_lm"),
    "llama": (TINY_LLAMA, "causal_lm"),
    "mistral": ({"model_type": "mistral", **_DECODER}, "causal_lm"),
    "mixtral": (
        {"model_type": "mixtral", **_DECODER, "num_local_experts": 4, "num_experts_per_tok": 2},
        "causal_lm",
    ),
    "qwen2": ({"model_type": "qwen2", **_DECODER}, "causal_lm"),
    "qwen3": (TINY_QWEN3, "causal_lm"),
    "gemma": ({"model_type": "gemma", **_DECODER, "head_dim": 16}, "causal_lm"),
    "gemma2": ({"model_type": "gemma2", **_DECODER, "head_dim": 16, "sliding_window": 32}, "causal_lm"),
    "gemma3_text": ({"model_type": "gemma3_text", **_DECODER, "head_dim": 16, "sliding_window": 32}, "causal_lm"),
    "phi": ({"model_type": "phi", **_DECODER}, "causal_lm"),
    "phi3": ({"model_type": "phi3", **_DECODER}, "causal_lm"),
    "olmo2": ({"model_type": "olmo2", **_DECODER}, "causal_lm"),
    "starcoder2": ({"model_type": "starcoder2", **_DECODER}, "causal_lm"),
    "gpt_neox": (
        {"model_type": "gpt_neox", **_SIZES, **_IDS, "num_attention_heads": 4, "intermediate_size": 128},
        "causal_lm",
    ),
    "falcon": ({"model_type": "falcon", **_SIZES, **_IDS, "num_attention_heads": 4}, "causal_lm"),
    "opt": (
        {"model_type": "opt", **_SIZES, **_IDS, "num_attention_heads": 4, "ffn_dim": 128, "word_embed_proj_dim": 64},
        "causal_lm",
    ),
    "mamba": (TINY_MAMBA, "causal_lm"),
    "bert": (TINY_BERT, "masked_lm"),
    "roberta": ({"model_type": "roberta", **_ENCODER, "pad_token_id": 1, "max_position_embeddings": 66}, "masked_lm"),
    "distilbert": (
        {"model_type": "distilbert", "dim": 64, "n_layers": 2, "n_heads": 4, "hidden_dim": 128, "vocab_size": 512},
        "masked_lm",
    ),
    "electra": ({"model_type": "electra", **_ENCODER, "embedding_size": 64}, "masked_lm"),
    "deberta-v2": ({"model_type": "deberta-v2", **_ENCODER}, "masked_lm"),
    "modernbert": (
        {
            "model_type": "modernbert",
            **_ENCODER,
            "global_attn_every_n_layers": 2,
            "local_attention": 16,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "cls_token_id": 1,
            "sep_token_id": 2,
        },
        "masked_lm",
    ),
    "bert_classifier": (TINY_BERT_CLASSIFIER, "sequence_classification"),
}
"""Per family: a tiny config and the head it is built with."""

LLAMA_3_70B = {
    "model_type": "llama",
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 8192,
    "intermediate_size": 28672,
    "num_hidden_layers": 80,
    "num_attention_heads": 64,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "max_position_embeddings": 8192,
    "rope_theta": 500000.0,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,
}
"""Meta-Llama-3-70B's public config.json sizes: 70,553,706,496 parameters."""


def hf_model(config: dict, task: str | None = None):
    """The transformers model the service should build for ``config`` (built here independently); ``task``: the
    head, default the masked LM for BERT and the causal LM otherwise."""
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForMaskedLM,
        AutoModelForSequenceClassification,
    )

    task = task or ("masked_lm" if config["model_type"] == "bert" else "causal_lm")
    fields = {k: v for k, v in config.items() if k != "model_type"}
    cfg = AutoConfig.for_model(config["model_type"], **fields)
    auto = {
        "causal_lm": AutoModelForCausalLM,
        "masked_lm": AutoModelForMaskedLM,
        "sequence_classification": AutoModelForSequenceClassification,
    }[task]
    return auto.from_config(cfg)
