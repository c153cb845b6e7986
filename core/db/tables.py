"""The schema's tables as SQLAlchemy classes, one per table; each is queried only by its domain's repository
(``core/<domain>/repository.py``). The schema itself is made only by the Alembic migrations (a test keeps them in
step)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    Uuid,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

ACTIVE_WHERE = "status IN ('queued', 'running')"
QUEUED_WHERE = "status = 'queued'"
SUCCEEDED_WHERE = "status = 'succeeded'"
UNPRUNED_WHERE = "pruned_at IS NULL AND finished_at IS NOT NULL"


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC timestamps on every backend (SQLite hands back naive values otherwise)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value, dialect):
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    if TYPE_CHECKING:
        # Each model here maps one Table (DeclarativeBase allows any FromClause); Core inserts take the Table.
        __table__: ClassVar[Table]


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("tenant", "idempotency_key", name="uq_jobs_tenant_idempotency_key"),
        Index("ix_jobs_created", "created_at", "id"),
        Index("ix_jobs_tenant_created", "tenant", "created_at"),
        Index("ix_jobs_status_heartbeat", "status", "heartbeat_at"),
        # admission counts a tenant's queued and running jobs on each submission: this index holds only those
        Index("ix_jobs_tenant_active", "tenant", postgresql_where=text(ACTIVE_WHERE), sqlite_where=text(ACTIVE_WHERE)),
        # queue depth and a queued job's position: the queued jobs of a queue in publishing order
        Index(
            "ix_jobs_queued_queue",
            "queue",
            "published_at",
            postgresql_where=text(QUEUED_WHERE),
            sqlite_where=text(QUEUED_WHERE),
        ),
        # a queued job's ETA: the latest run times of a kind on a queue
        Index(
            "ix_jobs_succeeded_kind",
            "kind",
            "queue",
            "finished_at",
            postgresql_where=text(SUCCEEDED_WHERE),
            sqlite_where=text(SUCCEEDED_WHERE),
        ),
        # a tenant's job list filtered by status and kind, newest first (GET /v1/jobs?status=&kind=)
        Index("ix_jobs_tenant_status_kind_created", "tenant", "status", "kind", "created_at", "id"),
        # the same without a tenant (admin keys)
        Index("ix_jobs_status_kind_created", "status", "kind", "created_at", "id"),
        # retention: finished jobs whose metrics and artifacts are still there, oldest first (prunable_jobs)
        Index(
            "ix_jobs_unpruned_finished",
            "finished_at",
            postgresql_where=text(UNPRUNED_WHERE),
            sqlite_where=text(UNPRUNED_WHERE),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    params: Mapped[dict] = mapped_column(JSON)
    seed: Mapped[int] = mapped_column(BigInteger)
    device_requested: Mapped[str] = mapped_column(String(8))
    device: Mapped[str | None] = mapped_column(String(32))
    queue: Mapped[str] = mapped_column(String(32))
    timeout_s: Mapped[int] = mapped_column(Integer)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    message: Mapped[str] = mapped_column(Text, default="")
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(255))
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # a queued job's message is published again at this time unless a worker claimed it (jobs.repository.sweep)
    republish_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    result: Mapped[dict | None] = mapped_column(JSON)
    error_type: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    # when retention removed the job's metric rows and artifacts (core.jobs.retention); the result stays
    pruned_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Metric(Base):
    __tablename__ = "metrics"
    __table_args__ = (
        Index("ix_metrics_job_name_step", "job_id", "name", "step"),
        Index("ix_metrics_job_id_id", "job_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    job_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("jobs.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(BigInteger)
    name: Mapped[str] = mapped_column(String(128))
    value: Mapped[float | None] = mapped_column(Float)


class MetricRollup(Base):
    """Per series, level and block of ``2**level`` steps: the rows, step span and min and max rows of the block's
    non-null values (``core.metrics.rollup``), kept up to date at ingest so that a chart of a long series reads a few
    thousand of these instead of every row."""

    __tablename__ = "metric_rollups"

    job_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    level: Mapped[int] = mapped_column(Integer, primary_key=True)
    block: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    n: Mapped[int] = mapped_column(BigInteger)
    first_step: Mapped[int] = mapped_column(BigInteger)
    last_step: Mapped[int] = mapped_column(BigInteger)
    min_step: Mapped[int] = mapped_column(BigInteger)
    min_value: Mapped[float] = mapped_column(Float)
    max_step: Mapped[int] = mapped_column(BigInteger)
    max_value: Mapped[float] = mapped_column(Float)


class Artifact(Base):
    __tablename__ = "artifacts"
    __table_args__ = (UniqueConstraint("job_id", "name", name="uq_artifacts_job_name"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    job_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("jobs.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(128))
    media_type: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    location: Mapped[str] = mapped_column(String(512))  # blob key (core.blobs.layout)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # set while the bytes are not rendered yet (core.renders): the first GET renders them to ``location``
    recipe: Mapped[dict | None] = mapped_column(JSON(none_as_null=True), nullable=True)


class Dataset(Base):
    """An uploaded dataset. The row is made when its upload begins (``uploading``), before any byte is stored, so
    no blob is ever without a row; a worker then validates the raw upload into canonical files
    (``validating -> ready | rejected``, by compare-and-set, ``core.datasets.repository``)."""

    __tablename__ = "datasets"
    __table_args__ = (
        Index("ix_datasets_status_validation", "status", "validation_at"),
        # the dataset list, newest first (GET /v1/datasets): a tenant's, by status, by format; an admin's
        Index("ix_datasets_tenant_created", "tenant", "created_at", "id"),
        Index("ix_datasets_tenant_status_created", "tenant", "status", "created_at", "id"),
        Index("ix_datasets_tenant_format_created", "tenant", "format", "created_at", "id"),
        Index("ix_datasets_created", "created_at", "id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant: Mapped[str] = mapped_column(String(64))
    filename: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16), default="ready")  # uploading | validating | ready | rejected
    reason: Mapped[str | None] = mapped_column(Text)  # why it was rejected: "<field>: <reason>"
    kind: Mapped[str | None] = mapped_column(String(16))  # arrays | text | pairs (core.data.loader), once ready
    format: Mapped[str] = mapped_column(String(8))
    label_column: Mapped[str | None] = mapped_column(String(128))
    has_tokenizer: Mapped[bool] = mapped_column(default=False)
    rows: Mapped[int | None] = mapped_column(BigInteger)
    columns: Mapped[int | None] = mapped_column(Integer)
    has_labels: Mapped[bool | None]
    upload_size: Mapped[int] = mapped_column(BigInteger)  # bytes of the upload as sent
    size: Mapped[int | None] = mapped_column(BigInteger)  # bytes stored (its canonical files), once ready
    sha256: Mapped[str | None] = mapped_column(String(64))  # of the upload as sent, once received whole
    location: Mapped[str] = mapped_column(String(512))  # blob prefix of its files (core.blobs.layout)
    files: Mapped[list | None] = mapped_column(JSON)  # canonical file names under the prefix, once ready
    preview: Mapped[dict | None] = mapped_column(JSON)
    validation_worker: Mapped[str | None] = mapped_column(String(255))  # the worker validating it now
    validation_attempts: Mapped[int] = mapped_column(Integer, default=0)
    # validating: when it was last published, claimed or beaten for (the sweeper's clock)
    validation_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class DatasetUpload(Base):
    """A resumable upload in progress: what the client declared. The bytes received so far are the store's
    (``core.blobs.store`` partial objects), so an API process that dies mid-chunk leaves no stale count."""

    __tablename__ = "dataset_uploads"
    __table_args__ = (Index("ix_dataset_uploads_expires", "expires_at"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    dataset_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("datasets.id", ondelete="CASCADE"), index=True)
    tenant: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str | None] = mapped_column(String(64))  # as the client declared it; the worker checks it
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ApiKey(Base):
    """A bearer key; only its SHA-256 is stored (keys are 256-bit random, so a plain hash cannot be reversed)."""

    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(128))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    admin: Mapped[bool]
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class StoredModel(Base):
    """A stored model: a Hugging Face config (JSON) with its safetensors weights when sent (one file, or the shards
    of a sharded checkpoint), or a ``torch.export`` program (.pt2); its inspected summary; where its files are."""

    __tablename__ = "models"
    __table_args__ = (Index("ix_models_tenant_created", "tenant", "created_at"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant: Mapped[str] = mapped_column(String(64))
    filename: Mapped[str] = mapped_column(String(255))
    format: Mapped[str] = mapped_column(String(16))  # config | safetensors | sharded | exported
    model_type: Mapped[str | None] = mapped_column(String(64))  # a config's model_type; None for exported
    task: Mapped[str | None] = mapped_column(String(32))  # causal_lm | masked_lm | sequence_classification
    config: Mapped[dict | None] = mapped_column(JSON)  # None for exported
    n_params: Mapped[int] = mapped_column(BigInteger)
    summary: Mapped[dict] = mapped_column(JSON)
    # the blob key of the file a loader opens first (the safetensors file, the checkpoint's index or the .pt2)
    weights_location: Mapped[str | None] = mapped_column(String(512))
    weights_size: Mapped[int | None] = mapped_column(BigInteger)  # all files together
    weights_sha256: Mapped[str | None] = mapped_column(String(64))  # of a single file sent in one request
    files: Mapped[list | None] = mapped_column(JSON)  # [{name, size}] of every stored file (model_file_key)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ModelUpload(Base):
    """A resumable model upload in progress: the files the client declared. The bytes received so far are the
    store's partial objects (one per file); ``model_id`` names the model, and the blobs under its prefix, that
    completing makes, so that every stored byte is named by a row."""

    __tablename__ = "model_uploads"
    __table_args__ = (Index("ix_model_uploads_expires", "expires_at"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    model_id: Mapped[uuid.UUID] = mapped_column(Uuid, unique=True)
    tenant: Mapped[str] = mapped_column(String(64))
    format: Mapped[str] = mapped_column(String(16))
    files: Mapped[list] = mapped_column(JSON)  # [{name, size}] as declared
    status: Mapped[str] = mapped_column(String(16), default="uploading")  # uploading | checking
    checking_since: Mapped[datetime | None] = mapped_column(UTCDateTime)  # when a completing request claimed it
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Study(Base):
    """A comparison of settings over seeds: the request as given, its expansion into settings, and when it was
    cancelled. Its state and figures are read from its child jobs, which are ordinary jobs (``study_jobs``)."""

    __tablename__ = "studies"
    __table_args__ = (
        UniqueConstraint("tenant", "idempotency_key", name="uq_studies_tenant_idempotency_key"),
        # the study list, newest first (GET /v1/studies): a tenant's, by kind; an admin's
        Index("ix_studies_tenant_created", "tenant", "created_at", "id"),
        Index("ix_studies_tenant_kind_created", "tenant", "kind", "created_at", "id"),
        Index("ix_studies_created", "created_at", "id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(64))
    request: Mapped[dict] = mapped_column(JSON)
    settings: Mapped[list] = mapped_column(JSON)
    seeds: Mapped[list] = mapped_column(JSON)
    baseline: Mapped[int] = mapped_column(Integer)
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    cancelled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class StudyJob(Base):
    """One child job of a study: which setting (index into ``Study.settings``) and which seed it runs."""

    __tablename__ = "study_jobs"
    __table_args__ = (Index("ix_study_jobs_job", "job_id"),)

    study_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("studies.id", ondelete="CASCADE"), primary_key=True)
    job_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    setting: Mapped[int] = mapped_column(Integer)
    seed: Mapped[int] = mapped_column(BigInteger)


class Worker(Base):
    """A worker process, as it reports itself: what it consumes and runs on, when it last beat, and its own
    Prometheus counters (``stats``), which the API exports with the rest (one scrape target for the whole service)."""

    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)  # host:pid, as in jobs.worker
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    queues: Mapped[list] = mapped_column(JSON)
    device: Mapped[dict] = mapped_column(JSON)
    stats: Mapped[list] = mapped_column(JSON)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime)
