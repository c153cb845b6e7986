"""Text as token ids: UTF-8 bytes (ids 0..255) or a ``tokenizer.json`` read by the ``tokenizers`` library (a
declarative file: no Python code runs), and the canonical ``tokens.npy`` (int32, flat) + ``offsets.npy`` (int64,
rows + 1) that hold a column of texts."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np

from core.data.formats.inspection import UploadRejected
from core.data.formats.npyfile import NpyWriter

MAX_TOKENIZER_BYTES = 64 * 1024 * 1024
TOKEN_DTYPE, OFFSET_DTYPE = np.dtype("<i4"), np.dtype("<i8")
BYTE_VOCAB = 256


class TextEncoder:
    """Texts -> arrays of token ids; ``name`` and ``vocab_size`` say which ids they are."""

    def __init__(self, tokenizer: Path | None):
        self._tokenizer = None
        self.name, self.vocab_size = "utf-8 bytes", BYTE_VOCAB
        if tokenizer is not None:
            self._tokenizer = _load(tokenizer)
            self.name = "tokenizer.json"
            self.vocab_size = self._tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(every text's ids end to end, each text's token count)."""
        if self._tokenizer is None:
            raw = [t.encode("utf-8") for t in texts]
            lengths = np.fromiter(map(len, raw), dtype=np.int64, count=len(raw))
            return np.frombuffer(b"".join(raw), dtype=np.uint8).astype(TOKEN_DTYPE), lengths
        ids = [e.ids for e in self._tokenizer.encode_batch(texts, add_special_tokens=False)]
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=TOKEN_DTYPE, count=int(lengths.sum()))
        return flat, lengths


def _load(path: Path):
    from tokenizers import Tokenizer

    size = path.stat().st_size
    if size == 0:
        raise UploadRejected("tokenizer: the file is empty")
    if size > MAX_TOKENIZER_BYTES:
        raise UploadRejected(f"tokenizer: {size} bytes, over the limit of {MAX_TOKENIZER_BYTES} bytes")
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # the library raises a bare Exception for every malformed file
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise UploadRejected(f"tokenizer: not a tokenizer.json the tokenizers library can load ({reason})") from None
    vocab = tokenizer.get_vocab_size(with_added_tokens=True)
    if not 1 <= vocab < 2**31:
        raise UploadRejected(f"tokenizer: a vocabulary of {vocab} ids does not fit int32 token ids")
    return tokenizer


class TokenColumn:
    """One column of texts written as ``<prefix>tokens.npy`` and ``<prefix>offsets.npy``, with length statistics."""

    def __init__(self, out_dir: Path, prefix: str = ""):
        self.prefix = prefix
        self.tokens = NpyWriter(out_dir / f"{prefix}tokens.npy", TOKEN_DTYPE)
        self.offsets = NpyWriter(out_dir / f"{prefix}offsets.npy", OFFSET_DTYPE)
        self.offsets.append(np.zeros(1, dtype=OFFSET_DTYPE))
        self.total = 0
        self.n, self.min, self.max, self.mean, self.m2 = 0, math.inf, 0, 0.0, 0.0

    @property
    def bytes(self) -> int:
        return self.tokens.bytes + self.offsets.bytes

    def add(self, flat: np.ndarray, lengths: np.ndarray) -> None:
        """Rows given as their ids end to end and their token counts."""
        self.tokens.append(flat)
        self.offsets.append(self.total + np.cumsum(lengths))
        self.total += int(lengths.sum())
        n_b = len(lengths)
        if n_b:
            mean_b = float(lengths.mean())
            m2_b = float(((lengths - mean_b) ** 2).sum())
            n = self.n + n_b
            delta = mean_b - self.mean
            self.mean += delta * n_b / n
            self.m2 += m2_b + delta**2 * self.n * n_b / n
            self.n = n
            self.min, self.max = min(self.min, int(lengths.min())), max(self.max, int(lengths.max()))

    def length_stats(self) -> dict:
        return {
            "tokens": self.total,
            "min": int(self.min) if self.n else None,
            "max": self.max if self.n else None,
            "mean": self.mean if self.n else None,
            "std": math.sqrt(self.m2 / self.n) if self.n else None,
        }

    def close(self) -> dict[str, Path]:
        return {
            f"{self.prefix}tokens.npy": self.tokens.close(),
            f"{self.prefix}offsets.npy": self.offsets.close(),
        }

    def discard(self) -> None:
        self.tokens.discard()
        self.offsets.discard()
