"""An in-memory RunContext: run any technique from plain Python (notebooks, unit tests) without the service."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from core.data.loader import DatasetView
from core.networks.stored import ModelFiles
from core.renders import Recipe, render
from core.techniques.base import JobTimedOut


@dataclass
class LocalContext:
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    seed: int = 0
    timeout_s: float | None = None
    datasets: dict[str, DatasetView | Mapping[str, np.ndarray]] = field(default_factory=dict)
    models: dict[str, ModelFiles] = field(default_factory=dict)
    metrics: list[tuple[int, str, float]] = field(default_factory=list)
    artifacts: dict[str, tuple[bytes, str]] = field(default_factory=dict)
    progress_log: list[tuple[float, str]] = field(default_factory=list)
    _started: float = field(default_factory=time.monotonic)

    def progress(self, fraction: float, message: str = "") -> None:
        self.progress_log.append((float(fraction), message))

    def metric(self, step: int, name: str, value: float) -> None:
        self.metrics.append((int(step), name, float(value)))

    def artifact(self, name: str, data: bytes | Recipe, media_type: str) -> None:
        self.artifacts[name] = (render(data.as_json()) if isinstance(data, Recipe) else data, media_type)

    def check_cancelled(self) -> None:
        if self.timeout_s is not None and time.monotonic() - self._started > self.timeout_s:
            raise JobTimedOut(f"ran past timeout_s={self.timeout_s}")

    def load_dataset(self, dataset_id: str) -> DatasetView | Mapping[str, np.ndarray]:
        return self.datasets[dataset_id]

    def load_model(self, model_id: str) -> ModelFiles:
        return self.models[model_id]

    def series(self, name: str) -> list[float]:
        """Values of one metric in logging order (a convenience for tests and notebooks)."""
        return [v for _, n, v in self.metrics if n == name]
