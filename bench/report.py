"""One report of every benchmark: runs them (or, with --from-results, reads their last JSON) and writes
bench/report.md with all tables, the machine and the date.

Each benchmark runs as its own process (``python -m bench.<name>``), technique benchmarks first (each writes
bench/results/<name>.json; 1-2 minutes each on a CPU), then the service benchmarks. A benchmark that fails is
reported as failed, with its last output lines, and its older JSON (if any) is shown marked as stale.

Run from the repository root: ``python -m bench.report [--from-results] [--only api_load,dispatch]``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime

from bench.common import RESULTS, ROOT, machine

TECHNIQUES = [
    "contrastive_accumulation",
    "momentum_accumulation",
    "gradnorm_gan",
    "vae_density",
    "gradient_penalty_bound",
    "eg_stepsize",
]
SERVICE = ["api_load", "dispatch", "metrics_ingest", "pool_throughput", "events_fanout", "study_page", "scale"]
TIMEOUTS = {"scale": 2400}  # seconds, where a benchmark needs more than --timeout
REPORT = ROOT / "bench" / "report.md"


# --- formatting ----------------------------------------------------------------------------------------------------
def fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value != 0 and (abs(value) >= 1e6 or abs(value) < 1e-3):
            return f"{value:.3e}"
        return f"{value:.4g}" if abs(value) < 1000 else f"{value:.0f}"
    if isinstance(value, list):
        if all(not isinstance(v, (dict, list)) for v in value):
            if len(value) <= 6:
                return "[" + ", ".join(fmt(v) for v in value) + "]"
            nums = sorted(v for v in value if isinstance(v, (int, float)))
            if nums:
                return f"{len(value)} values, median {fmt(nums[len(nums) // 2])}"
        return f"{len(value)} items"
    return str(value).replace("|", "\\|").replace("\n", " ")


def table(rows: list[dict], columns: list[tuple[str, str]] | None = None) -> list[str]:
    """A markdown table; ``columns`` (key, header) or every key seen, in order of appearance."""
    if not rows:
        return ["(no rows)"]
    if columns is None:
        keys: list[str] = []
        for r in rows:
            keys += [k for k in r if k not in keys]
        columns = [(k, k) for k in keys]
    out = ["| " + " | ".join(h for _, h in columns) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(fmt(r.get(k)) for k, _ in columns) + " |" for r in rows]
    return out


def _scalar(v) -> bool:
    return not isinstance(v, (dict, list)) or (isinstance(v, list) and all(not isinstance(x, (dict, list)) for x in v))


def flatten(row: dict, prefix: str = "") -> list[dict]:
    """One flat row per leaf combination: nested dicts of scalars become ``a.b`` columns, a dict of dicts (such
    as per-optimizer results) becomes one row per entry with the entry's name in a column."""
    base: dict = {}
    explode: list[tuple[str, dict]] = []
    for k, v in row.items():
        key = f"{prefix}{k}"
        if _scalar(v):
            base[key] = v
        elif isinstance(v, dict) and v and all(isinstance(x, dict) for x in v.values()):
            explode.append((key, v))
        elif isinstance(v, dict):
            for sub in flatten(v, key + "."):
                base.update(sub)
        else:
            base[key] = v
    rows = [base]
    for key, entries in explode:
        rows = [
            {**r, key: name, **sub}
            for r in rows
            for name, inner in entries.items()
            for sub in flatten(inner, key + ".")
        ]
    return rows


def render(data, depth: int = 3) -> list[str]:
    """Generic markdown for a benchmark's JSON: scalars as a list, lists of records and dicts of records as
    tables, anything else as sub-sections."""
    if isinstance(data, list):
        if all(isinstance(x, dict) for x in data):
            return table([r for x in data for r in flatten(x)])
        return [fmt(data)]
    out: list[str] = []
    scalars = {k: v for k, v in data.items() if _scalar(v)}
    if scalars:
        out += [f"- {k}: {fmt(v)}" for k, v in scalars.items()] + [""]
    for k, v in data.items():
        if k in scalars:
            continue
        heading = "#" * min(depth, 6) + f" {k}"
        if (
            isinstance(v, dict)
            and v
            and all(isinstance(x, dict) for x in v.values())
            and all(
                all(_scalar(y) or isinstance(y, dict) and all(_scalar(z) for z in y.values()) for y in x.values())
                for x in v.values()
            )
        ):
            out += [heading, ""] + table([{"name": name, **r} for name, x in v.items() for r in flatten(x)]) + [""]
        else:
            out += [heading, ""] + render(v, depth + 1) + [""]
    return out


