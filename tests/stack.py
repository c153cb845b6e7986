"""Real processes for integration tests: a throw-away PostgreSQL database, a Redis key prefix, API and workers.

Everything a test starts it also stops and removes; nothing depends on state left in the shared servers.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
PG_ADMIN_URL = os.environ.get("GRADLAB_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("GRADLAB_TEST_REDIS", "redis://127.0.0.1:6379/0")
BIN = Path(sys.executable).parent


def free_port() -> int:
    with closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def create_database() -> tuple[str, str]:
    """A new, empty PostgreSQL database with a unique name; returns (name, SQLAlchemy URL)."""
    import psycopg

    name = f"gradlab_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    return name, f"{base}/{name}"


def drop_database(name: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def delete_redis_prefix(prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)


@dataclass
class Stack:
    """Environment shared by the API and workers of one test stack, and the processes started on it."""

    env: dict[str, str]
    log_dir: Path
    procs: list[subprocess.Popen] = field(default_factory=list)
    api_url: str | None = None

    def _spawn(self, args: list[str], name: str, extra_env: dict | None = None) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}-{len(self.procs)}.log", "wb")
        env = {**os.environ, **self.env, **(extra_env or {})}
        env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
        proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def migrate(self) -> None:
        subprocess.run(
            [str(BIN / "gradlab"), "migrate"], env={**os.environ, **self.env}, cwd=ROOT, check=True, capture_output=True
        )

    def start_api(self, args: list[str] | None = None, port: int | None = None) -> str:
        """Start an API process (``args`` must then listen on ``port``); returns its base URL. A free port can be
        taken by another process before the API binds it: then it tries again on another one."""
        for attempt in range(3):
            chosen = port or free_port()
            proc = self._spawn(args or [str(BIN / "gradlab"), "api", "--port", str(chosen)], "api")
            log = self.log_dir / f"api-{len(self.procs) - 1}.log"
            url = f"http://127.0.0.1:{chosen}"
            try:
                wait_http(url + "/healthz", proc=proc, log_tail=lambda: log.read_text(errors="replace")[-3000:])
            except RuntimeError as exc:
                if port is None and attempt < 2 and "address already in use" in str(exc).lower():
                    continue
                raise
            self.api_url = url
            return url
        raise AssertionError("unreachable")

    def start_worker(
        self,
        queues: str = "cpu,gpu,auto,quick,validation",
        args: list[str] | None = None,
        extra_env: dict | None = None,
    ) -> subprocess.Popen:
        proc = self._spawn(args or [str(BIN / "gradlab"), "worker", "--queues", queues], "worker", extra_env)
        self.wait_worker_ready(proc)
        return proc

    def wait_worker_ready(self, proc: subprocess.Popen, timeout: float = 60) -> None:
        log = Path(self.log_dir / f"worker-{self.procs.index(proc)}.log")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"worker exited: {log.read_text()[-3000:]}")
            if log.exists() and " ready." in log.read_text(errors="replace"):
                return
            time.sleep(0.1)
        raise TimeoutError(f"worker not ready: {log.read_text()[-3000:]}")

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def wait_http(url: str, timeout: float = 60, proc: subprocess.Popen | None = None, log_tail=lambda: "") -> None:
    """Until ``url`` answers below 500; with ``proc``, fail at once (with the log) if that process exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode} before {url} answered:\n{log_tail()}")
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer in {timeout:g}s:\n{log_tail()}")


def wait_job(
    client: httpx.Client, job_id: str, statuses=("succeeded", "failed", "cancelled"), timeout: float = 120
) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in statuses:
            return job
        time.sleep(0.1)
    raise TimeoutError(f"job {job_id} still {job['status']} after {timeout}s")


def start_embedded(tmp_path: Path) -> tuple[subprocess.Popen, str]:
    """``gradlab up`` as a user starts it (no GRADLAB_ setting from this environment), on a free port, its data under
    ``tmp_path/d`` and its output in ``tmp_path/up.log``; (the process, its base URL) once it answers."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRADLAB_")}
    with open(tmp_path / "up.log", "wb") as log:
        proc = subprocess.Popen(
            [str(BIN / "gradlab"), "up", "--port", str(port), "--data-dir", str(tmp_path / "d")],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/healthz", timeout=90)
    return proc, url
