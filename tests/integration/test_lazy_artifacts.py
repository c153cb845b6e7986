"""Plots and report.html are off a job's critical path: a trivial job succeeds with its plot and report stored as
recipes (no bytes rendered, no blob written), and the first GET renders them, once."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.stack import wait_job

TRIVIAL = {"kind": "init_averaging", "params": {"widths": [2, 2], "trials": 1, "batch": 16}, "device": "cpu"}


@pytest.fixture(scope="module")
def worker(stack, api):
    return stack.start_worker()


def _rows(pg_database, job_id: str) -> dict:
    engine = create_engine(pg_database[1])
    try:
        with engine.connect() as conn:
            found = conn.execute(
                text("SELECT name, recipe IS NOT NULL, size FROM artifacts WHERE job_id = :j"), {"j": job_id}
            ).all()
    finally:
        engine.dispose()
    return {name: (pending, size) for name, pending, size in found}


def test_no_plot_is_rendered_before_its_first_get(api, worker, service_env, pg_database):
    job = api.post("/v1/jobs", json=TRIVIAL).json()
    assert wait_job(api, job["id"], timeout=120)["status"] == "succeeded"
    attempt = Path(service_env["GRADLAB_DATA_DIR"]) / "blobs" / "artifacts" / job["id"] / "1"
    assert _rows(pg_database, job["id"]) == {"forward_moments.png": (True, 0), "report.html": (True, 0)}
    assert not attempt.exists() or not any(attempt.iterdir())  # nothing rendered, nothing written

    plot = api.get(f"/v1/jobs/{job['id']}/artifacts/forward_moments.png")
    assert plot.status_code == 200 and plot.content.startswith(b"\x89PNG")
    assert int(plot.headers["content-length"]) == len(plot.content)
    assert plot.headers["etag"].strip('"') == hashlib.sha256(plot.content).hexdigest()
    assert _rows(pg_database, job["id"]) == {
        "forward_moments.png": (False, len(plot.content)),
        "report.html": (True, 0),
    }
    assert (attempt / "forward_moments.png").read_bytes() == plot.content

    listed = {a["name"]: a for a in api.get(f"/v1/jobs/{job['id']}/artifacts").json()}  # renders the report
    report = api.get(listed["report.html"]["url"])
    assert report.status_code == 200 and listed["report.html"]["size"] == len(report.content) > 0
    assert base64.b64encode(plot.content) in report.content  # the report shows the plot as rendered once
    assert api.get(f"/v1/jobs/{job['id']}/artifacts/forward_moments.png").content == plot.content
    assert all(not pending for pending, _ in _rows(pg_database, job["id"]).values())