# --- service sections ------------------------------------------------------------------------------------------------
def api_load_section(d: dict) -> list[str]:
    cfg = d["config"]
    out = [
        f"{cfg['clients']} closed-loop clients, {cfg['duration']:g} s x {cfg['rounds']} round(s) per case after "
        f"{cfg['warmup']:g} s warm-up; `{cfg['gradlab_server']}` (auth={cfg['auth']}) vs "
        f"`{cfg['mlflow_server']}`; MLflow: "
        + (
            f"version {d['mlflow'].get('version')}"
            if d["mlflow"]["compared"]
            else f"NOT compared ({d['mlflow'].get('why_not')})"
        )
        + f"; load generator: {cfg.get('load_generator', cfg.get('loadgen'))}"
        + (
            f"; {cfg['queue_at_start']:,} jobs waiting in the queue at the start ({cfg['queue_at_end']:,} at the end)"
            if "queue_at_start" in cfg
            else ""
        ),
        "",
    ]
    rows = [
        {
            **r,
            "server_cores": r["cpu_cores"].get("gradlab api" if r["case"].startswith("gradlab") else "mlflow"),
            "pg_cores": r["cpu_cores"].get("postgres"),
            "other_cores": r["cpu_cores"].get("other processes"),
            "loadgen_cores": r["cpu_cores"].get("this script (load generator)"),
        }
        for r in d["rows"]
    ]
    out += table(
        rows,
        [
            ("case", "case"),
            ("throughput_rps", "req/s"),
            ("p50_ms", "p50 ms"),
            ("p90_ms", "p90 ms"),
            ("p99_ms", "p99 ms"),
            ("max_ms", "max ms"),
            ("ok", "ok"),
            ("server_cores", "server cores"),
            ("pg_cores", "postgres cores"),
            ("loadgen_cores", "load generator cores"),
            ("other_cores", "other processes' cores"),
            ("machine_busy", "machine busy"),
        ],
    ) + [""]
    if d["ratios"]:
        out += ["Ratios gradlab / MLflow (floor: throughput >= 3x, p99 <= 1x):", ""]
        out += table(
            [{"operation": k, **v} for k, v in d["ratios"].items()],
            [
                ("operation", "operation"),
                ("throughput_gradlab_over_mlflow", "throughput ratio"),
                ("p50_gradlab_over_mlflow", "p50 ratio"),
                ("p99_gradlab_over_mlflow", "p99 ratio"),
                ("meets_floor", "floor met"),
            ],
        ) + [""]
    for a in d.get("request_anatomy", []):
        out += [
            f"Anatomy of one `{a['case']}` in-process (no load): {a['ms_per_request']:.2f} ms, of which "
            f"{a['sql_and_broker_ms_per_request']:.2f} ms waiting on SQL and the broker.",
            "",
        ]
        out += table(
            a["parts"], [("what", "what"), ("per_request", "per request"), ("ms_per_request", "ms per request")]
        ) + [""]
    return out


def dispatch_section(d: dict) -> list[str]:
    o = d["overhead"]
    out = [
        f"{d['config']['jobs']} sequential `{d['job']['kind']}` jobs {d['job']['params']} on one worker, each "
        f"followed by a bare Celery no-op round trip on the same Redis.",
        "",
    ]
    out += table(
        d["rows"],
        [("what", "interval"), ("p50_ms", "p50 ms"), ("p90_ms", "p90 ms"), ("p99_ms", "p99 ms"), ("max_ms", "max ms")],
    ) + [""]
    out += [
        f"Overhead over bare Celery (p50, POST -> started_at vs send -> task started): "
        f"**{o['start_p50_ms']:.2f} ms** (floor {d['floor_ms']:g} ms: {'met' if o['meets_floor'] else 'NOT met'})"
        f"; p99 {o['start_p99_ms']:.2f} ms. POST -> succeeded vs the bare round trip: "
        f"{o['succeeded_vs_round_trip_p50_ms']:.2f} ms, of which running the job {o['job_run_p50_ms']:.2f} ms.",
        "",
    ]
    return out


