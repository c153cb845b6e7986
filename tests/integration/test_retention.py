"""Retention (``gradlab prune``): old finished jobs lose their metric rows, rollup and artifacts (rows and blob files)
in batches and keep their row and result; recent and unfinished jobs are untouched. On both backends, and once through
the real command."""

from __future__ import annotations

import io
import os
import subprocess
from datetime import timedelta

from sqlalchemy import func, select, update

from core.blobs.layout import artifact_key
from core.blobs.store import DirectoryStore
from core.db.tables import Artifact, Job, Metric, MetricRollup, utcnow
from core.jobs import repository as job_store
from core.jobs.retention import prune
from core.jobs.states import JobStatus
from core.metrics import repository as metric_store
from tests.stack import BIN, ROOT

RESULT = {"summary": {"headline": "kept"}, "figures": [1, 2, 3]}


def _job(s, blobs: DirectoryStore, *, rows: int, finished_days_ago: float | None, status=JobStatus.succeeded):
    """A job with ``rows`` metric rows over two series, two artifacts (bytes in ``blobs``) and, when
    ``finished_days_ago`` is given, finished that long ago with RESULT."""
    job, _ = job_store.create_job(
        s, tenant="t", kind="init_averaging", params={}, seed=0, device="cpu", timeout_s=60, republish_after_s=60
    )
    job = job_store.claim(s, job.id, "test")
    assert job_store.beat(
        s, job.id, job.attempt, None, None, [(i, "loss" if i % 2 else "acc", i * 0.5) for i in range(rows)]
    )
    keys = []
    for name in ("plot.png", "values.json"):
        key = artifact_key(job.id, job.attempt, name)
        info = blobs.put(key, io.BytesIO(b"bytes of " + name.encode()))
        assert job_store.put_artifact(
            s, job.id, job.attempt, name, media_type="x", size=info.size, sha256=info.sha256, location=key
        )
        keys.append(key)
    if finished_days_ago is not None:
        assert job_store.finish(
            s, job.id, job.attempt, status, result=RESULT if status == JobStatus.succeeded else None
        )
        s.execute(update(Job).where(Job.id == job.id).values(finished_at=utcnow() - timedelta(days=finished_days_ago)))
        s.commit()
    return job.id, keys


def _counts(s, job_id) -> tuple[int, int, int]:
    return (
        s.scalar(select(func.count()).select_from(Metric).where(Metric.job_id == job_id)),
        s.scalar(select(func.count()).select_from(MetricRollup).where(MetricRollup.job_id == job_id)),
        s.scalar(select(func.count()).select_from(Artifact).where(Artifact.job_id == job_id)),
    )


def test_prune_removes_old_jobs_metrics_and_artifacts_in_batches_and_keeps_results(sessions, tmp_path):
    blobs = DirectoryStore(tmp_path / "blobs")
    with sessions() as s:
        old, old_keys = _job(s, blobs, rows=2_345, finished_days_ago=120)
        old_failed, failed_keys = _job(s, blobs, rows=300, finished_days_ago=91, status=JobStatus.failed)
        recent, recent_keys = _job(s, blobs, rows=500, finished_days_ago=10)
        running, running_keys = _job(s, blobs, rows=500, finished_days_ago=None)
        before = {j: _counts(s, j) for j in (recent, running)}
        # a stray blob of an earlier attempt of the old job, which no row names
        blobs.put(artifact_key(old, 0, "stray.png"), io.BytesIO(b"stray"))

    seen = []
    report = prune(
        sessions,
        blobs,
        finished_before=utcnow() - timedelta(days=90),
        keep_summary=False,
        batch_rows=1_000,
        jobs_per_round=1,
        on_round=lambda r: seen.append(r.metric_rows),
    )

    assert (report.jobs, report.metric_rows, report.artifacts) == (2, 2_345 + 300, 4)
    assert report.rollup_rows > 0
    assert sorted(seen) == seen and len(seen) == 2
    with sessions() as s:
        for job_id in (old, old_failed):
            assert _counts(s, job_id) == (0, 0, 0)
            assert s.get(Job, job_id).pruned_at is not None
        assert s.get(Job, old).result == RESULT and s.get(Job, old).status == JobStatus.succeeded
        assert s.get(Job, old_failed).status == JobStatus.failed
        for job_id in (recent, running):
            assert _counts(s, job_id) == before[job_id] and s.get(Job, job_id).pruned_at is None
        assert metric_store.downsampled_metrics(s, old, name=None, points=100) == []
    assert not any(blobs.exists(k) for k in old_keys + failed_keys)
    assert not (tmp_path / "blobs" / "artifacts" / str(old)).exists()
    assert all(blobs.exists(k) for k in recent_keys + running_keys)

    again = prune(sessions, blobs, finished_before=utcnow() - timedelta(days=90), keep_summary=False)
    assert again.jobs == 0


