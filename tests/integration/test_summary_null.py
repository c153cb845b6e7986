"""A job whose summary cannot be built still succeeds, with ``summary: null`` and the reason in the worker's log
(issue 33.3): the summary is the last thing computed, after all the job's work, and a bug in it must not lose that
work. The test-only kind ``unsummarized`` (tests/kinds/unsummarized, registered through GRADLAB_EXTRA_KINDS) runs at
once and has a summary that raises."""

from __future__ import annotations

import os

import pytest

from tests.stack import ROOT, wait_job


@pytest.fixture(scope="module")
def service_env(service_env):
    return {
        **service_env,
        "GRADLAB_EXTRA_KINDS": "tests.kinds.unsummarized",
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
    }


def test_a_job_whose_summary_raises_succeeds_with_summary_null_and_a_logged_reason(stack, api):
    worker = stack.start_worker()
    job = api.post("/v1/jobs", json={"kind": "unsummarized", "params": {"value": 0.25}}).json()
    done = wait_job(api, job["id"], timeout=60)
    assert done["status"] == "succeeded" and done["error"] is None, done
    assert done["result"] == {"value": 0.25, "summary": None}
    log = (stack.log_dir / f"worker-{stack.procs.index(worker)}.log").read_text(errors="replace")
    assert "the unsummarized summary could not be built (KeyError: 'missing_figure')" in log
    assert "job succeeds with summary null" in log
