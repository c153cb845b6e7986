"""Studies on a real stack (PostgreSQL, Redis, worker processes): a grid × seeds study spreads over two workers and
completes with a comparison recomputed here from its children; one is cancelled midway; one survives a SIGKILLed
worker; CSV export, the CLI, idempotency and the 422s of bad studies."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import signal
import time
import uuid

import pytest
from scipy.stats import t as student_t
from sqlalchemy import create_engine, text
from typer.testing import CliRunner

from api.cli.jobs import client_cli
from api.cli.studies import study_cli

GRID = {
    "kind": "init_averaging",
    "base": {"widths": [32, 64, 32], "batch": 64, "trials": 1},
    "grid": {"distribution": ["normal", "uniform"], "activation": ["linear", "relu", "tanh"]},
    "seeds": [0, 1],
    "baseline": 0,
    "device": "cpu",
}
# embedding_dim sweeps of a few seconds each: long enough to cancel or kill a worker under them
SLOW = {
    "kind": "embedding_dim",
    "device": "cpu",
    "base": {
        "vocab_sizes": [100],
        "entropy_dims": [16],
        "sweep": {"vocab_size": 256, "target_rank": 8, "dims": [8, 16], "steps": 300},
    },
    "grid": {"sweep.target_rank": [4, 8]},
    "seeds": [0, 1],
}


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise TimeoutError(what)


def finished(api, study_id: str, timeout: float = 240) -> dict:
    def done():
        s = api.get(f"/v1/studies/{study_id}").json()
        return s if s["status"] in ("succeeded", "failed", "cancelled") else None

    return wait_for(done, timeout, f"study {study_id} to finish")


@pytest.fixture(scope="module")
def workers(stack, api):
    return [stack.start_worker(), stack.start_worker()]


def test_study_of_12_jobs_over_2_workers_completes_and_compares(stack, api, workers, tmp_path):
    key = f"s-{uuid.uuid4()}"
    made = api.post("/v1/studies", json=GRID, headers={"Idempotency-Key": key})
    assert made.status_code == 201, made.text
    study = made.json()
    assert len(study["jobs"]) == 12 and [s["label"] for s in study["settings"]][:2] == [
        "distribution=normal, activation=linear",
        "distribution=normal, activation=relu",
    ]
    again = api.post("/v1/studies", json=GRID, headers={"Idempotency-Key": key})
    assert again.status_code == 200 and again.json()["id"] == study["id"]
    assert api.post("/v1/studies", json={**GRID, "seeds": [0]}, headers={"Idempotency-Key": key}).status_code == 409

    study = finished(api, study["id"])
    assert study["status"] == "succeeded" and study["counts"] == {"succeeded": 12} and study["progress"] == 1.0
    # every child is an ordinary job, and the two workers shared them
    ran_by = {stack.procs.index(w): (stack.log_dir / f"worker-{stack.procs.index(w)}.log").read_text() for w in workers}
    assert all(any(j["id"] in log for j in study["jobs"]) for log in ran_by.values()), "a worker ran no job"

    # the comparison, recomputed from the children's own summaries
    figures = {
        (j["setting"], j["seed"]): api.get(f"/v1/jobs/{j['id']}").json()["result"]["summary"]["figures"]
        for j in study["jobs"]
    }
    comparison = study["comparison"]
    assert "max_relative_error" in comparison["figures"] and len(comparison["rows"]) == 6
    t975 = student_t.ppf(0.975, 1)
    for row in comparison["rows"]:
        for name in ("max_relative_error", "forward_ratio/geometric"):
            a, b = figures[(row["setting"], 0)][name], figures[(row["setting"], 1)][name]
            stat = row["figures"][name]
            assert stat["n"] == 2 and math.isclose(stat["mean"], (a + b) / 2, rel_tol=1e-12)
            assert math.isclose(stat["ci95"], t975 * abs(a - b) / 2, rel_tol=1e-9)  # sd/√2 = |a − b|/2
            if row["setting"] == 0:
                assert row["paired"] is None
            else:
                d = [figures[(row["setting"], s)][name] - figures[(0, s)][name] for s in (0, 1)]
                assert math.isclose(row["paired"][name]["mean"], sum(d) / 2, rel_tol=1e-9, abs_tol=1e-15)
        assert sum(row["verdicts"].values()) == 2

    curves = api.get(f"/v1/studies/{study['id']}/metrics", params={"name": "forward_moment/geometric"}).json()
    per_job = {}
    for r in curves["items"]:
        per_job.setdefault(r["job_id"], []).append((r["step"], r["value"]))
    assert set(per_job) == {j["id"] for j in study["jobs"]}  # one answer holds every child's curve
    one = study["jobs"][5]["id"]
    assert per_job[one] == [
        (r["step"], r["value"])
        for r in api.get(f"/v1/jobs/{one}/metrics", params={"name": "forward_moment/geometric"}).json()["items"]
    ]
    assert api.get(f"/v1/studies/{study['id']}/metrics").status_code == 422  # name is required

    # the page's chart: per setting the mean of its two seeds' curves and their min–max band (short curves: every step)
    bands = api.get(f"/v1/studies/{study['id']}/bands", params={"name": "forward_moment/geometric"}).json()
    assert bands["width"] == 1 and [b["label"] for b in bands["settings"]] == [s["label"] for s in study["settings"]]
    for band in bands["settings"]:
        kids = [dict(per_job[j["id"]]) for j in study["jobs"] if j["setting"] == band["setting"]]
        assert len(kids) == 2 and band["steps"] == sorted(set(kids[0]) | set(kids[1]))
        for i, step in enumerate(band["steps"]):
            a, b = kids[0][step], kids[1][step]
            assert math.isclose(band["mean"][i], (a + b) / 2, rel_tol=1e-12) and band["n"][i] == 2
            assert (band["min"][i], band["max"][i]) == (min(a, b), max(a, b))
            assert math.isclose(band["sd"][i], abs(a - b) / math.sqrt(2), rel_tol=1e-9)
    again = api.get(f"/v1/studies/{study['id']}/bands", params={"name": "forward_moment/geometric"})
    assert again.json() == bands  # a finished study's answer, kept
    assert api.get(f"/v1/studies/{study['id']}/bands", params={"name": "x", "points": 1}).status_code == 422

    text_csv = api.get(f"/v1/studies/{study['id']}/comparison.csv")
    assert text_csv.status_code == 200 and text_csv.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(text_csv.text)))
    assert [r["label"] for r in rows] == [r["label"] for r in comparison["rows"]]
    for r, row in zip(rows, comparison["rows"]):
        stat = row["figures"]["forward_ratio/geometric"]
        assert float(r["forward_ratio/geometric_mean"]) == stat["mean"] and int(r["succeeded"]) == 2
        assert float(r["forward_ratio/geometric_ci95"]) == stat["ci95"]
        assert (r["forward_ratio/geometric_diff_vs_baseline"] == "") == (row["setting"] == 0)

    env = {"GRADLAB_URL": stack.api_url, "GRADLAB_API_KEY": "", "COLUMNS": "1500"}  # no wrapping
    shown = CliRunner().invoke(study_cli, ["show", study["id"]], env=env)
    assert (
        shown.exit_code == 0
        and "distribution=uniform, activation=tanh" in shown.output
        and "12 succeeded" in shown.output
    )
    assert CliRunner().invoke(study_cli, ["show", study["id"], "--csv"], env=env).output == text_csv.text
    spec = tmp_path / "study.json"
    spec.write_text(json.dumps({**GRID, "grid": {"activation": ["linear", "tanh"]}, "seeds": [3]}))
    waited = CliRunner().invoke(study_cli, ["submit", str(spec), "--wait"], env=env)
    assert waited.exit_code == 0, waited.output
    assert "2 jobs" in waited.output and "paired difference" in waited.output and "activation=tanh" in waited.output
    assert CliRunner().invoke(client_cli, ["show", study["jobs"][0]["id"]], env=env).exit_code == 0


def test_bad_studies_are_refused_with_the_field(api):
    bad = api.post("/v1/studies", json={**GRID, "grid": {"activation": ["linear", "sigmoid"]}})
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "grid.activation"
    assert "activation=sigmoid" in bad.json()["detail"]
    big = api.post("/v1/studies", json={**GRID, "grid": {"batch": list(range(16, 316))}, "seeds": [0, 1]})
    assert big.status_code == 422 and big.json()["errors"][0]["field"] == "grid" and "500" in big.json()["detail"]
    assert api.post("/v1/studies", json={**GRID, "baseline": 6}).json()["errors"][0]["field"] == "baseline"
    assert api.post("/v1/studies", json={**GRID, "kind": "nope"}).json()["errors"][0]["field"] == "kind"
    assert api.post("/v1/studies", json={**GRID, "seeds": [1, 1]}).json()["errors"][0]["field"] == "seeds"
    assert api.get(f"/v1/studies/{uuid.uuid4()}").status_code == 404
    assert api.get("/v1/studies/not-a-uuid").status_code == 404


def test_a_study_with_a_grid_key_2000_deep_is_422_naming_the_field_and_stores_nothing(api):
    """Was a 500 (RecursionError): a dotted key of 2,000 parts, or values nested far deeper than any param, are
    refused by the request's schema, before anything is expanded or stored."""
    studies_before = len(api.get("/v1/studies", params={"limit": 500}).json()["items"])
    jobs_before = len(api.get("/v1/jobs", params={"limit": 500}).json()["items"])
    deep_key = ".".join(["sweep"] * 2000)
    deep_value: list = []
    for _ in range(40):
        deep_value = [deep_value]
    for body, field, says in [
        ({**SLOW, "grid": {deep_key: [4, 8]}}, "grid", "2000 parts, more than 8"),
        ({**SLOW, "grid": {"sweep.target_rank": [deep_value]}}, "grid", "nests more than 32 deep"),
        ({**SLOW, "grid": None, "settings": [{deep_key: 4}]}, "settings", "settings[0] key 'sweep.sweep"),
        ({**SLOW, "grid": {"sweep..target_rank": [4]}}, "grid", "'' is not a param name"),
    ]:
        resp = api.post("/v1/studies", json=body)
        assert resp.status_code == 422, resp.text
        assert resp.json()["errors"][0]["field"] == field and says in resp.json()["detail"], resp.json()
        assert len(resp.text) < 2000  # the 2,000-part key is not echoed whole
    assert len(api.get("/v1/studies", params={"limit": 500}).json()["items"]) == studies_before
    assert len(api.get("/v1/jobs", params={"limit": 500}).json()["items"]) == jobs_before


