"""Operating the service: Prometheus metrics against the database, structured logs of one job, workers and
queues with two workers, queue position and ETA behind one worker, Celery task events (what Flower reads).

The module's stack: the API (metrics on, auth disabled) and two workers, W1 consuming cpu+auto and W2 gpu+auto,
so the cpu queue has one worker and the auto queue two.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import threading
import time
import uuid
from collections import defaultdict
from datetime import UTC, datetime

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, text

from tests.stack import BIN, wait_job

QUICK = {"kind": "init_averaging", "params": {"widths": [16, 16]}}
QUICK_EMBEDDING = {"kind": "embedding_dim", "params": {"vocab_sizes": [100]}}
LONG = {
    "kind": "embedding_dim",
    "params": {
        "vocab_sizes": [100],
        "entropy_dims": [16],
        "sweep": {"vocab_size": 512, "target_rank": 8, "dims": [32, 48], "steps": 600},
    },
}
TERMINAL = ("succeeded", "failed", "cancelled")


@pytest.fixture(scope="module")
def workers(stack, api):
    return [stack.start_worker(queues="cpu,auto"), stack.start_worker(queues="gpu,auto")]


@pytest.fixture(scope="module")
def db(pg_database):
    engine = create_engine(pg_database[1])
    yield engine
    engine.dispose()


def rows(db, sql: str, **params) -> list:
    with db.connect() as conn:
        return conn.execute(text(sql), params).all()


def scrape(api: httpx.Client) -> list:
    resp = api.get("/metrics")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    return [s for fam in text_string_to_metric_families(resp.text) for s in fam.samples]


def total(samples, name: str, **labels) -> float:
    return sum(s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = predicate()
        if got:
            return got
        time.sleep(0.1)
    raise TimeoutError(what)


def test_metrics_move_with_a_run_of_jobs_and_match_the_database(api, workers, db):
    before = scrape(api)
    ids = [api.post("/v1/jobs", json=QUICK).json()["id"] for _ in range(3)]
    ids.append(api.post("/v1/jobs", json={**QUICK, "device": "cuda"}).json()["id"])  # W2 has no CUDA: fails
    done = [wait_job(api, job_id, timeout=120) for job_id in ids]
    assert [d["status"] for d in done] == ["succeeded"] * 3 + ["failed"], done
    assert api.get(f"/v1/jobs/{ids[0]}/artifacts").status_code == 200  # renders its plot and report: bytes stored

    ran = rows(
        db,
        "SELECT kind, status, count(*) FROM jobs WHERE started_at IS NOT NULL "
        "AND status IN ('succeeded', 'failed', 'cancelled') GROUP BY kind, status",
    )

    def caught_up():  # each worker writes its counters with its next beat
        samples = scrape(api)
        counted = sum(total(samples, "gradlab_job_run_seconds_count", kind=k, outcome=s) for k, s, _ in ran)
        return samples if counted == sum(n for *_, n in ran) else None

    after = wait_until(caught_up, 30, "the workers' counters did not reach the scrape")

    # state, from the database at scrape time
    for status, kind, n in rows(db, "SELECT status, kind, count(*) FROM jobs GROUP BY status, kind"):
        assert total(after, "gradlab_jobs", status=status, kind=kind) == n
    assert total(after, "gradlab_jobs") == rows(db, "SELECT count(*) FROM jobs")[0][0]
    queued = dict(rows(db, "SELECT queue, count(*) FROM jobs WHERE status = 'queued' GROUP BY queue"))
    for queue in ("cpu", "gpu", "auto"):
        assert total(after, "gradlab_queue_depth", queue=queue) == queued.get(queue, 0)
    assert (
        total(after, "gradlab_blob_bytes", store="artifacts")
        == rows(db, "SELECT coalesce(sum(size), 0) FROM artifacts")[0][0]
        > 0
    )
    # heartbeat ages: the scrape's time less the beat it read, which lies between two reads of the rows around it
    beats_before = dict(rows(db, "SELECT name, heartbeat_at FROM workers"))
    t0 = datetime.now(UTC)
    ages = {s.labels["worker"]: s.value for s in scrape(api) if s.name == "gradlab_worker_heartbeat_age_seconds"}
    t1 = datetime.now(UTC)
    beats_after = dict(rows(db, "SELECT name, heartbeat_at FROM workers"))
    assert len(ages) == 2 and set(ages) == set(beats_before) == set(beats_after)
    for name, age in ages.items():
        low, high = (t0 - beats_after[name]).total_seconds(), (t1 - beats_before[name]).total_seconds()
        assert low - 0.01 <= age <= high + 0.01, (name, low, age, high)

    # the workers' own counters, against the rows they describe
    for kind, status, n in ran:
        assert total(after, "gradlab_job_run_seconds_count", kind=kind, outcome=status) == n
    # each claim is observed once: its wait since creation (the database keeps the latest attempt's start), and
    # the attempt; a job retried after a lost worker (a stalled beat on a busy machine) counts every attempt
    claims = rows(
        db,
        "SELECT kind, queue, attempt, extract(epoch FROM started_at - created_at) FROM jobs "
        "WHERE started_at IS NOT NULL",
    )
    by_pair = defaultdict(list)
    for kind, queue, attempt, wait in claims:
        by_pair[(kind, queue)].append((attempt, float(wait)))
    for (kind, queue), seen in by_pair.items():
        count = sum(attempt for attempt, _ in seen)
        assert total(after, "gradlab_job_wait_seconds_count", kind=kind, queue=queue) == count
        assert total(after, "gradlab_job_wait_seconds_bucket", kind=kind, queue=queue, le="+Inf") == count
        if count == len(seen):  # no retries: the waits are the rows' own
            assert total(after, "gradlab_job_wait_seconds_sum", kind=kind, queue=queue) == pytest.approx(
                sum(wait for _, wait in seen), abs=1e-3
            )
    assert total(after, "gradlab_job_attempts_total") == sum(attempt for _, _, attempt, _ in claims)
    for kind, error_type, n in rows(
        db, "SELECT kind, error_type, count(*) FROM jobs WHERE status = 'failed' GROUP BY kind, error_type"
    ):
        assert total(after, "gradlab_job_failures_total", kind=kind, type=error_type) == n
    assert total(after, "gradlab_job_failures_total", kind="init_averaging", type="device_unavailable") >= 1
    stored_rows = rows(db, "SELECT count(*) FROM metrics")[0][0]
    if all(attempt == 1 for _, _, attempt, _ in claims):
        assert total(after, "gradlab_metric_rows_ingested_total") == stored_rows
    else:  # a new attempt deletes the rows of the one before it
        assert total(after, "gradlab_metric_rows_ingested_total") >= stored_rows

    # HTTP: by route template, moved by exactly the requests made
    posts = dict(method="POST", route="/v1/jobs", status="201")
    assert (
        total(after, "gradlab_http_request_duration_seconds_count", **posts)
        - total(before, "gradlab_http_request_duration_seconds_count", **posts)
    ) == 4
    assert total(after, "gradlab_http_request_duration_seconds_count", method="GET", route="/v1/jobs/{job_id}") > 0
    routes = {s.labels["route"] for s in after if s.name.startswith("gradlab_http_request_duration_seconds")}
    assert not any(re.search(r"[0-9a-f]{8}-[0-9a-f]{4}", r) for r in routes), routes


def test_sweeper_republishing_is_counted(api, workers, db):
    """A queued job whose message was lost (published_at NULL, as after a failed publish) is published again by
    a worker's sweeper, which counts it; the job sits in a queue no worker consumes, so it stays queued."""
    before = total(scrape(api), "gradlab_sweeper_actions_total", action="republished")
    job_id = str(uuid.uuid4())
    with db.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO jobs (id, tenant, kind, status, params, seed, device_requested, queue, "
                "timeout_s, progress, message, attempt, created_at, published_at) VALUES (:id, 'local', "
                "'init_averaging', 'queued', :params, 0, 'auto', 'nobody', 60, 0, 'queued', 0, now(), "
                "NULL)"
            ),
            {"id": job_id, "params": json.dumps(QUICK["params"])},
        )
    wait_until(
        lambda: total(scrape(api), "gradlab_sweeper_actions_total", action="republished") > before,
        30,
        "no sweeper counted the re-publication",
    )
    assert rows(db, "SELECT published_at IS NOT NULL FROM jobs WHERE id = :id", id=job_id)[0][0]
    assert total(scrape(api), "gradlab_queue_depth", queue="nobody") == 1
    assert api.post(f"/v1/jobs/{job_id}/cancel").json()["status"] == "cancelled"