def metrics_section(d: dict) -> list[str]:
    st = d["settings"]
    out = [
        f"Metric rows logged through `DbRunContext` (its heartbeat thread writes a batch as soon as "
        f"{st['metric_flush_rows']} rows wait, else every "
        f"{min(st['metric_flush_interval_s'], st['heartbeat_interval_s']):g} s; back-pressure at 20 batches), "
        f"{d['config']['threads']} torch thread. `training`: an SGD step of a 256-wide MLP logging four metrics; "
        f"`stress`: a 64x64 matmul logging one (the per-row cost of logging itself).",
        "",
    ]
    out += table(
        d["write"],
        [
            ("workload", "workload"),
            ("rows_stored", "rows"),
            ("metrics_per_step", "rows per step"),
            ("step_us_no_logging", "us per step, bare"),
            ("no_logging_s", "s bare"),
            ("logging_s", "s logging"),
            ("slowdown", "slowdown"),
            ("overhead_us_per_row", "us per row"),
            ("rows_per_s_logged", "rows/s logged"),
            ("db_rows_per_s_in_flush", "rows/s while flushing"),
        ],
    ) + [""]
    training = d["write"][0]
    out += [
        f"Slowdown of the training job **{training['slowdown']:.1%}** (floor {d['floor_slowdown']:.0%}: "
        f"{'met' if training['meets_floor'] else 'NOT met'}).",
        "",
        "Reading back, GET /v1/jobs/{id}/metrics:",
        "",
    ]
    out += table(
        d["read"],
        [
            ("schema", "schema"),
            ("page_size", "limit"),
            ("pages", "pages"),
            ("seconds", "seconds"),
            ("rows_per_s", "rows/s"),
            ("ms_per_page", "ms per page"),
        ],
    )
    return out + [""]


def pool_section(d: dict) -> list[str]:
    out = [
        f"`{d['job']['kind']}` {d['job']['params']}: {d['config']['jobs']} jobs submitted at once per batch, "
        f"{d['config']['rounds']} batch(es) per pool size, sizes taking turns.",
        "",
    ]
    return (
        out
        + table(
            d["rows"],
            [
                ("workers", "workers"),
                ("succeeded", "jobs"),
                ("seconds", "seconds"),
                ("jobs_per_s", "jobs/s"),
                ("speedup", "speedup"),
                ("run_p50_ms", "run p50 ms"),
                ("worker_cores", "worker cores"),
                ("api_cores", "API cores"),
                ("pg_cores", "postgres cores"),
                ("other_cores", "other processes' cores"),
                ("machine_busy", "machine busy"),
            ],
        )
        + [""]
    )


def fanout_section(d: dict) -> list[str]:
    c, s = d["config"], d["summary"]
    out = [
        f"One API process, {c.get('jobs', 1)} running job(s) each writing {c['rows']} metric rows a second; "
        f"{c['streams']} held `/events` streams spread over them (a separate process reads them) against none. "
        f"GETs: {c['rounds']} alternating "
        f"rounds of {c['gets']} sequential `GET /v1/jobs/{{id}}`; database work over {c['window']:g} s windows "
        f"without GETs, from PostgreSQL's statistics.",
        "",
    ]
    out += table(
        d["rows"],
        [
            ("phase", "phase"),
            ("get_p50_ms", "GET p50 ms"),
            ("get_p99_ms", "GET p99 ms"),
            ("xacts_per_s", "DB transactions/s"),
            ("table_reads_per_s", "DB table reads/s"),
            ("api_cores", "API cores"),
            ("api_rss_mib", "API RSS MiB"),
        ],
    ) + [""]
    out += [
        f"GET p50 with {c['streams']} streams / without: **{s['p50_ratio']:.2f}x** (floor 2x: "
        f"{'met' if s['p50_ratio'] <= 2 else 'NOT met'}); p99 {s['p99_ratio']:.2f}x. Per watcher: "
        f"{s['xacts_per_s_per_watcher']:.4f} database transactions/s and {s['table_reads_per_s_per_watcher']:.4f} "
        f"table reads/s; API CPU {s['api_cores_per_1000_watchers']:.3f} cores and "
        f"{s.get('api_rss_mib_per_1000_watchers', float('nan')):.1f} MiB of API memory per 1,000 watchers.",
        "",
    ]
    return out