def test_study_cancelled_midway_cancels_its_children(api, workers):
    study = api.post("/v1/studies", json=SLOW).json()
    wait_for(
        lambda: api.get(f"/v1/studies/{study['id']}").json()["counts"].get("running"), 120, "a child to be running"
    )
    cancelled = api.post(f"/v1/studies/{study['id']}/cancel").json()
    assert cancelled["status"] in ("running", "cancelled") and cancelled["cancelled_at"]
    assert not cancelled["counts"].get("queued") and not cancelled["counts"].get("running")
    done = finished(api, study["id"], timeout=60)
    assert done["status"] == "cancelled" and done["counts"].get("cancelled", 0) >= 1
    for j in done["jobs"]:
        job = api.get(f"/v1/jobs/{j['id']}").json()
        assert job["status"] in ("succeeded", "cancelled")
        assert (job["result"] is not None) == (job["status"] == "succeeded")


def test_study_resumes_after_a_worker_is_sigkilled(stack, api, workers, pg_database):
    study = api.post("/v1/studies", json=SLOW).json()
    ids = [j["id"] for j in study["jobs"]]
    engine = create_engine(pg_database[1])

    def running_pid():
        with engine.connect() as conn:
            row = conn.execute(
                text("SELECT worker FROM jobs WHERE status = 'running' AND id = ANY(:ids)"), {"ids": ids}
            ).first()
        return row and int(row[0].rsplit(":", 1)[1])

    pid = wait_for(running_pid, 120, "a child to be running")
    victim = next(w for w in workers if w.pid == pid)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    workers.remove(victim)
    workers.append(stack.start_worker())
    done = finished(api, study["id"], timeout=300)
    engine.dispose()
    assert done["status"] == "succeeded" and done["counts"] == {"succeeded": 4}
    attempts = [api.get(f"/v1/jobs/{jid}").json()["attempt"] for jid in ids]
    assert sum(attempts) >= 5  # the killed child ran again; nothing was lost
    assert all(row["figures"]["elbow"]["n"] == 2 for row in done["comparison"]["rows"])
