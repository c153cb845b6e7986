"""docker-compose.yml, run without Docker: its migrate, api and worker-cpu commands with their own environment,
service host names mapped to this test's PostgreSQL database and Redis prefix; then a job through HTTP."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import yaml

from tests.stack import BIN, REDIS_URL, ROOT, Stack, free_port, wait_job

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def mapped_env(service: str, pg_url: str, prefix: str, data_dir: Path) -> dict[str, str]:
    env = {}
    for key, value in COMPOSE["services"][service]["environment"].items():
        host = urlsplit(value).hostname if "://" in value else None
        if host == "postgres":
            value = pg_url
        elif host == "redis":
            value = REDIS_URL
        elif key == "GRADLAB_DATA_DIR":
            value = str(data_dir)
        env[key] = value
    env["GRADLAB_BROKER_KEY_PREFIX"] = prefix
    return env


def native(command: list[str], port: int | None = None) -> list[str]:
    """The service's command with our installed `gradlab`, bound to loopback on a free port."""
    cmd = [str(BIN / command[0])] + command[1:]
    if port is not None:
        cmd = [{"0.0.0.0": "127.0.0.1", "8000": str(port)}.get(a, a) for a in cmd]
    return cmd


def test_compose_file_has_the_expected_services():
    services = COMPOSE["services"]
    assert {"postgres", "redis", "migrate", "api", "worker-cpu", "worker-gpu"} <= set(services)
    assert services["postgres"]["healthcheck"] and services["redis"]["healthcheck"]
    gpu = services["worker-gpu"]
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"
    assert "gpu" in gpu["command"][gpu["command"].index("--queues") + 1]
    assert services["migrate"]["restart"] == "no"
    assert set(COMPOSE["volumes"]) == {"pgdata", "redisdata", "blobs"}
    for name in ("migrate", "api", "worker-cpu", "worker-gpu"):  # one blob store for all: <data dir>/blobs
        assert services[name]["volumes"] == [f"blobs:{services[name]['environment']['GRADLAB_DATA_DIR']}/blobs"]


def test_every_image_and_the_test_environment_run_one_torch_release():
    """CPU and GPU images build from one Dockerfile whose torch pin is the lock's, the one the tests run on."""
    from importlib.metadata import version

    pins = [line for line in (ROOT / "constraints.txt").read_text().splitlines() if line.startswith("torch==")]
    assert len(pins) == 1 and pins[0] == f"torch=={version('torch').split('+')[0]}"
    assert sorted(p.name for p in (ROOT / "docker").glob("Dockerfile*")) == ["Dockerfile"]
    assert "grep '^torch==' constraints.txt" in (ROOT / "docker" / "Dockerfile").read_text()
    builds = {name: s["build"] for name, s in COMPOSE["services"].items() if "build" in s}
    assert {b["dockerfile"] for b in builds.values()} == {"docker/Dockerfile"}
    assert "/whl/cu12" in builds["worker-gpu"]["args"]["TORCH_INDEX_URL"]


def test_compose_commands_run_a_job(pg_database, redis_prefix, tmp_path):
    # pg_database comes migrated; start from an empty one to prove the migrate service does its job.
    from tests.stack import create_database, drop_database

    name, url = create_database()
    try:
        env = mapped_env("migrate", url, redis_prefix, tmp_path)
        # PYTHONPATH passes through so that the checkout under test (a worktree, too) is what migrates
        subprocess.run(
            native(COMPOSE["services"]["migrate"]["command"]),
            env={**env, "PATH": str(BIN), "PYTHONPATH": os.environ.get("PYTHONPATH", "")},
            cwd=ROOT,
            check=True,
            capture_output=True,
            timeout=120,
        )
        # The compose API requires keys (GRADLAB_AUTH defaults to required): make one as an operator would.
        out = subprocess.run(
            [str(BIN / "gradlab"), "keys", "create", "--tenant", "compose"],
            env=env,
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
        key = out.split("key: ", 1)[1].strip()
        stack = Stack(env=mapped_env("api", url, redis_prefix, tmp_path), log_dir=tmp_path)
        try:
            port = free_port()
            stack.start_api(native(COMPOSE["services"]["api"]["command"], port), port)
            stack.env = mapped_env("worker-cpu", url, redis_prefix, tmp_path)
            stack.start_worker(args=native(COMPOSE["services"]["worker-cpu"]["command"]))
            with httpx.Client(base_url=stack.api_url, timeout=30, headers={"Authorization": f"Bearer {key}"}) as client:
                assert httpx.get(stack.api_url + "/v1/jobs").status_code == 401
                assert client.get("/readyz").status_code == 200
                job = client.post("/v1/jobs", json={"kind": "embedding_dim", "params": {"vocab_sizes": [512]}})
                assert job.status_code == 201
                done = wait_job(client, job.json()["id"], timeout=120)
            assert done["status"] == "succeeded" and done["result"]["dimensions"][0]["min_dimension"] == 52
        finally:
            stack.stop()
    finally:
        drop_database(name)
