"""Tiny Hugging Face configs (2 layers, width 64) for the model tests: one encoder and two decoder families."""

from __future__ import annotations

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
TINY = {"bert": TINY_BERT, "gpt2": TINY_GPT2, "llama": TINY_LLAMA}


def hf_model(config: dict):
    """The transformers model the service should build for ``config`` (built here independently)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM

    fields = {k: v for k, v in config.items() if k != "model_type"}
    cfg = AutoConfig.for_model(config["model_type"], **fields)
    auto = AutoModelForMaskedLM if config["model_type"] == "bert" else AutoModelForCausalLM
    return auto.from_config(cfg)