def study_page_section(d: dict) -> list[str]:
    loads, medians = d["loads"], d["median_total_s"]
    first = loads["bands"][0]
    out = [
        f"A finished study of {d['settings'] * d['seeds']} jobs ({d['settings']} settings x {d['seeds']} seeds), "
        f"three curves of {d['points']} points per job; one API process. A page load: the study document "
        f"({first['study_bytes']:,} bytes) and one metric's curves. `bands`: per setting the mean over its seeds "
        "with their min-max band (the page's way; every load a first load); `bands kept`: the same answer kept by "
        "the API process for a finished study; `study metrics` and `per job`: one raw line per child (the ways the "
        "page drew them before), in one request or one per child six at a time. Ways taking turns, "
        f"{len(loads['bands'])} loads each; load average while measured "
        + ", ".join(f"{x:.1f}" for x in d["machine"]["loadavg_1_5_15"])
        + " on the machine's cores.",
        "",
    ]
    out += table(
        [
            {
                "way": way,
                "p50_ms": medians[way] * 1e3,
                "points": got[0]["points_drawn"],
                "curve_bytes": got[0]["curve_bytes"],
                **{
                    f"{part}_p50_ms": next(r["p50_ms"] for r in d["parts"] if r["part"] == f"{part} ({way})")
                    for part in ("study", "curves")
                },
            }
            for way, got in loads.items()
        ],
        [
            ("way", "way"),
            ("p50_ms", "page load p50 ms"),
            ("study_p50_ms", "study document p50 ms"),
            ("curves_p50_ms", "curves p50 ms"),
            ("points", "points drawn"),
            ("curve_bytes", "curve bytes"),
        ],
    )
    speedup = medians["study metrics"] / medians["bands"]
    return out + [
        "",
        f"First load with bands vs the page's previous way (study metrics): **{speedup:.1f}x** faster p50, "
        f"{loads['study metrics'][0]['curve_bytes'] / first['curve_bytes']:.1f}x fewer curve bytes.",
        "",
    ]


def scale_section(data: dict) -> list[str]:
    from bench.scale import render  # the benchmark writes the same section itself when it finishes

    return render(data)


SECTIONS = {
    "api_load": ("API load: gradlab vs MLflow", api_load_section),
    "dispatch": ("Dispatch latency vs bare Celery", dispatch_section),
    "metrics_ingest": ("Metrics ingestion", metrics_section),
    "pool_throughput": ("Worker pool throughput", pool_section),
    "events_fanout": ("Event-stream fan-out", fanout_section),
    "study_page": ("Study page load", study_page_section),
    "scale": ("Scale: a million jobs, ten million metric rows", scale_section),
}


# --- running -------------------------------------------------------------------------------------------------------
def run(name: str, timeout_s: float) -> dict:
    """Run ``python -m bench.<name>``, echoing its output, stopped after ``timeout_s``; what happened."""
    print(f"\n=== bench.{name}", flush=True)
    t0 = time.monotonic()
    lines: list[str] = []
    proc = subprocess.Popen(
        [sys.executable, "-m", f"bench.{name}"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )

    def echo() -> None:
        for line in proc.stdout:
            print(line, end="", flush=True)
            lines.append(line.rstrip("\n"))

    reader = threading.Thread(target=echo, daemon=True)
    reader.start()
    try:
        rc = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGINT)  # KeyboardInterrupt: the benchmark's finally blocks clean up
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        lines.append(f"(stopped after {timeout_s:g} s)")
        rc = "timeout"
    reader.join(timeout=5)
    return {"rc": rc, "seconds": time.monotonic() - t0, "tail": lines[-15:]}


