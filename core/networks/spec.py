"""The ``model`` parameter: one discriminated union on ``source`` (builtin | hf_config | uploaded | exported). No
torch here.

Everything a config can do at build time is decided here, before a job is queued: only allowlisted native
families (``families.FAMILIES``), no ``auto_map`` or other remote-code switch (transformers would otherwise build
such a config silently as its native class), bounded sizes and a bounded analytic parameter count, so that the
``meta``-device build that follows (``inspector``) is cheap whatever the user sends.
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any, Literal, TypedDict
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from core.networks.families import FAMILIES, Family

MAX_CONFIG_BYTES = 64 * 1024
MAX_PARAMS = 20_000_000_000
# a config is data; these keys make transformers reach for code or for other repositories
REFUSED_KEYS = {
    "auto_map": "names remote code (custom classes from a repository); only native transformers classes are built",
    "trust_remote_code": "remote code is never executed here",
    "quantization_config": "quantized models need extra kernels; send a float config",
    "custom_pipelines": "names remote code",
}
SIZE_CAPS = {"hidden": 65_536, "layers": 512, "heads": 1_024, "vocab": 4_000_000, "context": 1_048_576}
SizeRole = Literal["hidden", "layers", "heads", "vocab", "context"]
# in the order of Family.size_fields
SIZE_ROLES: tuple[SizeRole, ...] = ("hidden", "layers", "heads", "vocab", "context")


class HFSizes(TypedDict):
    hidden: int
    layers: int
    heads: int
    vocab: int
    context: int
    ffn: int
    head_dim: int | None  # None: hidden is not a multiple of heads (and the config names no head_dim)


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

    @field_validator("config")
    @classmethod
    def _safe_config(cls, config: dict[str, Any]) -> dict[str, Any]:
        check_hf_config(config)
        return config

    @property
    def family(self) -> Family:
        return FAMILIES[self.config["model_type"]]


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
    """Raise ValueError("config.<field>: <why>") unless ``config`` is a bounded config of an allowlisted family."""
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
    model_type = config.get("model_type")
    if model_type not in FAMILIES:
        raise ValueError(
            f"config.model_type: {model_type!r} is not a family this service builds (one of {sorted(FAMILIES)})"
        )
    family = FAMILIES[model_type]
    sizes = hf_sizes(config)
    for role, name in zip(SIZE_ROLES, family.size_fields):
        value = sizes[role]
        if not 1 <= value <= SIZE_CAPS[role]:
            raise ValueError(f"config.{name}: {value} is outside 1..{SIZE_CAPS[role]}")
    if sizes["head_dim"] is None:
        raise ValueError(f"config.{family.heads}: {family.hidden}={sizes['hidden']} is not a multiple of it")
    count = approx_params(sizes)
    if count > MAX_PARAMS:
        raise ValueError(f"config: about {count:.2e} parameters exceed the limit of {MAX_PARAMS:.0e}")


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


def hf_sizes(config: dict[str, Any]) -> HFSizes:
    """hidden, layers, heads, vocab, context, ffn and head_dim of a family config (ValueError naming a missing or
    non-integer size field)."""
    family = FAMILIES[config["model_type"]]
    given: dict[str, int] = {}
    for role, name in zip(SIZE_ROLES, family.size_fields):
        value = config.get(name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"config.{name}: required, a positive integer (got {value!r})")  # noqa: TRY004 (a 422)
        given[role] = value
    hidden, heads = given["hidden"], given["heads"]
    ffn = config.get(family.ffn) if family.ffn else None
    explicit = config.get("head_dim")
    if isinstance(explicit, int) and not isinstance(explicit, bool) and explicit > 0:
        head_dim: int | None = explicit
    else:
        head_dim = hidden // heads if hidden % heads == 0 else None
    return HFSizes(
        hidden=hidden,
        layers=given["layers"],
        heads=heads,
        vocab=given["vocab"],
        context=given["context"],
        ffn=ffn if isinstance(ffn, int) and not isinstance(ffn, bool) and ffn > 0 else 4 * hidden,
        head_dim=head_dim,
    )


def approx_params(sizes: HFSizes) -> int:
    """Embedding plus, per layer, attention (4·h²) and a gated feed-forward (3·h·ffn): an upper-side estimate that
    bounds the config before anything is built."""
    h = sizes["hidden"]
    return sizes["vocab"] * h + sizes["context"] * h + sizes["layers"] * (4 * h * h + 3 * h * sizes["ffn"])
