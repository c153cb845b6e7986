"""Where each kind of blob lives in the store (one layout, used by the API, the workers and the migrations)."""

from __future__ import annotations

import uuid
from urllib.parse import quote


def dataset_key(dataset_id: uuid.UUID | str) -> str:
    """The single canonical .npz of a dataset before migration 0011 (kept by it, read by its downgrade)."""
    return f"datasets/{dataset_id}.npz"


def dataset_prefix(dataset_id: uuid.UUID | str) -> str:
    """Everything of one dataset: its raw upload, tokenizer and canonical files."""
    return f"datasets/{dataset_id}/"


def dataset_file_key(dataset_id: uuid.UUID | str, name: str) -> str:
    """One canonical file (``x.npy``, ``tokens.npy``, ...) of a dataset."""
    return f"{dataset_prefix(dataset_id)}{quote(name, safe='._-')}"


def dataset_raw_key(dataset_id: uuid.UUID | str) -> str:
    """The upload as the client sent it, once received whole (the worker validates it, then removes it)."""
    return f"{dataset_prefix(dataset_id)}upload.raw"


def dataset_tokenizer_key(dataset_id: uuid.UUID | str) -> str:
    return f"{dataset_prefix(dataset_id)}tokenizer.json"


def upload_partial_key(upload_id: uuid.UUID | str) -> str:
    """The bytes of a resumable upload received so far (a partial object, ``core.blobs.store``)."""
    return f"uploads/{upload_id}"


def tokenizer_staging_prefix(upload_id: uuid.UUID | str) -> str:
    """The tokenizer.json files of one upload as they stream in, before one is placed at ``dataset_tokenizer_key``."""
    return f"uploads/tokenizers/{upload_id}/"


def tokenizer_staging_key(upload_id: uuid.UUID | str, token: str) -> str:
    """One request's tokenizer.json (a key per request, so two requests never write the same one)."""
    return f"{tokenizer_staging_prefix(upload_id)}{quote(token, safe='')}"


def model_weights_key(model_id: uuid.UUID | str) -> str:
    """A model's single safetensors file (as migration 0007 placed it; ``model_file_key`` of that name)."""
    return model_file_key(model_id, "model.safetensors")


def model_prefix(model_id: uuid.UUID | str) -> str:
    """Every file of one stored model: its safetensors file or shards, or its .pt2."""
    return f"models/{model_id}/"


def model_file_key(model_id: uuid.UUID | str, name: str) -> str:
    return f"{model_prefix(model_id)}{quote(name, safe='._-')}"


def model_upload_prefix(upload_id: uuid.UUID | str) -> str:
    """The partial objects of a resumable model upload, one per file."""
    return f"uploads/models/{upload_id}/"


def model_upload_partial_key(upload_id: uuid.UUID | str, index: int) -> str:
    return f"{model_upload_prefix(upload_id)}{int(index)}"


def job_artifacts_prefix(job_id: uuid.UUID | str) -> str:
    """Every attempt's artifacts of a job (retention removes them all)."""
    return f"artifacts/{job_id}/"


def attempt_prefix(job_id: uuid.UUID | str, attempt: int) -> str:
    return f"{job_artifacts_prefix(job_id)}{int(attempt)}/"


def artifact_key(job_id: uuid.UUID | str, attempt: int, name: str) -> str:
    """Per attempt, so that a stale attempt's late write can never replace the live attempt's artifact."""
    return f"{attempt_prefix(job_id, attempt)}{quote(name, safe='._-')}"
