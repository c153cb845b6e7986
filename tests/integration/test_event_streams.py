"""Event streams on a real API process (PostgreSQL): many watchers of one job share the process's feed and each
gets every metric row exactly once, in order, then the terminal status; each API key may hold only
GRADLAB_MAX_STREAMS_PER_KEY open streams (429 beyond). The test writes the job's rows itself through the store, as
a worker's heartbeat would, so it decides when rows arrive."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import uuid

import httpx
import pytest
from sqlalchemy import event

from core.db.engine import make_engine, make_sessionmaker
from core.jobs import repository as job_store
from core.jobs.states import JobStatus
from core.jobs.watch import JobFeeds
from core.keys.repository import create_key
from core.metrics import repository as metric_store

CAP = 3
JOB = {"kind": "init_averaging", "params": {"widths": [8, 8]}}


@pytest.fixture(scope="module")
def service_env(service_env):
    return {
        **service_env,
        "GRADLAB_AUTH": "required",
        "GRADLAB_MAX_STREAMS_PER_KEY": str(CAP),
        "GRADLAB_EVENTS_POLL_S": "0.05",
    }


@pytest.fixture(scope="module")
def sessions(pg_database):
    engine = make_engine(pg_database[1])
    yield make_sessionmaker(engine)
    engine.dispose()


@pytest.fixture(scope="module")
def new_key(sessions, api):
    def make(tenant: str = "watchers") -> dict:
        with sessions() as session:
            return {"Authorization": f"Bearer {create_key(session, tenant)[1]}"}

    return make


class Watcher(threading.Thread):
    """Reads one job's stream to its end: metric row ids and the status events, in arrival order."""

    def __init__(self, url: str, headers: dict):
        super().__init__(daemon=True)
        self.url, self.headers = url, headers
        self.ids: list[int] = []
        self.statuses: list[str] = []
        self.connected = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with httpx.stream("GET", self.url, headers=self.headers, timeout=60) as resp:
                assert resp.status_code == 200, resp.read()
                self.connected.set()
                frame: dict[str, str] = {}
                for line in resp.iter_lines():
                    if line:
                        name, _, value = line.partition(": ")
                        frame[name] = value
                        continue
                    if frame.get("event") == "metric":
                        self.ids.append(int(frame["id"]))
                    elif frame.get("event") == "status":
                        self.statuses.append(json.loads(frame["data"])["status"])
                    frame = {}
        except Exception as exc:  # noqa: BLE001 (reported by the test)
            self.error = exc
            self.connected.set()


def open_stream(url: str, path: str, headers: dict) -> tuple[socket.socket, bytes]:
    """A held stream on a raw socket: (socket, status line)."""
    u = httpx.URL(url)
    sock = socket.create_connection((u.host, u.port), timeout=10)
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n{head}\r\n".encode())
    data = b""
    while b"\r\n" not in data:
        data += sock.recv(4096)
    return sock, data.split(b"\r\n", 1)[0]


def test_each_watcher_gets_every_row_once_then_the_terminal_status(stack, api, sessions, new_key):
    headers = new_key("fanout")
    job = api.post("/v1/jobs", json=JOB, headers=headers).json()
    jid = uuid.UUID(job["id"])
    url = f"{stack.api_url}/v1/jobs/{jid}/events"
    with sessions() as session:
        assert job_store.claim(session, jid, "test-worker") is not None
    early = [Watcher(url, new_key("fanout")) for _ in range(8)]
    for w in early:
        w.start()
    for w in early:
        assert w.connected.wait(30) and w.error is None, w.error
    # batches: small ones, one larger than a feed read (1000 rows), then more small ones
    batches = [50, 2500, 10, 700, 1]
    written = 0
    late = None
    for i, n in enumerate(batches):
        rows = [(written + k, "loss", float(written + k)) for k in range(n)]
        written += n
        with sessions() as session:
            assert job_store.beat(session, jid, 1, progress=i / len(batches), message=None, metric_rows=rows)
        if i == 2:  # a watcher resuming mid-run from the id of row 100
            with sessions() as session:
                resume_at = metric_store.read_metrics(session, jid, name=None, after_step=None, cursor=None, limit=101)[
                    0
                ][100].id
            late = Watcher(url, {**new_key("fanout"), "Last-Event-ID": str(resume_at)})
            late.start()
    with sessions() as session:
        assert job_store.finish(session, jid, 1, JobStatus.succeeded, result={})
        every = [
            r.id
            for r in metric_store.read_metrics(session, jid, name=None, after_step=None, cursor=None, limit=10_000)[0]
        ]
    assert len(every) == written
    for w in early + [late]:
        w.join(60)
        assert not w.is_alive() and w.error is None, w.error
        assert w.statuses[-1] == "succeeded" and w.statuses.count("succeeded") == 1
    for w in early:
        assert w.statuses[0] == "running" and w.ids == every
    assert late.ids == [i for i in every if i > resume_at]