def test_batches_are_no_bigger_than_asked(sessions, tmp_path):
    blobs = DirectoryStore(tmp_path / "blobs")
    with sessions() as s:
        job_id, _ = _job(s, blobs, rows=2_500, finished_days_ago=100)
        other, _ = _job(s, blobs, rows=700, finished_days_ago=100)
        batches = [metric_store.delete_metric_batch(s, [job_id, other], 1_000) for _ in range(5)]
        assert batches == [1_000, 1_000, 1_000, 200, 0]


def test_keep_summary_keeps_the_charts_from_the_rollup(sessions, tmp_path):
    blobs = DirectoryStore(tmp_path / "blobs")
    with sessions() as s:
        job_id, _ = _job(s, blobs, rows=4_000, finished_days_ago=100)
        chart_before = metric_store.downsampled_metrics(s, job_id, name="loss", points=100)
    report = prune(sessions, blobs, finished_before=utcnow() - timedelta(days=90), keep_summary=True)
    assert report.rollup_rows == 0 and report.metric_rows == 4_000
    with sessions() as s:
        assert _counts(s, job_id)[0::2] == (0, 0)
        # the raw rows are gone; buckets of 2**6 steps are read from the stored 16-step blocks, exactly as before
        assert metric_store.downsampled_metrics(s, job_id, name="loss", points=100) == chart_before
        # a budget finer than the finest stored block: one bucket per 16 steps, still each its exact min and max
        fine = metric_store.downsampled_metrics(s, job_id, name="loss", points=2_000)
    odd = [(i, i * 0.5) for i in range(1, 4_000, 2)]
    assert [(r.step, r.value) for r in fine] == sorted(
        {row for b in range(0, 4_000, 16) for row in (odd[b // 2], odd[b // 2 + 7])}
    )


def test_the_command_prunes_and_refuses_bad_ages(tmp_path):
    url = f"sqlite:///{tmp_path / 'cli.sqlite3'}"
    from core.db.engine import make_engine, make_sessionmaker
    from core.db.migrate import upgrade

    upgrade(url)
    engine = make_engine(url)
    blobs = DirectoryStore(tmp_path / "blobs")
    with make_sessionmaker(engine)() as s:
        old, _ = _job(s, blobs, rows=100, finished_days_ago=91)
        recent, _ = _job(s, blobs, rows=100, finished_days_ago=89)
    env = {
        **os.environ,
        "GRADLAB_DATABASE_URL": url,
        "GRADLAB_BLOB_URL": blobs.url,
        "GRADLAB_DATA_DIR": str(tmp_path),
        "PYTHONPATH": str(ROOT),
        "COLUMNS": "300",  # typer's error box does not wrap the message
    }
    cmd = [str(BIN / "gradlab"), "prune"]
    done = subprocess.run([*cmd, "--older-than", "90d"], env=env, capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "pruned 1 jobs" in done.stdout and "100 metric rows" in done.stdout and "2 artifacts" in done.stdout
    with make_sessionmaker(engine)() as s:
        assert _counts(s, old) == (0, 0, 0) and _counts(s, recent)[0] == 100
    for bad, why in (("90", "a unit"), ("ninety days", "a unit"), ("-5d", "more than zero"), ("0d", "more than zero")):
        refused = subprocess.run([f"{cmd[0]}", "prune", f"--older-than={bad}"], env=env, capture_output=True, text=True)
        assert refused.returncode == 2 and why in refused.stderr, (bad, refused.stderr)
    missing = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    assert missing.returncode == 2 and "GRADLAB_RETENTION_DAYS" in missing.stderr
    engine.dispose()
