"""Matplotlib (Agg) figures rendered to PNG bytes, so techniques can store plots as artifacts."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def new_figure(width: float = 7.0, height: float = 4.5):
    """A figure and axes with the project's default size."""
    return plt.subplots(figsize=(width, height), dpi=100)


def to_png(fig) -> bytes:
    """Render and close ``fig`` (closing matters: workers run many jobs in one process)."""
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
