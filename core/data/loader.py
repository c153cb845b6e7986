"""One way in for every dataset a kind trains on: the canonical files of an upload, memory-mapped.

``open_dataset(files, meta)`` maps the ``.npy`` files that ``core.data.formats.convert`` wrote (read-only: the
pages come from the file as rows are touched, so a dataset larger than memory can be sampled in batches) and returns
a view of the dataset's kind:

- ``ArraysView``: dict-like (``view["x"]``, ``view["y"]``, ``"y" in view``, ``view.files``), as kinds read arrays;
- ``TextView``: rows of token ids (``view[i]``), fixed-length windows of the token stream, batches of rows;
- ``PairsView``: the same for its ``query`` and ``document`` columns, row-aligned.

Built-in datasets (arrays in memory) are wrapped in an ``ArraysView`` by ``as_view``, so a kind reads both alike.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

DATASET_KINDS = ("arrays", "text", "pairs")


class ArraysView(Mapping[str, np.ndarray]):
    """``x`` (rows, columns) and, when labelled, ``y`` (rows,): in memory or memory-mapped."""

    kind = "arrays"

    def __init__(self, arrays: Mapping[str, np.ndarray]):
        if "x" not in arrays:
            raise ValueError("dataset: an arrays dataset needs x")
        x, y = arrays["x"], arrays.get("y")
        if y is not None and (y.ndim != 1 or len(y) != len(x)):
            raise ValueError(f"dataset: y of shape {y.shape} is not one label per row of x ({len(x)} rows)")
        self._arrays = dict(arrays)

    def __getitem__(self, name: str) -> np.ndarray:
        return self._arrays[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._arrays)

    def __len__(self) -> int:
        return len(self._arrays)

    @property
    def files(self) -> list[str]:
        """The array names, like ``np.load``'s ``NpzFile.files``."""
        return list(self._arrays)

    @property
    def rows(self) -> int:
        return len(self._arrays["x"])

    @property
    def columns(self) -> int:
        x = self._arrays["x"]
        return int(np.prod(x.shape[1:])) if x.ndim > 1 else 1


class TokenRows:
    """A column of texts as token ids: row i is ``tokens[offsets[i]:offsets[i + 1]]``."""

    def __init__(self, tokens: np.ndarray, offsets: np.ndarray, name: str = "text"):
        if tokens.ndim != 1 or offsets.ndim != 1 or len(offsets) < 1:
            raise ValueError(f"dataset: {name} tokens and offsets must be 1-D")
        if offsets[0] != 0 or offsets[-1] != len(tokens):
            raise ValueError(f"dataset: {name} offsets do not span its {len(tokens)} tokens")
        self.tokens, self.offsets, self.name = tokens, offsets, name

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        if not -len(self) <= i < len(self):
            raise IndexError(f"row {i} of {len(self)}")
        i %= len(self)
        return np.asarray(self.tokens[self.offsets[i] : self.offsets[i + 1]])

    def lengths(self, rows: np.ndarray | None = None) -> np.ndarray:
        """Token counts of ``rows`` (all rows by default)."""
        if rows is None:
            return np.diff(np.asarray(self.offsets))
        rows = np.asarray(rows)
        return np.asarray(self.offsets[rows + 1]) - np.asarray(self.offsets[rows])

    def tiled(self, rows: np.ndarray, length: int) -> np.ndarray:
        """int64 (len(rows), length): each row's first ``length`` tokens, a shorter row repeated to fill them (so
        that a pooled representation sees only the row's own tokens, with no padding id)."""
        out = np.empty((len(rows), length), dtype=np.int64)
        for j, i in enumerate(rows):
            out[j] = np.resize(self[int(i)], length)
        return out

    def windows(self, starts: np.ndarray, length: int) -> np.ndarray:
        """int64 (len(starts), length): ``length`` consecutive ids of the whole token stream from each start (rows
        packed end to end, as language models are trained)."""
        if len(self.tokens) < length:
            raise ValueError(f"dataset: {len(self.tokens)} tokens are fewer than one window of {length}")
        out = np.empty((len(starts), length), dtype=np.int64)
        for j, s in enumerate(starts):
            out[j] = self.tokens[int(s) : int(s) + length]
        return out

    def batches(self, batch_size: int) -> Iterator[list[np.ndarray]]:
        """Every row in order, ``batch_size`` rows at a time."""
        for start in range(0, len(self), batch_size):
            yield [self[i] for i in range(start, min(start + batch_size, len(self)))]


class TextView(TokenRows):
    """A text dataset: one column of token ids; ``vocab_size`` is the tokenizer's (256 for UTF-8 bytes)."""

    kind = "text"

    def __init__(self, tokens: np.ndarray, offsets: np.ndarray, vocab_size: int | None):
        super().__init__(tokens, offsets, "text")
        self.vocab_size = vocab_size


class PairsView:
    """Query/document pairs: two row-aligned columns of token ids."""

    kind = "pairs"

    def __init__(self, query: TokenRows, document: TokenRows, vocab_size: int | None):
        if len(query) != len(document):
            raise ValueError(f"dataset: {len(query)} queries but {len(document)} documents")
        self.query, self.document, self.vocab_size = query, document, vocab_size

    def __len__(self) -> int:
        return len(self.query)


DatasetView = ArraysView | TextView | PairsView


def open_dataset(files: Mapping[str, Path], meta: Mapping) -> DatasetView:
    """The view of a converted dataset: ``files`` maps canonical names (``x.npy``, ...) to local paths, ``meta``
    is its Inspection as a dict (``kind`` and ``preview`` are read)."""
    kind = meta.get("kind", "arrays")
    vocab = (meta.get("preview") or {}).get("vocab_size")

    def mapped(name: str) -> np.ndarray:
        if name not in files:
            raise ValueError(f"dataset: a {kind} dataset needs {name} (has {sorted(files)})")
        return np.load(files[name], mmap_mode="r", allow_pickle=False)

    if kind == "arrays":
        arrays = {"x": mapped("x.npy")}
        if "y.npy" in files:
            arrays["y"] = mapped("y.npy")
        return ArraysView(arrays)
    if kind == "text":
        return TextView(mapped("tokens.npy"), mapped("offsets.npy"), vocab)
    if kind == "pairs":
        query = TokenRows(mapped("query_tokens.npy"), mapped("query_offsets.npy"), "query")
        document = TokenRows(mapped("document_tokens.npy"), mapped("document_offsets.npy"), "document")
        return PairsView(query, document, vocab)
    raise ValueError(f"dataset: unknown dataset kind {kind!r} (one of {DATASET_KINDS})")


def as_view(data: DatasetView | Mapping[str, np.ndarray]) -> DatasetView:
    """A view of what a context's ``load_dataset`` returned: views pass through, a mapping of arrays is wrapped."""
    if isinstance(data, (ArraysView, TextView, PairsView)):
        return data
    return ArraysView(data)
