"""Datasets a job can name: built-in generators and datasets a user uploaded (referenced by UUID)."""

from core.data.builtin import BUILTIN_DATASETS, load_builtin
from core.data.refs import load_arrays, load_dataset, uploaded_dataset_ids

__all__ = ["BUILTIN_DATASETS", "load_builtin", "load_arrays", "load_dataset", "uploaded_dataset_ids"]
