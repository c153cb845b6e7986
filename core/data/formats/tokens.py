"""Text as token ids: UTF-8 bytes (ids 0..255) or a ``tokenizer.json`` run by the ``tokenizers`` library in a
bounded child process (a declarative file: no Python code runs, but its regular expressions do), and the canonical
``tokens.npy`` (int32, flat) + ``offsets.npy`` (int64, rows + 1) that hold a column of texts."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from core.data.formats.inspection import UploadRejected
from core.data.formats.npyfile import NpyWriter
from core.data.formats.tokenizer_process import TokenizerFailed, TokenizerProcess

MAX_TOKENIZER_BYTES = 64 * 1024 * 1024
TOKEN_DTYPE, OFFSET_DTYPE = np.dtype("<i4"), np.dtype("<i8")
BYTE_VOCAB = 256


class TextEncoder:
    """Texts -> arrays of token ids; ``name`` and ``vocab_size`` say which ids they are. A tokenizer runs in its own
    bounded process (``tokenizer_process``); ``close`` stops it."""

    def __init__(self, tokenizer: Path | None):
        self._process: TokenizerProcess | None = None
        self.name, self.vocab_size = "utf-8 bytes", BYTE_VOCAB
        if tokenizer is not None:
            _check_file(tokenizer)
            try:
                self._process = TokenizerProcess(tokenizer)
            except TokenizerFailed as exc:
                raise UploadRejected(f"tokenizer: {exc}") from None
            self.name, self.vocab_size = "tokenizer.json", self._process.vocab_size

    def encode(self, texts: list[str], max_tokens: int) -> tuple[np.ndarray, np.ndarray] | None:
        """(every text's ids end to end, as uint8 bytes or int32 ids, each text's token count), or None when that
        would be more than ``max_tokens`` ids; raises ``TokenizerFailed`` when the tokenizer fails on them."""
        if self._process is None:
            raw = [t.encode("utf-8") for t in texts]
            lengths = np.fromiter(map(len, raw), dtype=np.int64, count=len(raw))
            if int(lengths.sum()) > max_tokens:
                return None
            # bytes as uint8 (the column's writer widens them to int32 a block at a time): a line may be 16 MiB
            return np.concatenate([np.frombuffer(data, dtype=np.uint8) for data in raw]), lengths
        return self._process.encode(texts, max_tokens)

    def close(self) -> None:
        if self._process is not None:
            self._process.close()
            self._process = None


def _check_file(path: Path) -> None:
    size = path.stat().st_size
    if size == 0:
        raise UploadRejected("tokenizer: the file is empty")
    if size > MAX_TOKENIZER_BYTES:
        raise UploadRejected(f"tokenizer: {size} bytes, over the limit of {MAX_TOKENIZER_BYTES} bytes")


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
