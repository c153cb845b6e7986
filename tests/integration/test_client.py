"""The Python client, the client CLI commands and the SSE event stream against a real API process and a real
Celery worker on PostgreSQL and Redis. The CLI runs in-process through Typer's CliRunner, but every command talks
HTTP to the API process (GRADLAB_URL)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import subprocess
import time
import uuid

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from api.cli.jobs import client_cli
from api.client import ApiError, Client, Job, WaitTimeout
from core.report import html_report
from tests.stack import BIN, ROOT, free_port, wait_http

FAST = {
    "kind": "embedding_dim",
    "device": "cpu",
    "params": {
        "vocab_sizes": [512, 100000],
        "entropy_dims": [16, 64],
        "sweep": {"vocab_size": 32, "target_rank": 4, "dims": [2, 4, 8], "steps": 100},
    },
}
# About 4 s of fitting with metrics flushed every second: long enough to disconnect and resume mid-run.
MEDIUM = {
    "kind": "embedding_dim",
    "device": "cpu",
    "params": {
        "vocab_sizes": [100],
        "entropy_dims": [16],
        "sweep": {"vocab_size": 256, "target_rank": 8, "dims": [4, 8, 16, 24], "steps": 400},
    },
}
# Runs for a quarter of a minute or more; the tests that start it cancel it.
LONG = {
    "kind": "embedding_dim",
    "device": "cpu",
    "params": {
        "vocab_sizes": [100],
        "entropy_dims": [16],
        "sweep": {"vocab_size": 512, "target_rank": 8, "dims": [32, 48], "steps": 2000},
    },
}
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@pytest.fixture(scope="module")
def client(stack, api):
    stack.start_worker()
    with Client(stack.api_url) as c:
        yield c


@pytest.fixture(scope="module")
def cli(stack, client):
    runner = CliRunner()

    def invoke(*args: str, env: dict[str, str] | None = None):
        base = {"GRADLAB_URL": stack.api_url, "GRADLAB_API_KEY": "", "COLUMNS": "200"}
        return runner.invoke(client_cli, list(args), env={**base, **(env or {})})

    return invoke


@pytest.fixture(scope="module")
def finished(client) -> Job:
    """A succeeded job with metrics of several names and PNG artifacts."""
    job = client.wait(client.submit(FAST).id, timeout=60)
    assert job.succeeded, job
    return job


def sse(api_url: str, job_id: str, last_event_id: str | None = None, max_metrics: int | None = None):
    """Raw SSE frames as (event, id, data); stops after the terminal status, or once ``max_metrics`` metric events
    and a status event came (in either order: a stream that opens after rows were written sends them first)."""
    headers = {"Accept": "text/event-stream"} | ({"Last-Event-ID": last_event_id} if last_event_id else {})
    out, frame = [], {}
    with httpx.stream("GET", f"{api_url}/v1/jobs/{job_id}/events", headers=headers, timeout=30) as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        for line in resp.iter_lines():
            if line:
                key, _, value = line.partition(": ")
                frame[key] = value
                continue
            if "data" in frame:
                out.append((frame["event"], frame.get("id"), json.loads(frame["data"])))
                if frame["event"] == "status" and out[-1][2]["status"] in ("succeeded", "failed", "cancelled"):
                    return out
                if (
                    max_metrics is not None
                    and sum(e == "metric" for e, _, _ in out) >= max_metrics
                    and any(e == "status" for e, _, _ in out)
                ):
                    return out
            frame = {}
    return out


def all_metric_rows(api, job_id):
    return [
        (r["step"], r["name"], r["value"])
        for r in api.get(f"/v1/jobs/{job_id}/metrics", params={"limit": 10000}).json()["items"]
    ]


def titles(output: str) -> set[str]:
    """The lines that are a single word: the tables' titles among them."""
    return {line.strip() for line in output.splitlines() if len(line.split()) == 1}