def section(name: str, ran: dict | None, started: float) -> list[str]:
    path = RESULTS / f"{name}.json"
    title, render_service = SECTIONS.get(name, (name.replace("_", " "), None))
    out = [f"### {title} (`python -m bench.{name}`)", ""]
    if ran is not None and ran["rc"] != 0:
        out += [f"**Failed** (exit {ran['rc']} after {ran['seconds']:.0f} s); last output:", "", "```"]
        out += ran["tail"] + ["```", ""]
    if not path.exists():
        return out + ["No results file.", ""]
    data = json.loads(path.read_text())
    recorded = data.get("machine")
    measured = recorded.get("date") if isinstance(recorded, dict) else None  # service benchmarks record it
    written = datetime.fromisoformat(measured) if measured else datetime.fromtimestamp(path.stat().st_mtime, UTC)
    if ran is None or written.timestamp() < started:
        out += [
            f"_Results from {written.isoformat(timespec='seconds')}"
            f"{' (stale: this run did not replace them)' if ran is not None else ''}._",
            "",
        ]
    elif ran is not None:
        out += [f"_Ran in {ran['seconds']:.0f} s._", ""]
    body = {
        k: v for k, v in data.items() if k not in ("machine", "profiles", "profile", "admission_queries", "page_plan")
    }
    if render_service is not None:
        try:
            return out + render_service(data)
        except (KeyError, TypeError) as exc:  # a results file of another layout: show it generically
            out += [f"_(layout not recognised: {exc!r}; generic rendering)_", ""]
    return out + render(body, 4)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--from-results", action="store_true", help="run nothing; report the JSON in bench/results")
    ap.add_argument("--only", help="comma-separated benchmark names (default: all)")
    ap.add_argument("--skip-techniques", action="store_true")
    ap.add_argument("--skip-service", action="store_true")
    ap.add_argument("--timeout", type=float, default=900, help="seconds allowed per benchmark")
    args = ap.parse_args()
    names = (TECHNIQUES if not args.skip_techniques else []) + (SERVICE if not args.skip_service else [])
    if args.only:
        wanted = args.only.split(",")
        unknown = set(wanted) - set(TECHNIQUES + SERVICE)
        if unknown:
            ap.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
        names = [n for n in names if n in wanted]
    started = time.time()
    ran = {} if args.from_results else {name: run(name, max(args.timeout, TIMEOUTS.get(name, 0))) for name in names}
    m = machine()
    lines = [
        "# gradlab benchmark report",
        "",
        f"Generated {m['date']} by `python -m bench.report{' --from-results' if args.from_results else ''}`.",
        "",
        "## Machine",
        "",
        f"- CPU: {m['cpu']}, {m['cores']} cores; RAM {m['ram_gib']} GiB",
        f"- torch {m['torch']}, Python {m['python']}, {m['platform']}",
        "- load average (1, 5, 15 min) when the report was written: "
        + ", ".join(f"{x:.2f}" for x in m["loadavg_1_5_15"]),
        "- Each results file records the machine and load it was measured under (`machine` in the JSON). The "
        "machine may be shared with other work: figures from a busy machine are pessimistic, and the service "
        "tables show how many cores other processes took during each measurement.",
        "",
    ]
    for heading, group in (("Service", SERVICE), ("Techniques", TECHNIQUES)):
        chosen = [n for n in group if n in names]
        if chosen:
            lines += [f"## {heading}", ""]
            for name in chosen:
                lines += section(name, ran.get(name), started)
    REPORT.write_text("\n".join(lines).rstrip() + "\n")
    failed = [n for n, r in ran.items() if r["rc"] != 0]
    print(f"\nwrote {REPORT}" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
