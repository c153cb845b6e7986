"""STAND-IN (ingest branch only): the `formats` engineer owns this package (issue 18, interface in iface18.md).

It implements the agreed interface just far enough for the upload pipeline's tests: .npz and .csv through the old
parser (``core.data.uploads.parse_upload``), written as the canonical ``x.npy``/``y.npy``. At merge the lead keeps
the real package from the `formats` branch and drops this file.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.data.uploads import UploadRejected, parse_upload

__all__ = ["Inspection", "UploadRejected", "convert"]


@dataclass(frozen=True)
class Inspection:
    format: str
    kind: str
    rows: int
    columns: int | None
    has_labels: bool
    preview: dict
    files: dict[str, Path]


def convert(
    raw: Path,
    *,
    filename: str,
    out_dir: Path,
    label_column: str | None = None,
    tokenizer: Path | None = None,
    max_stored_bytes: int,
) -> Inspection:
    if tokenizer is not None:
        raise UploadRejected("tokenizer: only JSON Lines text takes a tokenizer")
    with open(raw, "rb") as fh:
        parsed = parse_upload(filename, fh, label_column, max_stored_bytes)
    files: dict[str, Path] = {}
    with np.load(io.BytesIO(parsed.npz), allow_pickle=False) as npz:
        for name in npz.files:
            files[f"{name}.npy"] = out_dir / f"{name}.npy"
            np.save(files[f"{name}.npy"], npz[name])
        x = npz["x"]
        labels = npz["y"] if "y" in npz.files else None
        preview = {
            "shape": list(x.shape),
            "rows": parsed.rows,
            "sample": x[:5].tolist(),
            "stats": {
                "min": x[:, :64].min(axis=0).tolist(),
                "max": x[:, :64].max(axis=0).tolist(),
                "mean": x[:, :64].mean(axis=0).tolist(),
                "std": x[:, :64].std(axis=0).tolist(),
            },
        }
        if labels is not None:
            values, counts = np.unique(labels, return_counts=True)
            preview["label_balance"] = {str(v): int(c) for v, c in zip(values, counts, strict=True)}
    return Inspection(
        format=filename.rsplit(".", 1)[-1].lower(),
        kind="arrays",
        rows=parsed.rows,
        columns=parsed.columns,
        has_labels=parsed.has_labels,
        preview=preview,
        files=files,
    )
