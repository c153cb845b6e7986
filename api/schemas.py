"""HTTP request and response bodies. The job-creation body is a discriminated union on ``kind``, one member per
registered technique, so FastAPI validates each kind's params and publishes their schemas in OpenAPI."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, StrictInt, create_model

from core.db.tables import Job
from core.studies.stats import StudyStatus
from core.summary import Summary
from core.techniques import specs

MAX_SEED = 2**63 - 1


class JobRequestBase(BaseModel):
    """Strict like the published schema: an integer field takes a JSON integer, not "5", true or 5.0."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    seed: StrictInt = Field(0, ge=0, le=MAX_SEED)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    timeout_s: StrictInt = Field(3600, ge=1, le=24 * 3600)


def _job_request_models() -> list[type[JobRequestBase]]:
    models = []
    for name, kind in specs().items():
        model_name = "".join(p.title() for p in name.split("_")) + "Job"
        models.append(
            create_model(
                model_name,
                __base__=JobRequestBase,
                kind=(Literal[name], ...),  # type: ignore[arg-type]  # a Literal of a name known at run time
                params=(kind.params, ...),
            )
        )
    return models


if TYPE_CHECKING:
    # The checker cannot see a union built at run time; what every member has is enough for the routes.
    class JobRequest(JobRequestBase):
        kind: str
        params: BaseModel

else:
    # Union[...] of a tuple built at run time: the `X | Y` spelling cannot take one.
    JobRequest = Annotated[Union[tuple(_job_request_models())], Field(discriminator="kind")]  # noqa: UP007


class ErrorOut(BaseModel):
    type: str
    message: str


class JobResult(BaseModel):
    """A succeeded job's result: the kind's full result (its own keys, documented per kind in README) and, first to
    read, its ``summary``."""

    model_config = ConfigDict(extra="allow")
    summary: Summary | None = None


class JobOut(BaseModel):
    id: UUID
    kind: str
    status: str
    progress: float
    message: str
    params: dict[str, Any]
    seed: int
    device_requested: str
    device: str | None
    timeout_s: int
    attempt: int
    queue: str
    queue_position: int | None = Field(None, description="while queued: 1 when it starts next in its queue")
    queue_ahead_over: int | None = Field(
        None,
        description="while queued behind a long queue: more than this many jobs are ahead of it (queue_position "
        "and eta_s are then null)",
    )
    eta_s: float | None = Field(
        None,
        description="while queued: estimated seconds until it starts, from recent "
        "run times of the kinds ahead of it; null without a live worker or run history",
    )
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    result: JobResult | None = None
    error: ErrorOut | None = None
    study_id: UUID | None = Field(None, description="the study this job is a child of (links.study), if any")
    links: dict[str, str]

    @classmethod
    def of(cls, job: Job, study_id: UUID | None = None) -> JobOut:
        base = f"/v1/jobs/{job.id}"
        study = {"study": f"/v1/studies/{study_id}"} if study_id is not None else {}
        return cls(
            id=job.id,
            kind=job.kind,
            status=job.status,
            progress=job.progress,
            message=job.message,
            params=job.params,
            seed=job.seed,
            device_requested=job.device_requested,
            device=job.device,
            timeout_s=job.timeout_s,
            attempt=job.attempt,
            queue=job.queue,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            result=job.result if job.status == "succeeded" else None,
            error=ErrorOut(type=job.error_type, message=job.error_message or "") if job.error_type else None,
            links={
                "self": base,
                "metrics": f"{base}/metrics",
                "artifacts": f"{base}/artifacts",
                "cancel": f"{base}/cancel",
                **study,
            },
            study_id=study_id,
        )


class JobPage(BaseModel):
    items: list[JobOut]
    next_cursor: str | None


class MetricRow(BaseModel):
    step: int
    name: str
    value: float | None


class MetricPage(BaseModel):
    items: list[MetricRow]
    next_cursor: int | None


class ArtifactOut(BaseModel):
    name: str
    media_type: str
    size: int
    sha256: str
    url: str


class KindOut(BaseModel):
    name: str
    description: str
    params_schema: dict[str, Any]
    example: dict[str, Any]


class DatasetOut(BaseModel):
    """An uploaded dataset. ``status``: uploading, validating, ready, or rejected (``reason`` names the field and
    says why); kind, shape and ``preview`` once ready (``preview`` only when one dataset is read, not in the list)."""

    id: UUID
    filename: str
    status: str
    reason: str | None = None
    kind: str | None = None
    format: str
    rows: int | None = None
    columns: int | None = None
    has_labels: bool | None = None
    upload_size: int = Field(description="bytes of the upload as sent")
    size: int | None = Field(default=None, description="bytes stored (its canonical files), once ready")
    sha256: str | None = Field(default=None, description="of the upload as sent, once received whole")
    preview: dict[str, Any] | None = None
    queue_position: int | None = Field(
        None,
        description="while validating and waiting for a worker (GET of one dataset): 1 when it is validated next; "
        "null once a worker validates it",
    )
    created_at: datetime

    @classmethod
    def of(cls, row, detail: bool = True, queue_position: int | None = None) -> DatasetOut:
        return cls(
            id=row.id,
            filename=row.filename,
            status=row.status,
            reason=row.reason,
            kind=row.kind,
            format=row.format,
            rows=row.rows,
            columns=row.columns,
            has_labels=row.has_labels,
            upload_size=row.upload_size,
            size=row.size,
            sha256=row.sha256,
            preview=row.preview if detail else None,
            queue_position=queue_position,
            created_at=row.created_at,
        )


