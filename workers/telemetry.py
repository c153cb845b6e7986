"""A worker's own Prometheus metrics: wait and run times, attempts, failures, sweeper actions, metric rows.

They live in a private registry and travel to the database with each presence beat (``workers.presence``), and the
API exports them with the rest, labelled by worker. So Prometheus scrapes one target for the whole service, the
figures reach it from wherever a worker can reach the database (a GPU machine behind NAT needs no inbound port),
and a worker's counters stay visible while it runs; its series end when it stops.
"""

from __future__ import annotations

import logging
import uuid

from celery.signals import task_postrun, task_prerun
from prometheus_client import CollectorRegistry, Counter, Histogram

from core import logs
from core.jobs import repository as jobs
from workers import process
from workers.publish import RUN_JOB_TASK

log = logging.getLogger(__name__)

# seconds: jobs wait and run from under a second (small examples) to hours
BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, float("inf"))


class _Metrics:
    def __init__(self):
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        self.wait_s = Histogram(
            "gradlab_job_wait_seconds",
            "Seconds from a job's creation to the start of an attempt",
            ["kind", "queue"],
            buckets=BUCKETS,
            registry=r,
        )
        self.run_s = Histogram(
            "gradlab_job_run_seconds",
            "Seconds an attempt ran, by how it ended",
            ["kind", "outcome"],
            buckets=BUCKETS,
            registry=r,
        )
        self.attempts = Counter(
            "gradlab_job_attempts",
            "Attempts started (claims); retry=true for attempt > 1",
            ["kind", "retry"],
            registry=r,
        )
        self.failures = Counter("gradlab_job_failures", "Jobs that failed, by error type", ["kind", "type"], registry=r)
        self.sweeps = Counter(
            "gradlab_sweeper_actions",
            "Sweeper actions: requeued (worker lost), republished "
            "(message lost), failed (worker lost on the last attempt)",
            ["action"],
            registry=r,
        )
        self.metric_rows = Counter("gradlab_metric_rows_ingested", "Metric rows written to the database", registry=r)


_metrics: _Metrics | None = None


def metrics() -> _Metrics:
    """Made on first use, in the worker: the API process imports this module too (through the Celery app) and,
    in prometheus-client's multiprocess mode, would otherwise export a second, empty copy of each."""
    global _metrics
    if _metrics is None:
        _metrics = _Metrics()
    return _metrics


def rows_ingested(n: int) -> None:
    metrics().metric_rows.inc(n)


def snapshot() -> list[dict]:
    """Every metric family with its samples, as JSON for the worker's row (``_created`` samples left out)."""
    return [
        {
            "name": fam.name,
            "type": fam.type,
            "help": fam.documentation,
            "samples": [[s.name, s.labels, s.value] for s in fam.samples if not s.name.endswith("_created")],
        }
        for fam in metrics().registry.collect()
    ]


def record_sweep(outcome: jobs.SweepOutcome) -> None:
    retried, sweeps = set(outcome.retried), metrics().sweeps
    sweeps.labels("requeued").inc(len(retried))
    sweeps.labels("republished").inc(sum(1 for job_id, _ in outcome.republish if job_id not in retried))
    sweeps.labels("failed").inc(len(outcome.failed))


def job_claimed(job) -> None:
    """This worker claimed ``job`` (a new attempt): its wait since creation, and the attempt."""
    m = metrics()
    m.wait_s.labels(job.kind, job.queue).observe(max((job.started_at - job.created_at).total_seconds(), 0.0))
    m.attempts.labels(job.kind, "true" if job.attempt > 1 else "false").inc()


def record_outcome(sessions, job_id: str, outcome: str, worker: str, attempt: int) -> None:
    """After a run_job task whose attempt ended the job: its run time, and its error type if it failed, read back
    from the job's row (an attempt that lost the job to a retry has no outcome of its own)."""
    if outcome not in ("succeeded", "failed", "cancelled"):
        return
    with sessions() as s:
        row = jobs.job_timing(s, uuid.UUID(job_id))
    if row is None or row.worker != worker or row.attempt != attempt or None in (row.started_at, row.finished_at):
        return
    m = metrics()
    m.run_s.labels(row.kind, outcome).observe(max((row.finished_at - row.started_at).total_seconds(), 0.0))
    if outcome == "failed" and row.error_type:
        m.failures.labels(row.kind, row.error_type).inc()


@task_prerun.connect
def _bind_job(task_id=None, task=None, args=None, **_):
    """Log lines of a run_job task carry its job id and this worker's name (attempt, kind and tenant once the
    job is claimed)."""
    if task is not None and task.name == RUN_JOB_TASK and args:
        task.request.log_token = logs.bind(job_id=str(args[0]), worker=process.WORKER_NAME)


@task_postrun.connect
def _measure_and_unbind(task_id=None, task=None, args=None, retval=None, state=None, **_):
    if task is None or task.name != RUN_JOB_TASK or not args:
        return
    attempt = logs.current("attempt")  # bound by the runner once it claimed the job
    ran = logs.current("job_id") or str(args[0])  # the job it ran: the message's, or the fairer one it took
    try:
        if attempt is not None:
            record_outcome(
                process.sessions(),
                ran,
                retval if isinstance(retval, str) else "failed",
                process.WORKER_NAME,
                attempt,
            )
    except Exception as exc:  # metrics never fail a job
        log.warning("recording job metrics failed: %s", exc)
    token = getattr(task.request, "log_token", None)
    if token is not None:
        logs.reset(token)