# --- the CLI ---------------------------------------------------------------------------------------------------------
def test_cli_submit_yaml_and_wait_prints_progress_then_the_summary(cli, client, tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(FAST))
    res = cli("submit", str(spec), "--wait")
    assert res.exit_code == 0, res.output
    job_id = UUID.search(res.output).group(0)
    assert "succeeded" in res.output
    summary = client.get(job_id).result["summary"]  # the job's JSON carries the kind's answer, printed at the end
    assert summary["verdict"]["outcome"] == "supports" and summary["headline"].startswith("n > 8.33·ln N")
    assert res.output.index("verdict: supports (elbow_over_formula") < res.output.index("Comparison")
    assert "100,000" in res.output  # numbers are formatted
    # progress is a line now and then (not a terminal here): one per state and tenth of the way at most
    progress = [line for line in res.output.splitlines() if line.startswith(("queued ", "running ", "succeeded "))]
    assert 2 <= len(progress) <= 1 + 11 + 1, progress
    # the summary, not the whole result: its tables are behind --full
    assert "dimensions" not in titles(res.output) and f"gradlab show {job_id} --full" in res.output
    full = cli("submit", str(spec), "--wait", "--full")
    assert full.exit_code == 0 and {"Result", "dimensions"} <= titles(full.output)
    assert len(full.output.splitlines()) > len(res.output.splitlines()) + 10
    shown = cli("show", job_id, "--full")
    assert shown.exit_code == 0 and {"Result", "dimensions"} <= titles(shown.output)
    assert json.loads(cli("show", job_id, "--json").output)["result"] == client.get(job_id).result


def test_cli_exit_codes(cli, client, tmp_path):
    assert cli("submit", str(tmp_path / "missing.json")).exit_code == 2
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert cli("submit", str(bad)).exit_code == 2
    (tmp_path / "list.json").write_text("[1, 2]")
    assert cli("submit", str(tmp_path / "list.json")).exit_code == 2
    assert cli("jobs", "--status", "bogus").exit_code == 2

    invalid = tmp_path / "invalid.json"
    invalid.write_text(json.dumps({"kind": "embedding_dim", "params": {}}))
    res = cli("submit", str(invalid))
    assert res.exit_code == 1 and "422" in res.output and "params.vocab_sizes" in res.output

    res = cli("show", str(uuid.uuid4()))
    assert res.exit_code == 1 and "404" in res.output

    # a job that fails: this worker has no CUDA device
    cuda = tmp_path / "cuda.json"
    cuda.write_text(json.dumps({**FAST, "device": "cuda"}))
    res = cli("submit", str(cuda), "--wait")
    assert res.exit_code == 1, res.output
    assert "failed" in res.output and "device_unavailable" in res.output


def test_cli_cancel_events_show_and_jobs(cli, client, tmp_path):
    spec = tmp_path / "long.json"
    spec.write_text(json.dumps(LONG))
    res = cli("submit", str(spec))
    assert res.exit_code == 0, res.output
    job_id = UUID.search(res.output).group(0)
    deadline = time.monotonic() + 30
    while client.get(job_id).status != "running":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    res = cli("cancel", job_id)
    assert res.exit_code == 0 and "cancelled" in res.output
    res = cli("cancel", job_id)
    assert res.exit_code == 1 and "409" in res.output
    res = cli("events", job_id, "--follow")
    assert res.exit_code == 1 and "cancelled" in res.output.splitlines()[-1]
    res = cli("logs", job_id, "--follow", "--json")
    assert res.exit_code == 1 and json.loads(res.output.splitlines()[-1])["status"] == "cancelled"
    assert cli("show", job_id).exit_code == 0
    res = cli("jobs", "--status", "cancelled", "--kind", "embedding_dim")
    assert res.exit_code == 0 and job_id in res.output


