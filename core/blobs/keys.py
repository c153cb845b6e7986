"""Where each kind of blob lives in the store (one layout, used by the API, the workers and the migration)."""

from __future__ import annotations

import uuid
from urllib.parse import quote


def dataset_key(dataset_id: uuid.UUID | str) -> str:
    return f"datasets/{dataset_id}.npz"


def model_weights_key(model_id: uuid.UUID | str) -> str:
    return f"models/{model_id}/model.safetensors"


def job_artifacts_prefix(job_id: uuid.UUID | str) -> str:
    """Every attempt's artifacts of a job (retention removes them all)."""
    return f"artifacts/{job_id}/"


def attempt_prefix(job_id: uuid.UUID | str, attempt: int) -> str:
    return f"{job_artifacts_prefix(job_id)}{int(attempt)}/"


def artifact_key(job_id: uuid.UUID | str, attempt: int, name: str) -> str:
    """Per attempt, so that a stale attempt's late write can never replace the live attempt's artifact."""
    return f"{attempt_prefix(job_id, attempt)}{quote(name, safe='._-')}"