def test_workers_and_queues_during_a_run_with_two_workers(api, workers, db):
    running = [api.post("/v1/jobs", json=LONG).json()["id"] for _ in range(2)]
    for job_id in running:
        wait_job(api, job_id, statuses=("running",), timeout=60)
    waiting = api.post("/v1/jobs", json=LONG).json()["id"]

    listed = api.get("/v1/workers").json()
    by_worker = dict(rows(db, "SELECT worker, id FROM jobs WHERE status = 'running'"))
    assert {w["name"] for w in listed} == set(by_worker)
    for w in listed:
        assert w["current_job"]["id"] == str(by_worker[w["name"]]) and w["current_job"]["kind"] == "embedding_dim"
        assert w["name"] == f"{w['host']}:{w['pid']}" and 0 <= w["heartbeat_age_s"] < 4
        assert w["device"]["type"] in ("cpu", "cuda")
    assert {w["pid"] for w in listed} == {p.pid for p in workers}
    assert sorted(w["queues"] for w in listed) == [["auto", "cpu"], ["auto", "gpu"]]

    queues = {q["name"]: q for q in api.get("/v1/queues").json()}
    assert queues["auto"]["depth"] == 1 and queues["auto"]["running"] == 2 and queues["auto"]["workers"] == 2
    assert queues["auto"]["oldest_wait_s"] > 0
    assert queues["cpu"]["workers"] == 1 and queues["gpu"]["workers"] == 1 and queues["cpu"]["depth"] == 0
    assert api.get(f"/v1/jobs/{waiting}").json()["queue_position"] == 1
    for job_id in [waiting, *running]:
        api.post(f"/v1/jobs/{job_id}/cancel")
    for job_id in running:
        wait_job(api, job_id)
    wait_until(
        lambda: all(w["current_job"] is None for w in api.get("/v1/workers").json()),
        30,
        "the workers did not drop the cancelled jobs",
    )