def test_cli_artifacts_kinds_and_datasets(cli, client, finished, tmp_path):
    res = cli("artifacts", finished.id, "--out", str(tmp_path / "arts"))
    assert res.exit_code == 0, res.output
    arts = client.artifacts(finished.id)
    assert {a.name for a in arts} >= {"entropy_per_dim.png", "sweep.png"}
    for a in arts:
        data = (tmp_path / "arts" / a.name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == a.sha256 and len(data) == a.size
    assert "sweep.png" in cli("artifacts", finished.id).output
    res = cli("show", finished.id)
    assert res.exit_code == 0 and "Key figures" in res.output and "sweep.png" in res.output

    res = cli("kinds")
    assert res.exit_code == 0 and "embedding_dim" in res.output and "init_averaging" in res.output
    res = cli("kinds", "init_averaging")
    assert res.exit_code == 0 and json.loads(res.output) == client.kind("init_averaging").example
    assert yaml.safe_load(cli("kinds", "init_averaging", "--yaml").output) == client.kind("init_averaging").example
    assert cli("kinds", "no_such_kind").exit_code == 1

    csv = tmp_path / "data.csv"
    csv.write_text("a,b,label\n" + "".join(f"{i},{i * 2},{i % 2}\n" for i in range(20)))
    res = cli("datasets", "upload", str(csv), "--label-column", "label")
    assert res.exit_code == 0, res.output
    ds = client.dataset(UUID.search(res.output).group(0))
    assert ds.rows == 20 and ds.columns == 2 and ds.has_labels


def test_cli_upload_resumes_where_an_interrupted_run_stopped(cli, client, tmp_path, monkeypatch):
    from api.cli import datasets as dataset_cli

    monkeypatch.setenv("GRADLAB_UPLOAD_STATE", str(tmp_path / "uploads.json"))
    data = tmp_path / "rows.csv"
    data.write_text("a,b,label\n" + "".join(f"{i},{i % 7},{i % 3}\n" for i in range(200_000)))
    size = data.stat().st_size
    # a run that was interrupted after its first chunk: the server holds some bytes, the state file the id
    up = client.start_upload(data.name, size, hashlib.sha256(data.read_bytes()).hexdigest(), "label")
    client.append_chunk(up["id"], 0, data.read_bytes()[: size // 3])
    earlier = dataset_cli.Earlier(up["id"], up["dataset_id"], size, data.stat().st_mtime_ns)
    dataset_cli._remember(dataset_cli._file_key(client, data), earlier)

    res = cli("datasets", "upload", str(data), "--label-column", "label", "--chunk-mib", "1")
    assert res.exit_code == 0, res.output
    assert f"dataset {up['dataset_id']}: resuming upload {up['id']}" in res.output
    assert UUID.search(res.output).group(0) == up["dataset_id"]  # the same upload, finished
    ds = client.dataset(up["dataset_id"])
    assert (ds.status, ds.rows, ds.columns, ds.has_labels) == ("ready", 200_000, 2, True)
    assert ds.sha256 == hashlib.sha256(data.read_bytes()).hexdigest()
    assert "label_balance" in res.output
    assert dataset_cli._load_state() == {}  # forgotten once done

    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,x\n2,3\n")
    res = cli("datasets", "upload", str(bad))
    assert res.exit_code == 1 and "rejected: file: " in res.output and "invalid value 'x'" in res.output


def test_cli_tables_fit_80_columns_and_cut_no_value(cli, client, finished):
    narrow = {"COLUMNS": "80"}
    res = cli("jobs", "--limit", "5", env=narrow)
    assert res.exit_code == 0 and all(len(line) <= 80 for line in res.output.splitlines()), res.output
    assert finished.id in res.output  # an id is never cut to "3f2a9c1e-1…"
    assert "…" not in res.output
    res = cli("show", finished.id, "--full", env=narrow)
    assert res.exit_code == 0 and all(len(line) <= 80 for line in res.output.splitlines()), res.output
    assert "100,000" in res.output.split() and "dimensions" in titles(res.output)  # whole numbers, not "100,0…"
    res = cli("jobs", "--limit", "2", "--json")
    assert [j["id"] for j in json.loads(res.output)] == [j.id for j in client.list(limit=2)]


# --- the Python client -----------------------------------------------------------------------------------------------
def test_client_submit_get_list_metrics(client, api, finished):
    key = f"k-{uuid.uuid4()}"
    first = client.submit(FAST, idempotency_key=key)
    assert client.submit(FAST, idempotency_key=key).id == first.id
    done = client.wait(first.id, timeout=60)
    assert done.succeeded and done.result["dimensions"][1]["min_dimension"] == 96
    assert done.finished_at >= done.started_at >= done.created_at

    listed = list(client.list(kind="embedding_dim", page_size=1, limit=3))
    assert len(listed) == 3 and listed[0].id == first.id and len({j.id for j in listed}) == 3
    assert first.id in {j.id for j in client.list(status="succeeded")}

    rows = [(m.step, m.name, m.value) for m in client.metrics(finished.id, page_size=7)]
    assert rows == all_metric_rows(api, finished.id) and len(rows) > 7
    named = list(client.metrics(finished.id, name="fit_kl/n=4"))
    assert named and all(m.name == "fit_kl/n=4" for m in named)
    few = api.get(f"/v1/jobs/{finished.id}/metrics", params={"points": 4, "name": "fit_kl/n=4"}).json()
    values = [m.value for m in named]  # 11 rows in 2 buckets: the extremes of each, whole series' min and max
    assert 2 <= len(few["items"]) <= 4 and few["next_cursor"] is None
    assert {min(values), max(values)} <= {r["value"] for r in few["items"]}
    bad = api.get(f"/v1/jobs/{finished.id}/metrics", params={"points": 1})
    assert bad.status_code == 422 and "points" in bad.text


def test_client_errors_carry_the_problem(client):
    with pytest.raises(ApiError) as exc:
        client.submit({"kind": "embedding_dim", "params": {"vocab_sizes": "many"}})
    assert exc.value.status == 422 and "params.vocab_sizes" in exc.value.detail
    assert "params.vocab_sizes" in [e["field"] for e in exc.value.errors]
    with pytest.raises(ApiError) as exc:
        client.get(str(uuid.uuid4()))
    assert exc.value.status == 404 and "not found" in str(exc.value)
    with pytest.raises(ApiError) as exc:
        list(client.events(str(uuid.uuid4())))
    assert exc.value.status == 404
    with Client(f"http://127.0.0.1:{free_port()}") as nowhere, pytest.raises(ApiError) as exc:
        nowhere.kinds()
    assert exc.value.status is None and "cannot reach" in str(exc.value)


def test_wait_times_out_and_the_job_keeps_running(client):
    job = client.submit(LONG)
    t0 = time.monotonic()
    with pytest.raises(WaitTimeout) as exc:
        client.wait(job.id, timeout=1.5)
    assert 1.4 < time.monotonic() - t0 < 30  # it gave up at its timeout, not at the job's end (a minute away)
    assert exc.value.job.status in ("queued", "running")
    assert client.cancel(job.id).status == "cancelled"


# --- Server-Sent Events --------------------------------------------------------------------------------------------
def test_events_of_a_finished_job_replay_every_row_then_end(stack, api, finished):
    frames = sse(stack.api_url, finished.id)
    metrics = [(d["step"], d["name"], d["value"]) for e, _, d in frames if e == "metric"]
    assert metrics == all_metric_rows(api, finished.id)
    ids = [int(i) for e, i, _ in frames if e == "metric"]
    assert ids == sorted(set(ids))
    assert frames[-1][0] == "status" and frames[-1][2]["status"] == "succeeded" and frames[-1][2]["progress"] == 1.0
    assert frames[-1][1] == str(ids[-1])  # the status event carries the last row id too

    # resuming from the middle gives exactly the rest, from the last one: nothing
    k = len(ids) // 2
    rest = sse(stack.api_url, finished.id, last_event_id=str(ids[k - 1]))
    assert [(d["step"], d["name"], d["value"]) for e, _, d in rest if e == "metric"] == metrics[k:]
    tail = sse(stack.api_url, finished.id, last_event_id=str(ids[-1]))
    assert [e for e, _, _ in tail] == ["status"]


def test_events_resume_mid_run_without_losing_or_repeating_rows(stack, api, client):
    job = client.submit(MEDIUM)
    first = sse(stack.api_url, job.id, max_metrics=1)
    assert first[-1][0] in ("metric", "status") and any(e == "metric" for e, _, _ in first)
    last_id = first[-1][1]  # a status event carries the id of the last row sent before it
    deadline = time.monotonic() + 60
    while not api.get(f"/v1/jobs/{job.id}/metrics", params={"cursor": last_id, "limit": 1}).json()["items"]:
        assert time.monotonic() < deadline, "no rows arrived while nobody listened"
        time.sleep(0.05)  # until rows have arrived while nobody listens
    rest = sse(stack.api_url, job.id, last_event_id=last_id)
    assert rest[-1][0] == "status" and rest[-1][2]["status"] == "succeeded"
    delivered = [(int(i), (d["step"], d["name"], d["value"])) for e, i, d in first + rest if e == "metric"]
    ids = [i for i, _ in delivered]
    assert ids == sorted(set(ids)), "a metric row was repeated or came out of order"
    assert [row for _, row in delivered] == all_metric_rows(api, job.id), "a metric row was missed"
    running = [d for e, _, d in first + rest if e == "status" and d["status"] == "running"]
    assert running and all(0 <= d["progress"] <= 1 and d["attempt"] == 1 for d in running)

    # the client resumes the same way from an id it was given
    resumed = [
        (e.data["step"], e.data["name"], e.data["value"])
        for e in client.events(job.id, last_event_id=last_id)
        if e.event == "metric"
    ]
    assert resumed == [row for i, row in delivered if i > int(last_id)]


def test_events_honour_auth_and_tenants(stack, finished):
    def key(*args: str) -> str:
        out = subprocess.run(
            [str(BIN / "gradlab"), "keys", "create", *args],
            env={**os.environ, **stack.env},
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        return out.split("key: ", 1)[1].strip()

    port = free_port()
    stack._spawn([str(BIN / "gradlab"), "api", "--port", str(port)], "api-auth", {"GRADLAB_AUTH": "required"})
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/healthz")
    path = f"{url}/v1/jobs/{finished.id}/events"
    resp = httpx.get(path)
    assert resp.status_code == 401 and resp.headers["content-type"].startswith("application/problem+json")
    other = key("--tenant", "someone-else")
    resp = httpx.get(path, headers={"Authorization": f"Bearer {other}"})
    assert resp.status_code == 404 and resp.json()["detail"] == f"job {finished.id} not found"
    with Client(url, api_key=key("--tenant", "ops", "--admin")) as admin:
        events = list(admin.events(finished.id))
    assert events[-1].event == "status" and events[-1].data["status"] == "succeeded"
    assert sum(e.event == "metric" for e in events) > 10


# --- the HTML report -------------------------------------------------------------------------------------------------
def test_html_report_of_a_real_job(client, finished):
    arts = [(a.name, client.artifact(finished.id, a.name), a.media_type) for a in client.artifacts(finished.id)]
    page = html_report(finished.kind, finished.params, finished.result, arts).decode()
    assert page.startswith("<!doctype html>") and "<script" not in page
    assert "default-src 'none'" in page  # offline and inert
    assert "embedding_dim" in page and "min_dimension" in page and "100,000" in page and "vocab_sizes" in page
    embedded = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    pngs = [data for _, data, media in arts if media == "image/png"]
    assert len(embedded) == len(pngs) >= 2
    assert sorted(base64.b64decode(e) for e in embedded) == sorted(pngs)
