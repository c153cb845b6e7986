"""STAND-IN (ingest branch only): the `formats` engineer owns this module (issue 18, interface in iface18.md).

Just enough of ``open_dataset`` for arrays datasets, so that jobs on uploaded datasets run in this branch's tests:
the canonical ``.npy`` files memory-mapped, looked up like the old ``np.load`` result. The lead keeps the real one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


class DatasetView(dict):
    """``view["x"]``, ``"y" in view``, ``view.files``: what the kinds read from an arrays dataset."""

    @property
    def files(self) -> list[str]:
        return list(self)


def open_dataset(files: dict[str, Path], meta: dict) -> DatasetView:
    return DatasetView(
        {name.removesuffix(".npy"): np.load(path, mmap_mode="r", allow_pickle=False) for name, path in files.items()}
    )
