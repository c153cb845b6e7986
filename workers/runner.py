"""Running one job: claim, pick the device, run the technique, record the outcome. Called by the Celery task."""

from __future__ import annotations

import logging
import uuid

import numpy as np
import torch
from pydantic import ValidationError
from sqlalchemy.orm import sessionmaker

from core import logs
from core.blobs import blob_store
from core.blobs.layout import attempt_prefix
from core.data import uploaded_dataset_ids
from core.jobs import repository as jobs
from core.jobs.states import JobStatus
from core.json_values import json_safe
from core.networks.spec import uploaded_model_ids
from core.renders import REPORT, Recipe
from core.settings import Settings
from core.summary import Summary
from core.techniques import get_kind
from core.techniques.base import ForeignResource, JobCancelled, JobTimedOut
from workers import telemetry
from workers.context import DbRunContext, JobLost
from workers.process import WORKER_NAME
from workers.restart import restart_worker_process
from workers.retry import retrying

log = logging.getLogger(__name__)


CLAIM_TRIES = 10


class DeviceUnavailable(Exception):
    pass


def pick_device(requested: str) -> torch.device:
    """cpu -> cpu; cuda -> cuda or an error; auto -> cuda when this worker has it."""
    if requested == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if requested == "cuda":
        raise DeviceUnavailable("the job asked for device 'cuda' but the worker that took it has no CUDA device")
    return torch.device("cpu")


def execute_job(sessions: sessionmaker, settings: Settings, job_id: str) -> str:
    """Run job ``job_id`` if it can be claimed; returns what happened (for logs and tests).

    The heartbeat starts with the claim, before anything that can be slow, so that a healthy job is never taken
    for a dead one (the kinds themselves are loaded once, when the worker starts: ``workers.tasks``).
    """
    jid = uuid.UUID(job_id)

    def claim():
        # a pick another worker claims first is picked again: a message that ran nothing would leave a queued job
        # without one until the sweeper publishes it again
        with sessions() as s:
            for _ in range(CLAIM_TRIES):
                pick = jobs.fair_pick(s, jid)
                if pick is None:
                    return None
                claimed = jobs.claim(s, pick, WORKER_NAME, has_cuda=torch.cuda.is_available())
                if claimed is not None:
                    return claimed
            return None

    job = retrying(claim)
    if job is None:
        return "not-claimed"
    if job.id != jid:
        log.info("message of job %s runs job %s (another tenant's turn)", jid, job.id)
        jid = job.id
        logs.bind(job_id=str(jid))
    attempt = job.attempt
    logs.bind(attempt=attempt, kind=job.kind, tenant=job.tenant)
    log.info("job %s claimed: attempt %d of %s", jid, attempt, job.kind)
    telemetry.job_claimed(job)
    blobs = blob_store(settings)
    for earlier in range(1, attempt):  # their rows went with the claim; their bytes go now
        blobs.delete_prefix(attempt_prefix(jid, earlier))
    ctx = DbRunContext(
        sessions, settings, jid, attempt, job.tenant, job.seed, job.timeout_s, on_hung=restart_worker_process
    )
    ctx.start()
    try:
        try:
            kind = get_kind(job.kind)
            params = kind.params.model_validate(job.params)
            ctx.device = pick_device(job.device_requested)
        except (LookupError, DeviceUnavailable, ValidationError) as exc:
            ctx.stop()
            error_type = "device_unavailable" if isinstance(exc, DeviceUnavailable) else "invalid_job"
            message = f"this worker has no kind {job.kind!r}" if isinstance(exc, LookupError) else str(exc)
            ctx.finish(JobStatus.failed, error_type=error_type, error_message=message[:2000])
            return "failed"
        ctx.check_resources(uploaded_dataset_ids(params), uploaded_model_ids(params))
        torch.manual_seed(job.seed)
        np.random.seed(job.seed % 2**32)
        result = json_safe(kind.run(params, ctx))
        attach_summary(kind, params, result)
        ctx.artifact("report.html", Recipe(REPORT), "text/html")  # made when first asked for, from the job's row
        ctx.close()
        return "succeeded" if ctx.finish(JobStatus.succeeded, result=result) else "lost"
    except JobCancelled:
        log.info("job %s cancelled", jid)
        return "cancelled"
    except JobLost:
        log.warning("job %s attempt %d was taken away from this worker; dropping its work", jid, attempt)
        return "lost"
    except ForeignResource as exc:
        log.warning("job %s refused: %s", jid, exc)
        _close_quietly(ctx)
        ctx.finish(JobStatus.failed, error_type="foreign_resource", error_message=str(exc))
        return "failed"
    except JobTimedOut as exc:
        _close_quietly(ctx)
        ctx.finish(JobStatus.failed, error_type="timeout", error_message=str(exc))
        return "failed"
    except Exception as exc:
        log.exception("job %s (%s) failed", jid, job.kind)
        _close_quietly(ctx)
        ctx.finish(JobStatus.failed, error_type=type(exc).__name__, error_message=str(exc)[:2000] or type(exc).__name__)
        return "failed"
    finally:
        ctx.stop()
        if ctx.device.type == "cuda":
            torch.cuda.empty_cache()


def attach_summary(kind, params, result: dict) -> None:
    """``result["summary"]``: the kind's answer, or None when it cannot be built: the reason is logged, and the job
    succeeds with its full result rather than failing after all its work."""
    if kind.summarize is None:
        return
    try:
        # checked as the API will read it: a kind's summary that does not fit the shape is no summary
        result["summary"] = Summary.model_validate(json_safe(kind.summarize(params, result))).model_dump(mode="json")
    except Exception as exc:
        result["summary"] = None
        log.exception(
            "the %s summary could not be built (%s: %s); the job succeeds with summary null",
            kind.name,
            type(exc).__name__,
            exc,
        )


def _close_quietly(ctx: DbRunContext) -> None:
    """Write buffered metrics of a failing job; a cancelled or lost job has nothing more to say."""
    try:
        ctx.close()
    except (JobCancelled, JobLost):
        pass
