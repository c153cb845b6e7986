"""Any native transformers architecture, from a config's JSON (transformers side: the inspector's child process and
workers; the API never imports this).

A config is built when transformers has a native class for its ``model_type`` with the head its task needs: a
causal LM, a masked LM, or a sequence classifier. The task is the spec's ``task`` when given, else the head the
config's ``architectures`` names, else the model type's language-model head (masked for encoders, causal for
decoders). Sizes are read from the instantiated config class (its ``attribute_map`` turns ``n_embd`` or ``dim``
into ``hidden_size``), so a family needs no entry here; models without attention heads or positions (Mamba, RWKV)
report None for them.
"""

from __future__ import annotations

from typing import Any, TypedDict

from transformers import AutoConfig, PretrainedConfig, __version__
from transformers.models.auto import modeling_auto

from core.networks.spec import SIZE_CAPS, HFTask

HEADS: dict[HFTask, dict[str, str]] = {
    "causal_lm": modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    "masked_lm": modeling_auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    "sequence_classification": modeling_auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
}
"""model_type -> the native class name of each head this service builds."""
BASE_HEADS = (modeling_auto.MODEL_MAPPING_NAMES, modeling_auto.MODEL_FOR_PRETRAINING_MAPPING_NAMES)
"""Classes that name no task of their own (the bare model, the pre-training heads): the model type's default."""
EXPERT_FIELDS = ("num_local_experts", "num_experts", "n_routed_experts")
FFN_FIELDS = ("intermediate_size", "ffn_dim", "n_inner", "hidden_dim", "d_ff")
MAX_EXPERTS = 1024


class Sizes(TypedDict):
    hidden: int
    layers: int
    heads: int | None  # None: no attention (Mamba, RWKV)
    kv_heads: int | None
    head_dim: int | None
    vocab: int
    context: int | None  # None: no position embeddings or context length
    labels: int | None  # a sequence classifier's classes
    ffn: int  # the feed-forward width (4·hidden where the config names none)
    experts_per_token: int  # mixture-of-experts models: the experts each token goes through (else 1)


def accepted_types() -> dict[HFTask, list[str]]:
    """The model types accepted for each task with transformers as installed."""
    return {task: sorted(names) for task, names in HEADS.items()}


def _type_of(config: dict[str, Any]) -> str:
    model_type = config.get("model_type")
    if (
        not isinstance(model_type, str)
        or model_type not in HEADS["causal_lm"] | HEADS["masked_lm"] | HEADS["sequence_classification"]
    ):
        raise ValueError(
            f"config.model_type: {model_type!r} has no native causal LM, masked LM or sequence classification "
            f"class in transformers {__version__}"
        )
    return model_type


def _task_from_architectures(model_type: str, config: dict[str, Any]) -> HFTask | None:
    names = config.get("architectures")
    if not isinstance(names, list) or not names:
        return None
    name = names[0]
    for task, heads in HEADS.items():
        if heads.get(model_type) == name:
            return task
    if not isinstance(name, str) or any(base.get(model_type) == name for base in BASE_HEADS):
        return None
    if name.endswith("ForSequenceClassification"):
        return "sequence_classification"
    raise ValueError(
        f"config.architectures: {name} is a head this service does not build (causal LM, masked LM or sequence "
        "classification); set the model's task to build one of those"
    )


def resolve_task(config: dict[str, Any], task: HFTask | None) -> HFTask:
    """The head to build (ValueError naming ``task``, ``config.architectures`` or ``config.model_type``)."""
    model_type = _type_of(config)
    chosen = task or _task_from_architectures(model_type, config)
    if chosen is None:
        if model_type not in HEADS["causal_lm"] | HEADS["masked_lm"]:
            raise ValueError(
                f"config.model_type: {model_type!r} has no native causal or masked LM class in transformers "
                f"{__version__}; set the model's task to sequence_classification to build its classifier"
            )
        encoder = model_type in HEADS["masked_lm"] and not config.get("is_decoder", False)
        chosen = "masked_lm" if encoder or model_type not in HEADS["causal_lm"] else "causal_lm"
    if model_type not in HEADS[chosen]:
        where = "task" if task else "config.architectures"
        raise ValueError(f"{where}: transformers {__version__} has no native {chosen} class for {model_type!r}")
    return chosen


def instantiate(config: dict[str, Any]) -> PretrainedConfig:
    """The native config class filled from the JSON (unknown keys are kept as attributes, as transformers does)."""
    fields = {k: v for k, v in config.items() if k != "model_type"}
    return AutoConfig.for_model(config["model_type"], **fields)


def _field(cfg: PretrainedConfig, name: str) -> str:
    return f"config.{cfg.attribute_map.get(name, name)}"


def _optional(cfg: PretrainedConfig, name: str) -> int | None:
    value = getattr(cfg, name, None)
    return None if value is None else _required(cfg, name)


def _required(cfg: PretrainedConfig, name: str) -> int:
    value = getattr(cfg, name, None)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{_field(cfg, name)}: required, a positive integer (got {value!r})")
    return value


def _ffn(text: PretrainedConfig, hidden: int) -> int:
    widths = (getattr(text, name, None) for name in FFN_FIELDS)
    return next((w for w in widths if isinstance(w, int) and not isinstance(w, bool) and w > 0), 4 * hidden)


def read_sizes(cfg: PretrainedConfig, task: HFTask) -> Sizes:
    """The sizes of a built config (its text part, for a multimodal one), each checked against ``SIZE_CAPS``."""
    text = cfg.get_text_config()
    hidden, heads, head_dim = _required(text, "hidden_size"), _optional(text, "num_attention_heads"), None
    if heads is not None:  # a state-space model's own "head_dim" is no attention head's
        head_dim = _optional(text, "head_dim")
        if head_dim is None and hidden % heads:
            raise ValueError(f"{_field(text, 'num_attention_heads')}: hidden size {hidden} is not a multiple of it")
        head_dim = head_dim or hidden // heads
    sizes = Sizes(
        hidden=hidden,
        layers=_required(text, "num_hidden_layers"),
        heads=heads,
        kv_heads=_optional(text, "num_key_value_heads") or heads,
        head_dim=head_dim,
        vocab=_required(text, "vocab_size"),
        context=_optional(text, "max_position_embeddings"),
        labels=cfg.num_labels if task == "sequence_classification" else None,
        ffn=_ffn(text, hidden),
        experts_per_token=getattr(text, "num_experts_per_tok", None) or 1,
    )
    names = {"hidden": "hidden_size", "layers": "num_hidden_layers", "heads": "num_attention_heads"}
    names |= {"kv_heads": "num_key_value_heads", "head_dim": "head_dim", "vocab": "vocab_size"}
    names |= {"context": "max_position_embeddings", "labels": "num_labels"}
    for role, name in names.items():
        value = sizes[role]  # type: ignore[literal-required]
        if value is not None and value > SIZE_CAPS[role]:
            raise ValueError(f"{_field(text, name)}: {value} is outside 1..{SIZE_CAPS[role]}")
    for name in EXPERT_FIELDS:
        experts = getattr(text, name, None)
        if isinstance(experts, int) and experts > MAX_EXPERTS:
            raise ValueError(f"config.{name}: {experts} is outside 0..{MAX_EXPERTS}")
    return sizes