def test_open_streams_are_capped_per_key(stack, api, new_key):
    alice, alice2 = new_key("alice"), new_key("alice")
    job = api.post("/v1/jobs", json=JOB, headers=alice).json()  # stays queued: no worker here
    path = f"/v1/jobs/{job['id']}/events"
    held = [open_stream(stack.api_url, path, alice) for _ in range(CAP)]
    try:
        assert all(status.endswith(b" 200 OK") for _, status in held), [s for _, s in held]
        refused = httpx.get(stack.api_url + path, headers=alice)
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert "open event streams" in refused.json()["detail"]
        other, status = open_stream(stack.api_url, path, alice2)  # another key has its own allowance
        other.close()
        assert status.endswith(b" 200 OK")
        held.pop()[0].close()  # a closed stream frees its slot
        deadline = time.monotonic() + 10
        while True:
            sock, status = open_stream(stack.api_url, path, alice)
            held.append((sock, status))
            if status.endswith(b" 200 OK"):
                break
            held.pop()[0].close()
            assert time.monotonic() < deadline, "the closed stream's slot was not freed"
            time.sleep(0.05)
    finally:
        for sock, _ in held:
            sock.close()
    api.post(f"/v1/jobs/{job['id']}/cancel", headers=alice)


def test_one_poller_reads_every_watched_job_in_a_constant_number_of_statements(stack, api, pg_database, new_key):
    """Twelve watched jobs whose rows interleave: each feed gets exactly its own job's rows, in order, then the
    terminal status, and a tick costs the same few statements as it would for one job (it was two a job)."""
    engine = make_engine(pg_database[1])
    statements = []
    event.listen(engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    sessions = make_sessionmaker(engine)  # the feeds' (counted)
    writer_engine = make_engine(pg_database[1])
    writes = make_sessionmaker(writer_engine)  # the test's, as a worker's heartbeat would write
    headers = new_key("poller")
    jobs = [uuid.UUID(api.post("/v1/jobs", json=JOB, headers=headers).json()["id"]) for _ in range(12)]
    with writes() as session:
        for jid in jobs:
            assert job_store.claim(session, jid, "test-worker") is not None

    def write_and_finish() -> None:
        for batch in range(3):
            for n, jid in enumerate(jobs):
                rows = [(batch * 100 + k, "loss", float(n)) for k in range(n + 1)]
                with writes() as session:
                    assert job_store.beat(session, jid, 1, progress=None, message=None, metric_rows=rows)
        with writes() as session:
            for jid in jobs:
                assert job_store.finish(session, jid, 1, JobStatus.succeeded, result={})

    async def watch() -> tuple[list, int, int]:
        feeds = JobFeeds(sessions, 0.02, lambda row: f"{row[0]},")
        ticks = 0
        tick = feeds._tick

        def counted(floors):
            nonlocal ticks
            ticks += 1
            return tick(floors)

        feeds._tick = counted  # type: ignore[method-assign]
        watched = [feeds.subscribe(jid) for jid in jobs]
        deadline = time.monotonic() + 30
        while any(f.floor is None for f in watched):
            assert time.monotonic() < deadline, "the feeds did not start"
            await asyncio.sleep(0.01)
        ticks, statements[:] = 0, []
        await asyncio.to_thread(write_and_finish)
        while not all(f.done for f in watched):
            assert time.monotonic() < deadline + 30, "the feeds did not reach the jobs' end"
            await asyncio.sleep(0.01)
        return watched, ticks, len(statements)

    watched, ticks, count = asyncio.run(watch())
    engine.dispose()
    assert ticks > 0 and count <= 3 * ticks, (count, ticks)
    with writes() as session:
        for n, (jid, feed) in enumerate(zip(jobs, watched)):
            rows = metric_store.read_metrics(session, jid, name=None, after_step=None, cursor=None, limit=1000)[0]
            assert len(rows) == 3 * (n + 1) and feed.ids == [r.id for r in rows]
            assert feed.status is not None and feed.status["status"] == "succeeded"
    writer_engine.dispose()
