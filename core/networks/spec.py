"""The ``model`` parameter: one discriminated union on ``source`` (builtin | hf_config | uploaded | exported). No
torch here.

What a config may hold is decided here, without transformers: bounded JSON (finite numbers, 64-bit integers, a
bounded size) and no ``auto_map`` or other remote-code switch (transformers would otherwise build such a config
silently as its native class). Whether its ``model_type`` has a native class with the head its task needs, its sizes
(``SIZE_CAPS``) and its parameter count (``MAX_PARAMS``, counted on the ``meta`` build) are checked by the
inspector's child process (``core.networks.architectures``), before a model is stored or a job is queued.
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_CONFIG_BYTES = 64 * 1024
MAX_PARAMS = 20_000_000_000
# a config is data; these keys make transformers reach for code or for other repositories
REFUSED_KEYS = {
    "auto_map": "names remote code (custom classes from a repository); only native transformers classes are built",
    "trust_remote_code": "remote code is never executed here",
    "quantization_config": "quantized models need extra kernels; send a float config",
    "custom_pipelines": "names remote code",
}
SIZE_CAPS = {
    "hidden": 65_536,
    "layers": 512,
    "heads": 1_024,
    "kv_heads": 1_024,
    "head_dim": 65_536,
    "vocab": 4_000_000,
    "context": 1_048_576,
    "labels": 100_000,
}
HFTask = Literal["causal_lm", "masked_lm", "sequence_classification"]
TASK_DOC = (
    "the head to build: causal_lm, masked_lm or sequence_classification; default: the head the config's "
    "architectures names, else the model type's language-model head (masked for encoders, causal otherwise)"
)


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


RunDtype = Literal["float32", "bfloat16"]
DTYPE_DOC = (
    "what the model runs in: float32, or bfloat16 (half the memory of weights, gradients and optimizer state); "
    "stored weights of any float dtype are converted to it when loaded"
)


class BuiltinModel(_Spec):
    """A network the service defines: an MLP, a small CNN, a ResNet-style CNN, or a Transformer (encoder with a
    masked-LM head, or a causal LM). The MLP and CNNs read the dataset's rows; the Transformers read tokens."""

    source: Literal["builtin"]
    arch: Literal["mlp", "cnn", "resnet", "transformer_encoder", "causal_lm"] = "mlp"
    hidden: int = Field(64, ge=4, le=4096, description="MLP width, CNN dense width or Transformer d_model")
    depth: int = Field(2, ge=1, le=48, description="MLP hidden layers, ResNet blocks or Transformer layers")
    channels: int = Field(8, ge=2, le=256, description="CNN/ResNet: channels of the first convolution")
    heads: int = Field(4, ge=1, le=64, description="Transformer: attention heads (hidden must divide by it)")
    vocab_size: int = Field(256, ge=2, le=262_144, description="Transformer: token vocabulary")
    context: int = Field(128, ge=2, le=8192, description="Transformer: largest sequence length (positions)")

    @model_validator(mode="after")
    def _heads_divide(self):
        if self.arch in TRANSFORMER_ARCHS and self.hidden % self.heads:
            raise ValueError(f"heads: hidden={self.hidden} is not a multiple of heads={self.heads}")
        return self


TRANSFORMER_ARCHS = ("transformer_encoder", "causal_lm")


class HFConfigModel(_Spec):
    """A Hugging Face ``config.json`` (its JSON object), randomly initialised, or with the ``model.safetensors``
    of an uploaded model (``weights``: that model's id)."""

    source: Literal["hf_config"]
    config: dict[str, Any]
    weights: UUID | None = Field(None, description="id of an uploaded model whose safetensors weights to load")
    dtype: RunDtype = Field("float32", description=DTYPE_DOC)
    task: HFTask | None = Field(None, description=TASK_DOC)

    @field_validator("config")
    @classmethod
    def _safe_config(cls, config: dict[str, Any]) -> dict[str, Any]:
        check_hf_config(config)
        return config


class UploadedModel(_Spec):
    """A model uploaded with ``POST /v1/models`` (its config, and its weights when it has them)."""

    source: Literal["uploaded"]
    id: UUID
    dtype: RunDtype = Field("float32", description=DTYPE_DOC)


class ExportedModel(_Spec):
    """A ``torch.export`` program (.pt2) uploaded with ``POST /v1/models``: its graph and weights, read by the checked
    reader of ``core.networks.exported`` (no pickle, no code from the archive)."""

    source: Literal["exported"]
    id: UUID


ModelSpec = Annotated[BuiltinModel | HFConfigModel | UploadedModel | ExportedModel, Field(discriminator="source")]
NAMES_MODELS = (HFConfigModel, UploadedModel, ExportedModel)
"""The sources whose UUIDs name stored models (never datasets)."""


MODEL_FIELDS = ("model", "encoder", "decoder", "critic", "generator")
"""The params that may name a stored model: ``model``, and the exported networks of vae_density and gradnorm_gan."""


def uploaded_model_ids(params: BaseModel) -> list[str]:
    """The stored models a job's params name: each ``MODEL_FIELDS`` entry (``uploaded``, ``exported``) and the
    weights an ``hf_config`` loads."""
    named = []
    for field in MODEL_FIELDS:
        model = getattr(params, field, None)
        if isinstance(model, UploadedModel | ExportedModel):
            named.append(str(model.id))
        elif isinstance(model, HFConfigModel) and model.weights is not None:
            named.append(str(model.weights))
    return named


def check_hf_config(config: dict[str, Any]) -> None:
    """Raise ValueError("config.<field>: <why>") unless ``config`` is bounded JSON naming a model type and no remote
    code (the rest is the inspector's: ``core.networks.architectures``)."""
    try:
        _check_numbers(config, "config")
        size = len(json.dumps(config, separators=(",", ":")))
    except RecursionError:
        raise ValueError("config: nested too deep") from None
    if size > MAX_CONFIG_BYTES:
        raise ValueError(f"config: {size} bytes of JSON exceed the limit of {MAX_CONFIG_BYTES}")
    for key, why in REFUSED_KEYS.items():
        if key in config:
            raise ValueError(f"config.{key}: refused, it {why}")
    if not isinstance(config.get("model_type"), str):
        raise ValueError("config.model_type: required, the name of a transformers model type (e.g. 'llama')")


def _check_numbers(value: Any, where: str) -> None:
    """Numbers of a config are finite (PostgreSQL's JSON has no NaN) and integers fit in 64 bits (a size or an id;
    a longer one is a mistake or a probe)."""
    if isinstance(value, dict):
        for key, item in value.items():
            _check_numbers(item, f"{where}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_numbers(item, f"{where}[{i}]")
    elif isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where}: {value} is not a finite number")
    elif isinstance(value, int) and not -(2**63) <= value < 2**64:
        raise ValueError(f"{where}: an integer of {value.bit_length()} bits is beyond 64")
