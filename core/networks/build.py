"""Build the network a ``model`` spec names (torch; workers, run modules and the inspector only).

Every model comes back as a ``BuiltModel``: the module, its task and one loss, so a technique trains or analyses
any of them the same way. Hugging Face configs are built with ``AutoModelFor*.from_config`` (native classes only:
the spec refused remote code); weights come only from safetensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

import torch
import torch.nn.functional as F
from torch import nn

from core.networks import builtin
from core.networks.spec import BuiltinModel, HFConfigModel
from core.networks.weights import load_weights

Task = Literal["classify", "causal_lm", "masked_lm", "sequence_classification"]
MASK_EVERY = 7  # masked LM: one position in seven is masked (the mask token is the last id of the vocabulary)
LABELLED: tuple[Task, ...] = ("classify", "sequence_classification")
UNPOSITIONED_CONTEXT = 2048
"""The sequence length a model without positions (Mamba, RWKV's state) is fed at most, as a context."""


@dataclass
class BuiltModel:
    module: nn.Module
    task: Task
    vocab_size: int | None = None
    context: int | None = None
    hf: bool = False
    labels: int | None = None  # a sequence classifier's classes

    @property
    def tokens(self) -> bool:
        return self.task != "classify"

    @property
    def usable_ids(self) -> int | None:
        """Token ids a dataset may hold: the whole vocabulary, but for a masked LM's last id (its mask token)."""
        if self.vocab_size is None:
            return None
        return self.vocab_size - 1 if self.task == "masked_lm" else self.vocab_size

    def logits(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.module(input_ids=inputs).logits if self.hf else self.module(inputs)

    def predictions(
        self, inputs: torch.Tensor, targets: torch.Tensor | None = None, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, labels) flattened to (n, classes) and (n,), -100 where nothing is predicted: ``targets``
        (classify), the next token (causal LM) or the masked tokens (masked LM; ``mask`` marks them, default one
        position in ``MASK_EVERY``; the mask token is the vocabulary's last id)."""
        if self.task in LABELLED:
            assert targets is not None  # a classifier's batch comes with its labels
            return self.logits(inputs), targets
        if self.task == "causal_lm":
            logits = self.logits(inputs)[:, :-1]
            return logits.reshape(-1, logits.shape[-1]), inputs[:, 1:].reshape(-1)
        if mask is None:
            mask = torch.arange(inputs.shape[1], device=inputs.device) % MASK_EVERY == MASK_EVERY // 2
            mask = mask.expand_as(inputs)
        assert self.vocab_size is not None  # set for every token model
        masked = torch.where(mask, torch.full_like(inputs, self.vocab_size - 1), inputs)
        labels = torch.where(mask, inputs, torch.full_like(inputs, -100))  # no boolean indexing: runs on meta
        logits = self.logits(masked)
        return logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)

    def loss(
        self, inputs: torch.Tensor, targets: torch.Tensor | None = None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Mean cross-entropy over the predicted positions (see ``predictions``)."""
        return F.cross_entropy(*self.predictions(inputs, targets, mask), ignore_index=-100)

    @torch.no_grad()
    def scores(self, inputs: torch.Tensor, targets: torch.Tensor | None = None) -> tuple[float, float, int]:
        """(summed cross-entropy, correct predictions, predictions) over a chunk, for held-out evaluation."""
        logits, labels = self.predictions(inputs, targets)
        keep = labels != -100
        logits, labels = logits[keep], labels[keep]
        loss = float(F.cross_entropy(logits, labels, reduction="sum"))
        return loss, float((logits.argmax(-1) == labels).sum()), int(labels.numel())

    def sample_inputs(
        self,
        batch: int,
        seq_len: int | None,
        features: int | None,
        classes: int | None,
        device: torch.device | str,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Random inputs of the right shape (on ``meta``: shapes only, nothing allocated): (inputs, targets or
        None)."""
        if self.tokens:
            assert self.vocab_size is not None  # set for every token model
            assert self.context is not None  # set for every token model
            length = min(seq_len or self.context, self.context)
            labels = self.labels
            if str(device) == "meta":
                ids = torch.empty(batch, length, dtype=torch.long, device="meta")
                return ids, None if labels is None else torch.empty(batch, dtype=torch.long, device="meta")
            ids = torch.randint(0, self.vocab_size, (batch, length), generator=generator)
            y = None if labels is None else torch.randint(0, labels, (batch,), generator=generator).to(device)
            return ids.to(device), y
        assert features is not None and classes is not None  # a classifier is built for a dataset's sizes
        if str(device) == "meta":
            return (torch.empty(batch, features, device="meta"), torch.empty(batch, dtype=torch.long, device="meta"))
        x = torch.randn(batch, features, generator=generator)
        y = torch.randint(0, classes, (batch,), generator=generator)
        return x.to(device), y.to(device)


def build(
    spec: BuiltinModel | HFConfigModel,
    *,
    features: int | None = None,
    classes: int | None = None,
    device: torch.device | str = "cpu",
    weights: Sequence[Path] | None = None,
) -> BuiltModel:
    """The model, on ``device`` (``meta`` builds shapes only), in the spec's run dtype. ``weights``: safetensors
    files to load (memory-mapped, ``core.networks.weights``)."""
    with torch.device(device):
        built = _build_hf(spec) if isinstance(spec, HFConfigModel) else _build_builtin(spec, features, classes)
    if isinstance(spec, HFConfigModel) and spec.dtype != "float32":
        built.module.to(getattr(torch, spec.dtype))
    if weights is not None:
        load_weights(built.module, weights)
    return built


def _build_builtin(spec: BuiltinModel, features: int | None, classes: int | None) -> BuiltModel:
    if spec.arch in ("transformer_encoder", "causal_lm"):
        causal = spec.arch == "causal_lm"
        module: nn.Module = builtin.TokenTransformer(
            spec.vocab_size, spec.hidden, spec.heads, spec.depth, spec.context, causal
        )
        return BuiltModel(module, "causal_lm" if causal else "masked_lm", spec.vocab_size, spec.context)
    if features is None or classes is None:
        raise ValueError("model.arch: the MLP and CNNs need a dataset with features and labels")
    if spec.arch == "mlp":
        module = builtin.mlp(features, spec.hidden, spec.depth, classes)
    elif spec.arch == "cnn":
        module = builtin.small_cnn(features, spec.channels, spec.hidden, classes)
    else:
        module = builtin.resnet(features, spec.channels, spec.depth, classes)
    return BuiltModel(module, "classify")


def _build_hf(spec: HFConfigModel) -> BuiltModel:
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoModelForSequenceClassification

    from core.networks.architectures import instantiate, read_sizes, resolve_task

    task = resolve_task(spec.config, spec.task)
    config = instantiate(spec.config)
    sizes = read_sizes(config, task)
    auto = {
        "causal_lm": AutoModelForCausalLM,
        "masked_lm": AutoModelForMaskedLM,
        "sequence_classification": AutoModelForSequenceClassification,
    }[task]
    module = auto.from_config(config, dtype=torch.float32)
    context = sizes["context"] or UNPOSITIONED_CONTEXT
    return BuiltModel(module, task, sizes["vocab"], context, hf=True, labels=sizes["labels"])


class PooledEncoder(nn.Module):
    """A Transformer's hidden states pooled to one vector per sequence: the mean over positions, or the first
    position (``cls``). Only the encoder is kept (no vocabulary head), so every parameter gets a gradient."""

    def __init__(self, built: BuiltModel, pooling: str = "mean"):
        super().__init__()
        if not built.tokens:
            raise ValueError("model: pooled towers need a Transformer")
        self.body: nn.Module
        if built.hf:
            self.body = cast(nn.Module, built.module.base_model)  # a transformers model's encoder
        else:
            built.module.head = None  # type: ignore[assignment]  # drops the vocabulary head; nn.Module takes None
            self.body = built.module
        self.hf, self.pooling = built.hf, pooling

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = (
            self.body(input_ids=ids).last_hidden_state
            if self.hf
            else cast(builtin.TokenTransformer, self.body).encode(ids)
        )
        return h[:, 0] if self.pooling == "cls" else h.mean(dim=1)
