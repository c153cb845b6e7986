"""The built-in networks (torch): MLP, small CNN, ResNet-style CNN, and a Transformer encoder / causal LM.

Image models read each row as a square one-channel image; Transformers read token ids and return per-position
vocabulary logits (``encode`` gives the hidden states, for pooling).
"""

from __future__ import annotations

import math

import torch
from torch import nn


def square_side(features: int) -> int:
    side = math.isqrt(features)
    if side * side != features or side < 4:
        raise ValueError(f"model.arch: CNNs need square images as rows; {features} features is not a square >= 16")
    return side


def mlp(features: int, hidden: int, depth: int, classes: int) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Linear(features, hidden), nn.ReLU()]
    for _ in range(depth - 1):
        layers += [nn.Linear(hidden, hidden), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(hidden, classes))


def small_cnn(features: int, channels: int, hidden: int, classes: int) -> nn.Sequential:
    side, c = square_side(features), channels
    return nn.Sequential(
        nn.Unflatten(1, (1, side, side)),
        nn.Conv2d(1, c, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(c, 2 * c, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(2 * c * (side // 2) ** 2, hidden),
        nn.ReLU(),
        nn.Linear(hidden, classes),
    )


class ResidualBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus the input (a 1x1 projection when the shape changes), then ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(),
            nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False),
            nn.BatchNorm2d(c_out),
        )
        self.skip = (
            nn.Identity()
            if stride == 1 and c_in == c_out
            else nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.skip(x))


def resnet(features: int, channels: int, blocks: int, classes: int) -> nn.Sequential:
    """A stem, ``blocks`` residual blocks (the second half at twice the channels and half the resolution), global
    average pooling and a linear classifier."""
    side, c = square_side(features), channels
    stages: list[nn.Module] = []
    width = c
    for i in range(blocks):
        widen = blocks > 1 and i == blocks // 2
        stages.append(ResidualBlock(width, 2 * width if widen else width, 2 if widen else 1))
        width = 2 * width if widen else width
    return nn.Sequential(
        nn.Unflatten(1, (1, side, side)),
        nn.Conv2d(1, c, 3, 1, 1, bias=False),
        nn.BatchNorm2d(c),
        nn.ReLU(),
        *stages,
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(width, classes),
    )


class TokenTransformer(nn.Module):
    """Token and learned position embeddings, pre-norm encoder layers (causal when ``causal``), a final norm and a
    vocabulary head."""

    def __init__(self, vocab: int, hidden: int, heads: int, depth: int, context: int, causal: bool):
        super().__init__()
        self.causal = causal
        self.tok = nn.Embedding(vocab, hidden)
        self.pos = nn.Embedding(context, hidden)
        layer = nn.TransformerEncoderLayer(
            hidden, heads, 4 * hidden, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(hidden)
        self.head = nn.Linear(hidden, vocab, bias=False)

    def encode(self, ids: torch.Tensor) -> torch.Tensor:
        length = ids.shape[1]
        h = self.tok(ids) + self.pos(torch.arange(length, device=ids.device))
        mask = nn.Transformer.generate_square_subsequent_mask(length, device=ids.device) if self.causal else None
        return self.norm(self.blocks(h, mask=mask, is_causal=self.causal))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.encode(ids))
