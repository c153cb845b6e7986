"""``GET /metrics``: the Prometheus exposition of the whole service.

- HTTP request latency and status by route template, summed over the API's processes (``api.observability``);
- the state of the service, read from the database at scrape time (it is the truth, whichever process changed
  it): jobs by status and kind, queue depth, running jobs and oldest wait per queue, each worker's heartbeat age,
  bytes in the blob store (artifacts, datasets, model weights);
- each worker's own counters, which it writes to its ``workers`` row (``workers.telemetry``): wait and run time
  histograms per kind, attempts, failure types, sweeper actions, metric rows ingested; labelled ``worker``.

Access: open when authentication is disabled; otherwise ``Authorization: Bearer $GRADLAB_METRICS_TOKEN`` (a
token for the scraper alone, so Prometheus holds no API key).
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated

from fastapi import APIRouter, Depends, Header, Response
from sqlalchemy.orm import sessionmaker
from starlette.concurrency import run_in_threadpool

from api import observability
from api.deps import app_settings, session_factory
from api.problems import Problem
from core.db.tables import utcnow
from core.fleet.repository import QueueState
from core.fleet.service import known_queues, service_state
from core.jobs.states import JobStatus
from core.settings import Settings
from core.techniques import specs

if TYPE_CHECKING:
    from prometheus_client.core import Metric
    from sqlalchemy.orm import Session

router = APIRouter(include_in_schema=False)


class ServiceCollector:
    """Metric families computed from the database on each scrape."""

    def __init__(self, sessions: sessionmaker[Session]):
        self.sessions = sessions

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily, Metric

        now = utcnow()
        with self.sessions() as s:
            snapshot = service_state(s)
        counts, queues, workers, blobs = snapshot.job_counts, snapshot.queues, snapshot.workers, snapshot.blob_bytes
        jobs = GaugeMetricFamily("gradlab_jobs", "Jobs by status and kind", labels=["status", "kind"])
        by_pair = {(status, kind): n for status, kind, n in counts}
        for status in JobStatus:
            for kind in sorted(set(specs()) | {k for _, k in by_pair}):
                jobs.add_metric([status.value, kind], by_pair.get((status.value, kind), 0))
        yield jobs
        depth = GaugeMetricFamily("gradlab_queue_depth", "Queued jobs per queue", labels=["queue"])
        running = GaugeMetricFamily("gradlab_queue_running", "Running jobs per queue", labels=["queue"])
        oldest = GaugeMetricFamily(
            "gradlab_queue_oldest_wait_seconds",
            "How long the longest-waiting queued job of each queue has waited",
            labels=["queue"],
        )
        for name in known_queues(queues):
            q = queues.get(name, QueueState(0, None, 0))
            depth.add_metric([name], q.depth)
            running.add_metric([name], q.running)
            oldest.add_metric([name], (now - q.oldest_created_at).total_seconds() if q.oldest_created_at else 0.0)
        yield from (depth, running, oldest)
        age = GaugeMetricFamily(
            "gradlab_worker_heartbeat_age_seconds", "Seconds since each worker's last beat", labels=["worker"]
        )
        families: dict[str, Metric] = {}
        for state in workers:
            w = state.worker
            age.add_metric([w.name], (now - w.heartbeat_at).total_seconds())
            for fam in w.stats:
                merged = families.setdefault(fam["name"], Metric(fam["name"], fam["help"], fam["type"]))
                for name, labels, value in fam["samples"]:
                    merged.add_sample(name, {**labels, "worker": w.name}, value)
        yield age
        blob = GaugeMetricFamily("gradlab_blob_bytes", "Bytes in the blob store, by what they are", labels=["store"])
        for name, size in sorted(blobs.items()):
            blob.add_metric([name], size)
        yield blob
        yield from families.values()


def _allowed(settings: Settings, authorization: str | None) -> bool:
    if settings.auth == "disabled":
        return True
    scheme, _, token = (authorization or "").partition(" ")
    expected = settings.metrics_token
    if not expected or scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(token.strip().encode(), expected.encode())


def _exposition(sessions) -> tuple[bytes, str]:
    from prometheus_client import (
        CONTENT_TYPE_LATEST,
        CollectorRegistry,
        generate_latest,
    )
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry(auto_describe=False)
    if observability.multiprocess():
        MultiProcessCollector(registry)
    else:
        registry.register(_Each(observability.http_registry()))
    registry.register(ServiceCollector(sessions))
    return generate_latest(registry), CONTENT_TYPE_LATEST


class _Each:
    """Another registry's families, as one collector."""

    def __init__(self, registry):
        self.registry = registry

    def collect(self):
        return self.registry.collect()


@router.get("/metrics")
async def metrics(
    authorization: Annotated[str | None, Header(max_length=512)] = None,
    settings: Settings = Depends(app_settings),
    sessions: sessionmaker = Depends(session_factory),
):
    if not settings.metrics:
        raise Problem(404, "metrics are off (GRADLAB_METRICS=false)")
    if not _allowed(settings, authorization):
        raise Problem(
            401,
            "authorization: send 'Authorization: Bearer <GRADLAB_METRICS_TOKEN>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    body, media_type = await run_in_threadpool(_exposition, sessions)
    return Response(body, media_type=media_type)