def _run_s(db, kind: str, queue: str) -> float:
    samples = [
        float(r[0])
        for r in rows(
            db,
            "SELECT extract(epoch FROM finished_at - started_at) FROM jobs WHERE kind = :kind AND queue = :queue "
            "AND status = 'succeeded' ORDER BY finished_at DESC LIMIT 20",
            kind=kind,
            queue=queue,
        )
    ]
    return statistics.median(samples)


def test_queue_position_and_eta_of_five_jobs_behind_one_worker(api, workers, db, stack, tmp_path):
    """The cpu queue has one worker (W1): with a long job running there, five queued jobs are 1st..5th, and each
    waits for the rest of the running job plus a typical run of each job ahead of it."""
    for spec in (QUICK, QUICK, QUICK_EMBEDDING):  # run-time history of both kinds on the cpu queue
        assert wait_job(api, api.post("/v1/jobs", json={**spec, "device": "cpu"}).json()["id"])["status"] == "succeeded"
    long_job = api.post("/v1/jobs", json={**LONG, "device": "cpu"}).json()["id"]
    started = datetime.fromisoformat(wait_job(api, long_job, statuses=("running",), timeout=60)["started_at"])
    queued = [api.post("/v1/jobs", json={**QUICK, "device": "cpu"}).json()["id"] for _ in range(5)]

    typical_long, typical_quick = _run_s(db, "embedding_dim", "cpu"), _run_s(db, "init_averaging", "cpu")
    etas = []
    for position, job_id in enumerate(queued, start=1):
        t0 = datetime.now(UTC)
        job = api.get(f"/v1/jobs/{job_id}").json()
        t1 = datetime.now(UTC)
        assert job["status"] == "queued" and job["queue"] == "cpu" and job["queue_position"] == position

        def expected(now, position=position):
            return max(typical_long - (now - started).total_seconds(), 0.0) + (position - 1) * typical_quick

        assert expected(t1) - 0.06 <= job["eta_s"] <= expected(t0) + 0.06, (job["eta_s"], expected(t0))
        etas.append(job["eta_s"])
    # each place adds a typical quick run, which may be shorter than the 0.1 s the estimate is rounded to (and the
    # GETs take a little time)
    assert etas[-1] - etas[0] == pytest.approx(4 * typical_quick, abs=0.15)
    assert api.get(f"/v1/jobs/{long_job}").json()["queue_position"] is None  # running: no place in a queue

    # the CLI shows the place while it waits ("6th in the cpu queue, ~...")
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({**QUICK, "device": "cpu"}))
    env = {**os.environ, **stack.env, "GRADLAB_URL": stack.api_url, "COLUMNS": "200"}
    cli = subprocess.run(
        [str(BIN / "gradlab"), "submit", str(spec), "--wait", "--timeout", "3"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert cli.returncode == 1, cli.stdout + cli.stderr
    assert "6th in the cpu queue" in cli.stderr, cli.stderr  # progress goes to stderr, the outcome to stdout

    for job_id in [*queued, long_job]:
        api.post(f"/v1/jobs/{job_id}/cancel")
    for job in api.get("/v1/jobs", params={"status": "queued"}).json()["items"]:
        api.post(f"/v1/jobs/{job['id']}/cancel")
    wait_job(api, long_job)


def _json_lines(path) -> list[dict]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def test_logs_of_one_job_carry_its_id_from_submit_to_finish(api, workers, stack, db):
    request_id = f"test-{uuid.uuid4().hex[:12]}"
    resp = api.post("/v1/jobs", json=QUICK, headers={"X-Request-ID": request_id})
    assert resp.status_code == 201 and resp.headers["x-request-id"] == request_id
    job_id = resp.json()["id"]
    assert wait_job(api, job_id)["status"] == "succeeded"
    worker = rows(db, "SELECT worker FROM jobs WHERE id = :id", id=job_id)[0][0]

    api_lines = [ln for p in stack.log_dir.glob("api-*.log") for ln in _json_lines(p)]
    submitted = [ln for ln in api_lines if ln.get("job_id") == job_id]
    assert submitted and submitted[0]["request_id"] == request_id and submitted[0]["kind"] == "init_averaging"
    assert submitted[0]["tenant"] == "local" and "submitted" in submitted[0]["message"]

    def worker_lines():
        for p in stack.log_dir.glob("worker-*.log"):
            lines = _json_lines(p)
            if any(ln["logger"] == "celery.app.trace" and ln.get("job_id") == job_id for ln in lines):
                return lines  # Celery's "Task ... succeeded in" line, the last one of the task
        return None

    lines = wait_until(worker_lines, 30, "the worker never logged the job's outcome")
    mine = [ln for ln in lines if ln.get("job_id") == job_id]
    # every line that names the job carries its id as a field, and the worker's name
    assert all(ln.get("job_id") == job_id for ln in lines if job_id in ln["message"])
    assert all(ln.get("worker") == worker for ln in mine)
    first, last = lines.index(mine[0]), lines.index(mine[-1])
    window = [ln for ln in lines[first : last + 1] if ln["logger"] not in ("workers.presence", "workers.sweeper")]
    assert all(ln.get("job_id") == job_id for ln in window), [ln for ln in window if ln.get("job_id") != job_id]
    messages = [ln["message"] for ln in mine]
    assert "received" in messages[0] and f"job {job_id}: succeeded" in messages
    assert mine[-1]["logger"] == "celery.app.trace" and "succeeded in" in messages[-1]
    claimed = next(ln for ln in mine if "claimed" in ln["message"])
    assert claimed["attempt"] == 1 and claimed["kind"] == "init_averaging" and claimed["tenant"] == "local"
    after_claim = mine[mine.index(claimed) :]
    assert all(ln["attempt"] == 1 and ln["kind"] == "init_averaging" and ln["tenant"] == "local" for ln in after_claim)


def test_request_id_in_header_and_problem_body(api, workers):
    missing = str(uuid.uuid4())
    resp = api.get(f"/v1/jobs/{missing}", headers={"X-Request-ID": "trace-42"})
    assert resp.status_code == 404 and resp.headers["content-type"] == "application/problem+json"
    assert resp.headers["x-request-id"] == "trace-42" and resp.json()["request_id"] == "trace-42"
    resp = api.post(
        "/v1/jobs",
        json={"kind": "init_averaging", "params": {"widths": "x"}},
        headers={"X-Request-ID": "bad id with spaces"},
    )
    assert resp.status_code == 422
    generated = resp.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated) and resp.json()["request_id"] == generated


def test_access_with_authentication_required(stack, pg_database, workers):
    """Workers are listed for admin keys only; queues for any key; /metrics for the scrape token alone."""
    from core.db.engine import make_engine, make_sessionmaker
    from core.keys.repository import create_key
    from tests.stack import free_port, wait_http

    engine = make_engine(pg_database[1])
    with make_sessionmaker(engine)() as s:
        user, admin = create_key(s, "acme", "user", False)[1], create_key(s, "ops", "admin", True)[1]
    engine.dispose()
    port = free_port()
    proc = stack._spawn(
        [str(BIN / "gradlab"), "api", "--port", str(port)],
        "api-auth",
        {"GRADLAB_AUTH": "required", "GRADLAB_METRICS_TOKEN": "scrape-token-1"},
    )
    wait_http(f"http://127.0.0.1:{port}/healthz", proc=proc)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
        as_user, as_admin = {"Authorization": f"Bearer {user}"}, {"Authorization": f"Bearer {admin}"}
        refused = c.get("/v1/workers", headers=as_user)
        assert refused.status_code == 403 and refused.headers["content-type"] == "application/problem+json"
        assert refused.json()["request_id"] == refused.headers["x-request-id"]
        assert len(c.get("/v1/workers", headers=as_admin).json()) == 2
        assert c.get("/v1/workers").status_code == 401
        assert c.get("/v1/queues", headers=as_user).status_code == 200
        assert c.get("/metrics").status_code == 401
        assert c.get("/metrics", headers=as_admin).status_code == 401  # an API key is not the scrape token
        assert c.get("/metrics", headers={"Authorization": "Bearer scrape-token-2"}).status_code == 401
        scraped = c.get("/metrics", headers={"Authorization": "Bearer scrape-token-1"})
        assert scraped.status_code == 200 and "gradlab_queue_depth" in scraped.text
    os.killpg(proc.pid, 15)
    proc.wait(timeout=15)


def test_task_events_reach_a_celery_event_receiver(api, workers, stack):
    """Workers send task events, which is what `celery flower` and `celery events` read."""
    from core.settings import Settings
    from workers.app import make_celery

    app = make_celery(
        Settings(broker_url=stack.env["GRADLAB_BROKER_URL"], broker_key_prefix=stack.env["GRADLAB_BROKER_KEY_PREFIX"])
    )
    events: list[dict] = []
    stop = threading.Event()

    def listen():
        with app.connection_for_read() as conn:
            receiver = app.events.Receiver(conn, handlers={"*": events.append})
            while not stop.is_set():
                try:
                    for _ in receiver.itercapture(limit=None, timeout=0.5, wakeup=False):
                        if stop.is_set():
                            return
                except (TimeoutError, OSError):
                    continue

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    try:
        wait_until(lambda: any(e["type"] == "worker-heartbeat" for e in events), 30, "no worker heartbeat event")
        job_id = api.post("/v1/jobs", json=QUICK).json()["id"]
        assert wait_job(api, job_id)["status"] == "succeeded"

        def task_seen():
            received = [e for e in events if e["type"] == "task-received" and job_id in e.get("args", "")]
            return received and any(e["type"] == "task-succeeded" and e["uuid"] == received[0]["uuid"] for e in events)

        wait_until(task_seen, 30, "no task-received/task-succeeded events for the job")
    finally:
        stop.set()
        listener.join(timeout=10)


def test_compose_prometheus_and_grafana_read_what_the_api_exports(api, workers):
    """The optional compose profile scrapes the API with the token, and every series the dashboard plots is one
    the API exports (names compared with a live scrape, histogram and counter suffixes aside)."""
    import yaml

    from tests.stack import ROOT

    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    for name in ("prometheus", "grafana"):
        assert compose["services"][name]["profiles"] == ["observability"]
    assert "GRADLAB_METRICS_TOKEN" in compose["services"]["api"]["environment"]
    scrape_config = yaml.safe_load((ROOT / "docker" / "prometheus.yml").read_text())["scrape_configs"][0]
    assert scrape_config["metrics_path"] == "/metrics" and scrape_config["static_configs"][0]["targets"] == ["api:8000"]
    entrypoint = " ".join(compose["services"]["prometheus"]["entrypoint"])
    assert scrape_config["authorization"]["credentials_file"] in entrypoint

    def family(name: str) -> str:
        return re.sub(r"_(bucket|count|sum|total)$", "", name)

    exported = {family(f.name) for f in text_string_to_metric_families(api.get("/metrics").text)}
    dashboard = json.loads((ROOT / "docker" / "grafana" / "dashboards" / "gradlab.json").read_text())
    plotted = {
        family(m) for p in dashboard["panels"] for t in p["targets"] for m in re.findall(r"gradlab_\w+", t["expr"])
    }
    assert plotted and plotted <= exported, plotted - exported
