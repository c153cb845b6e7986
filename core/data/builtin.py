"""Built-in datasets, generated locally (no download): scikit-learn's bundled digits and synthetic clusters."""

from __future__ import annotations

import numpy as np


def digits() -> dict[str, np.ndarray]:
    """scikit-learn's 8x8 digits (1797 samples), pixels scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return {"x": (bunch.data / 16.0).astype(np.float32), "y": bunch.target.astype(np.int64)}


def clusters(seed: int, n: int = 2000, dim: int = 16, classes: int = 10, spread: float = 0.35) -> dict[str, np.ndarray]:
    """Gaussian clusters around random unit centres: a small classification set with known structure."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    y = rng.integers(0, classes, size=n)
    x = centres[y] + spread * rng.standard_normal((n, dim)) / np.sqrt(dim)
    return {"x": x.astype(np.float32), "y": y.astype(np.int64)}


BUILTIN_DATASETS = {
    "digits": "scikit-learn 8x8 digits, 1797x64 in [0,1], 10 classes",
    "clusters": "synthetic Gaussian clusters, 2000x16, 10 classes",
}


def load_builtin(name: str, seed: int) -> dict[str, np.ndarray]:
    if name == "digits":
        return digits()
    if name == "clusters":
        return clusters(seed)
    raise KeyError(f"unknown built-in dataset {name!r}")