class DatasetPage(BaseModel):
    items: list[DatasetOut]
    next_cursor: str | None


class StudyBriefOut(BaseModel):
    """A study as ``GET /v1/studies`` lists it: its state without the comparison (``GET /v1/studies/{id}``)."""

    id: UUID
    kind: str
    status: StudyStatus
    progress: float
    counts: dict[str, int] = Field(description="children per status")
    jobs: int = Field(description="how many child jobs: settings × seeds")
    settings: list[str] = Field(description="each setting's label")
    seeds: list[int]
    created_at: datetime
    cancelled_at: datetime | None
    links: dict[str, str]


class StudyPage(BaseModel):
    items: list[StudyBriefOut]
    next_cursor: str | None


class UploadStart(BaseModel):
    """``POST /v1/datasets/uploads``: what is about to be sent."""

    model_config = ConfigDict(extra="forbid")

    filename: str = Field(min_length=1, max_length=255, description="its extension names the format")
    size: int = Field(ge=1, strict=True, description="bytes of the whole file (a JSON integer, not a string)")
    sha256: str | None = Field(default=None, pattern="^[0-9a-f]{64}$", description="checked by the validation")
    label_column: str | None = Field(default=None, min_length=1, max_length=128, pattern="^[^\x00]*$")


class UploadOut(BaseModel):
    """A resumable upload: send chunks with ``PATCH`` at ``Upload-Offset`` = ``offset``, then ``complete``."""

    id: UUID
    dataset_id: UUID
    status: str
    offset: int
    size: int
    expires_at: datetime
    max_chunk_bytes: int
    min_chunk_bytes: int


class ModelLayer(BaseModel):
    name: str
    shape: list[int]


class ModelFile(BaseModel):
    name: str
    size: int


class ModelOut(BaseModel):
    """A stored model. ``source`` is how a job names it (``use_as``): ``uploaded`` (a config, with safetensors
    weights in one file or sharded) or ``exported`` (a .pt2). Only on ``GET /v1/models/{id}`` and the upload's
    answer: ``config`` and ``layers`` of a config model, ``exported`` (inputs, outputs, parameters, buffers,
    constants, operators) of an exported one."""

    id: UUID
    source: Literal["uploaded", "exported"]
    filename: str
    format: Literal["config", "safetensors", "sharded", "exported"]
    model_type: str | None = None
    task: str | None = None
    n_params: int
    n_tensors: int
    has_weights: bool
    weights_size: int | None = None
    weights_sha256: str | None = None
    files: list[ModelFile] | None = None
    created_at: datetime
    use_as: dict[str, Any]
    config: dict[str, Any] | None = None
    layers: list[ModelLayer] | None = None
    exported: dict[str, Any] | None = None

    @classmethod
    def of(cls, row, detail: bool = False) -> ModelOut:
        summary = row.summary
        source = "exported" if row.format == "exported" else "uploaded"
        return cls(
            id=row.id,
            source=source,
            filename=row.filename,
            format=row.format,
            model_type=row.model_type,
            task=row.task,
            n_params=row.n_params,
            n_tensors=summary["n_tensors"],
            has_weights=row.weights_size is not None,
            weights_size=row.weights_size,
            weights_sha256=row.weights_sha256,
            files=row.files,
            created_at=row.created_at,
            use_as={"source": source, "id": str(row.id)},
            config=row.config if detail else None,
            layers=summary.get("layers") if detail else None,
            exported=summary.get("exported") if detail else None,
        )


class ModelPage(BaseModel):
    items: list[ModelOut]
    next_cursor: str | None


class ModelFileIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=255, description="config.json, *.safetensors, the index, or *.pt2")
    size: StrictInt = Field(ge=1, description="bytes of the whole file")


class ModelUploadStart(BaseModel):
    """``POST /v1/models/uploads``: the files of one model. ``config.json`` with ``model.safetensors``; or
    ``config.json``, ``model.safetensors.index.json`` and every shard the index names; or one ``.pt2``."""

    model_config = ConfigDict(extra="forbid")

    files: list[ModelFileIn] = Field(min_length=1, max_length=1024)


class ModelUploadFile(BaseModel):
    name: str
    size: int
    offset: int


class ModelUploadOut(BaseModel):
    """A resumable model upload: send each file's chunks with ``PATCH .../files/{name}`` at ``Upload-Offset`` =
    its ``offset``, then ``complete``; the model it makes is ``model_id``."""

    id: UUID
    model_id: UUID
    status: Literal["uploading", "checking"]
    format: str
    files: list[ModelUploadFile]
    expires_at: datetime
    max_chunk_bytes: int
    min_chunk_bytes: int
