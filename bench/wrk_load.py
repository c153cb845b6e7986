"""Closed-loop HTTP load from wrk (Debian package ``wrk``), the load generator the API benchmark prefers.

On a 2-core machine a Python load generator spends most of a core making requests, CPU the server under test no
longer has, and more of it the faster the server answers, so it flattens exactly the differences being measured.
wrk (C, epoll) sends the same closed loop, ``clients`` connections each sending its next request when the answer
arrived, for a fraction of that. ``bench/closed_loop.lua`` builds the requests and reports counts and percentiles.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

LUA = Path(__file__).with_name("closed_loop.lua")


def available() -> bool:
    return shutil.which("wrk") is not None


def version() -> str:
    """E.g. "wrk debian/4.1.0-3+b2 [epoll]" (``wrk -v`` prints it, a copyright and the usage, exiting 1)."""
    out = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout
    return out.split(" Copyright")[0].strip() or "wrk"


def _run(base_url: str, env: dict, clients: int, seconds: float, threads: int) -> dict:
    cmd = [
        "wrk",
        "-t",
        str(threads),
        "-c",
        str(clients),
        "-d",
        f"{max(1, round(seconds))}s",
        "--timeout",
        "30s",
        "-s",
        str(LUA),
        base_url,
    ]
    proc = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True, timeout=seconds + 60)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("WRK_JSON ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stderr[-2000:]} {proc.stdout[-2000:]}")
    return json.loads(line.removeprefix("WRK_JSON "))


def wrk_closed_loop(
    base_url: str,
    *,
    name: str,
    method: str,
    path: str,
    clients: int,
    duration_s: float,
    warmup_s: float,
    body: str | None = None,
    ids: list[str] | None = None,
    auth: list[str] | None = None,
    meters: tuple = (),
    threads: int = 2,
) -> dict:
    """One phase: an unmeasured warm-up run, then the measured run with ``meters`` (start/stop) around it.

    ``path`` may hold ``{id}`` (a random entry of ``ids`` per request) and ``body`` ``{n}`` / ``{now_ms}``; each
    request sends a random one of the ``auth`` values as its Authorization header.
    Returns the same summary keys as ``LoadResult.summary`` (latencies in ms; ``ok`` = answers below 400).
    """
    with tempfile.TemporaryDirectory(prefix="gradlab-wrk-") as tmp:
        env = {"LOAD_METHOD": method, "LOAD_PATH": path}
        if body is not None:
            env["LOAD_BODY"] = body
        if auth:
            env["LOAD_AUTH"] = ",".join(auth)
        if ids:
            ids_file = Path(tmp) / "ids.txt"
            ids_file.write_text("\n".join(ids) + "\n")
            env["LOAD_IDS_FILE"] = str(ids_file)
        if warmup_s > 0:
            _run(base_url, env, clients, warmup_s, threads)
        for m in meters:
            m.start()
        raw = _run(base_url, env, clients, duration_s, threads)
        measured: dict = {}
        for m in meters:
            measured.update(m.stop())
    seconds = raw["duration_us"] / 1e6
    failed = raw["connect_errors"] + raw["read_errors"] + raw["write_errors"] + raw["timeouts"]
    ok = raw["requests"] - raw["status_errors"]
    return {
        "case": name,
        "clients": clients,
        "duration_s": seconds,
        "requests": raw["requests"],
        "ok": ok,
        "throughput_rps": ok / seconds,
        "n": raw["requests"],
        "p50_ms": raw["p50_us"] / 1e3,
        "p90_ms": raw["p90_us"] / 1e3,
        "p99_ms": raw["p99_us"] / 1e3,
        "max_ms": raw["max_us"] / 1e3,
        "mean_ms": raw["mean_us"] / 1e3,
        "statuses": {"2xx/3xx": ok, "4xx/5xx": raw["status_errors"]},
        "errors": {"socket": failed} if failed else {},
        "load_generator": "wrk",
        **measured,
    }
