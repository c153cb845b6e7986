"""Retention: remove old finished jobs' metric rows and artifacts (rows and blobs), keeping the job itself.

A service that runs for months accumulates metric rows by the billion; what a finished job is asked for months later
is its result and summary (kept: they live in the job's row). The work goes in small batches, each its own short
transaction, so the API and the workers never wait behind it for long: a job's metric rows ``batch_rows`` at a time,
then its rollup one level at a time, then its artifacts. A job is marked pruned only when all of that is gone, so an
interrupted prune resumes where it stopped when run again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import sessionmaker

from core.blobs.layout import job_artifacts_prefix
from core.blobs.store import BlobStore
from core.jobs import repository as jobs
from core.metrics import repository as metrics


@dataclass
class PruneReport:
    jobs: int = 0
    metric_rows: int = 0
    rollup_rows: int = 0
    artifacts: int = 0


def prune(
    sessions: sessionmaker,
    blobs: BlobStore,
    *,
    finished_before: datetime,
    keep_summary: bool,
    batch_rows: int = 5000,
    jobs_per_round: int = 500,
    on_round: Callable[[PruneReport], None] | None = None,
) -> PruneReport:
    """Prune every job that finished before ``finished_before``, ``jobs_per_round`` jobs at a time (oldest first).
    ``keep_summary`` keeps each series' rollup (the per-block min and max rows), so the job's charts still draw,
    from blocks of 16 steps or more."""
    report = PruneReport()
    while True:
        with sessions() as s:
            job_ids = jobs.prunable_jobs(s, finished_before, jobs_per_round)
            if not job_ids:
                return report
            _prune_round(s, blobs, job_ids, keep_summary, batch_rows, report)
        report.jobs += len(job_ids)
        if on_round is not None:
            on_round(report)


def _prune_round(s, blobs: BlobStore, job_ids: list, keep_summary: bool, batch_rows: int, report: PruneReport) -> None:
    while removed := metrics.delete_metric_batch(s, job_ids, batch_rows):
        report.metric_rows += removed
    if not keep_summary:
        report.rollup_rows += metrics.delete_rollup(s, job_ids)
    artifacts = jobs.artifact_locations(s, job_ids)
    # the bytes first: a crash then leaves rows whose blobs are gone, which the next prune removes; the other order
    # would leave blobs no row names
    for _, location in artifacts:
        blobs.delete(location)
    for job_id in job_ids:
        blobs.delete_prefix(job_artifacts_prefix(job_id))  # and any stray of an earlier attempt
    if artifacts:
        jobs.delete_artifact_rows(s, [row_id for row_id, _ in artifacts])
        report.artifacts += len(artifacts)
    jobs.mark_pruned(s, job_ids)
