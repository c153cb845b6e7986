"""Service settings, read from the environment (prefix ``GRADLAB_``).

The defaults are the embedded configuration: a SQLite file and kombu's filesystem
transport under ``data_dir``, so that ``gradlab up`` needs no server at all.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GRADLAB_", extra="ignore")

    data_dir: Path = Field(default=Path("data"), description="SQLite file and filesystem broker live here.")
    database_url: str | None = Field(default=None, description="SQLAlchemy URL; default: SQLite in data_dir.")
    broker_url: str | None = Field(default=None, description="Celery broker URL; default: filesystem in data_dir.")
    blob_url: str | None = Field(
        default=None,
        description="Where datasets, model weights and artifacts are "
        "stored: file:///dir or s3://bucket/prefix; default: file://<data_dir>/blobs.",
    )
    blob_s3_endpoint_url: str | None = Field(
        default=None,
        description="S3-compatible endpoint (MinIO, Ceph, ...); "
        "default: AWS. Credentials come from the usual AWS_* variables.",
    )
    queues: str = Field(
        default="cpu,gpu,auto,quick,validation",
        description="Comma-separated queues a worker consumes: the device queues (cpu, gpu, auto) hold long jobs; "
        "quick and validation are the lanes of quick jobs and dataset validations.",
    )
    lane_queues: str = Field(
        default="quick,validation",
        description="What the worker that `gradlab up` keeps for the lanes consumes.",
    )
    quick_job_max_s: float = Field(
        default=30.0,
        ge=0,
        description="A job whose timeout_s is at most this goes to the quick lane (0: no quick lane).",
    )
    extra_kinds: str = Field(
        default="",
        description="Comma-separated importable packages, each with a spec and a "
        "run module like core/techniques/<kind>/, registered beside the built-in kinds.",
    )
    broker_key_prefix: str = Field(default="", description="Prefix of every Redis key (shared Redis servers).")

    torch_threads: int = Field(default=0, ge=0, description="torch threads per worker process; 0: torch's default")
    heartbeat_interval_s: float = 2.0
    heartbeat_timeout_s: float = 30.0
    requeue_queued_after_s: float = Field(
        default=60.0,
        description="A queued job's message is published again "
        "this long after it was sent, then at doubling intervals (jobs.repository.sweep).",
    )
    sweep_interval_s: float = 5.0
    queue_position_exact_up_to: int = Field(
        default=1000,
        ge=1,
        description="A queued job's position is exact up to this many jobs ahead, then 'more than' this many; a GET "
        "of it reads at most this many queued rows (core.fleet.outlook).",
    )
    queue_snapshot_max_age_s: float = Field(
        default=1.0,
        ge=0,
        description="How stale the per-process snapshot of a queue that places queued jobs may be.",
    )
    max_attempts: int = 3
    stop_grace_s: float = Field(
        default=30.0,
        gt=0,
        description="A job still running this long past its timeout_s, "
        "or after it was cancelled, has its worker process restarted.",
    )
    metric_flush_rows: int = 2000
    retention_days: float = Field(
        default=0.0,
        ge=0,
        description="gradlab prune removes metric rows and artifacts of jobs finished this many days ago "
        "(its --older-than default); 0: no default, --older-than must be given.",
    )
    metric_flush_interval_s: float = 1.0

    auth: Literal["required", "disabled"] = Field(
        default="required", description="'disabled' only for a loopback-bound API (the embedded default)."
    )
    auth_cache_s: float = Field(
        default=2.0,
        ge=0,
        description="An API process remembers an authenticated key this "
        "long (a revoked key works until then); 0: look every key up.",
    )
    max_active_jobs_per_tenant: int = 1000
    submissions_per_minute_per_tenant: int = 6000
    max_request_bytes: int = 1024 * 1024
    max_upload_bytes: int = 32 * 1024 * 1024
    max_dataset_bytes: int = Field(
        default=8 * 1024**3,
        gt=0,
        description="Cap on an uploaded dataset as stored (its canonical files: float32 x and int64 y, or token ids); "
        "judged from the upload's headers before its data is read where the format declares its shape.",
    )
    max_inline_dataset_bytes: int = Field(
        default=256 * 1024**2,
        gt=0,
        description="Cap on what a one-shot POST /v1/datasets may store: it is converted in the API process before "
        "the answer, so a small compressed file that unpacks to gigabytes goes through a resumable upload (validated "
        "by a worker) instead.",
    )
    max_dataset_upload_bytes: int = Field(
        default=8 * 1024**3,
        gt=0,
        description="Cap on a resumable dataset upload as sent (POST /v1/datasets/uploads declares its size).",
    )
    max_upload_chunk_bytes: int = Field(
        default=256 * 1024**2, gt=0, description="Cap on one chunk (request body) of a resumable upload."
    )
    max_open_uploads_per_tenant: int = Field(
        default=16,
        ge=1,
        description="Resumable dataset uploads a tenant may have open (uploading, not expired) at once (409 beyond).",
    )
    max_open_upload_bytes_per_tenant: int = Field(
        default=16 * 1024**3,
        gt=0,
        description="Bytes a tenant's open resumable dataset uploads may declare together (409 beyond): what an "
        "abandoned upload can hold on disk until it expires.",
    )
    max_tokenizer_bytes: int = Field(default=16 * 1024**2, gt=0, description="Cap on a tokenizer.json sent with text.")
    upload_expiry_s: float = Field(
        default=24 * 3600.0,
        gt=0,
        description="An upload that receives no chunk for this long is abandoned; the sweeper removes its bytes.",
    )
    header_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="A connection must finish a request's headers "
        "this long after it opens or after its previous response.",
    )
    body_timeout_s: float = Field(
        default=60.0,
        gt=0,
        description="A request's whole body must arrive within this long of its headers (408 otherwise).",
    )
    max_streams_per_key: int = Field(
        default=100, ge=1, description="Open /events streams per API key and API process (429 beyond)."
    )
    events_poll_s: float = Field(
        default=0.3,
        gt=0,
        description="How often an API process reads its watched jobs' status and new metric rows (all of them in "
        "one session, whatever the number of jobs and watchers).",
    )
    max_artifact_bytes: int = 64 * 1024 * 1024
    max_model_upload_bytes: int = Field(
        default=256 * 1024 * 1024, description="Cap on a model sent in one request (POST /v1/models)."
    )
    max_model_bytes: int = Field(
        default=256 * 1024**3,
        gt=0,
        description="Cap on a resumable model upload: all its files as declared (POST /v1/models/uploads).",
    )
    cpu_worker_memory_gib: float = Field(default=8.0, gt=0, description="memory a job may use on a 'cpu' worker")
    gpu_worker_memory_gib: float = Field(default=16.0, gt=0, description="GPU memory a job may use on a 'gpu' worker")
    inspect_timeout_s: float = Field(default=120.0, gt=0, description="limit of one meta-device model inspection")
    inspect_queue: int = Field(
        default=16, ge=0, description="model inspections that may wait per API process; one more is answered 429"
    )

    log_format: Literal["json", "console"] = Field(
        default="json", description="Log lines as JSON objects, or human-readable ('console', `gradlab up`'s)."
    )
    metrics: bool = Field(default=True, description="Prometheus metrics: /metrics and per-request HTTP metrics.")
    metrics_token: str | None = Field(
        default=None,
        description="Bearer token Prometheus sends to /metrics when "
        "authentication is required (unset: /metrics refuses every caller).",
    )

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'gradlab.sqlite3').resolve()}"

    @property
    def resolved_blob_url(self) -> str:
        return self.blob_url or (self.data_dir / "blobs").resolve().as_uri()

    @property
    def resolved_broker_url(self) -> str:
        return self.broker_url or "filesystem://"

    @property
    def broker_folder(self) -> Path:
        return (self.data_dir / "broker").resolve()

    def queue_memory_bytes(self, queue: str) -> int:
        """What one job may use on a worker of ``queue``; ``auto`` jobs may land on either class."""
        cpu, gpu = int(self.cpu_worker_memory_gib * 2**30), int(self.gpu_worker_memory_gib * 2**30)
        return {"cpu": cpu, "gpu": gpu}.get(queue, min(cpu, gpu))

    @property
    def queue_list(self) -> list[str]:
        return [q.strip() for q in self.queues.split(",") if q.strip()]


@lru_cache
def get_settings() -> Settings:
    return Settings()
