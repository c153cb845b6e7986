"""Artifacts live in the blob store: downloads stream the stored bytes, and a new attempt removes its predecessors'."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.stack import wait_job


@pytest.fixture(scope="module")
def worker(stack, api):
    return stack.start_worker()


def _downloads_match(api, job_id: str) -> list[str]:
    arts = api.get(f"/v1/jobs/{job_id}/artifacts").json()
    assert arts
    for art in arts:
        resp = api.get(art["url"])
        assert resp.status_code == 200 and resp.headers["content-type"].split(";")[0] == art["media_type"]
        assert int(resp.headers["content-length"]) == art["size"] == len(resp.content)
        assert hashlib.sha256(resp.content).hexdigest() == art["sha256"] == resp.headers["etag"].strip('"')
    return sorted(a["name"] for a in arts)


def test_artifacts_are_blobs_per_attempt_and_a_retry_removes_the_dead_attempts(api, worker, service_env, pg_database):
    blobs = Path(service_env["GRADLAB_DATA_DIR"]) / "blobs" / "artifacts"
    job = api.post("/v1/jobs", json={"kind": "init_averaging", "params": {"widths": [8, 8]}, "device": "cpu"}).json()
    assert wait_job(api, job["id"], timeout=180)["status"] == "succeeded"
    names = _downloads_match(api, job["id"])
    assert sorted(p.name for p in (blobs / job["id"] / "1").iterdir()) == names

    # as if attempt 1's worker had died after writing its artifacts: the sweeper re-queues the job, attempt 2 claims it
    engine = create_engine(pg_database[1])
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE jobs SET status = 'running', finished_at = NULL, heartbeat_at = :stale WHERE id = :i"),
            {"i": job["id"], "stale": datetime.now(UTC) - timedelta(hours=1)},
        )
    engine.dispose()
    done = wait_job(api, job["id"], timeout=180)
    assert done["status"] == "succeeded" and done["attempt"] == 2, done
    assert _downloads_match(api, job["id"]) == names
    assert [p.name for p in (blobs / job["id"]).iterdir()] == ["2"]
