"""Client commands of the ``gradlab`` CLI: submit and watch jobs, list, inspect, cancel, fetch artifacts.

They talk to a running API over HTTP: GRADLAB_URL (default http://127.0.0.1:8000) and GRADLAB_API_KEY.
Exit codes: 0 the job succeeded (or the command did its work), 1 the job failed or was cancelled or the API
answered with an error, 2 a usage error (bad option, unreadable spec file).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import typer
import yaml
from rich.table import Table
from rich.text import Text

from api.cli.common import (
    Fitted,
    LiveLine,
    State,
    api_client,
    err,
    load_spec,
    out,
    print_json,
    short_when,
    status_text,
    when,
)
from api.cli.datasets import datasets_cli
from api.cli.studies import study_cli
from api.client import Client, Event, Job, WaitTimeout
from core.report import format_value, result_tables, summary_tables, verdict_text

client_cli = typer.Typer(
    help="Work with jobs on a gradlab API (GRADLAB_URL, GRADLAB_API_KEY).", no_args_is_help=True, add_completion=False
)

client_cli.add_typer(datasets_cli, name="datasets")

LATEST_METRICS = 6
QUEUE_POLL_S = 1.0


VERDICT_STYLE = {"supports": "green", "contradicts": "red", "inconclusive": "yellow"}


def _print_result(job: Job, full: bool) -> None:
    """The summary (headline, verdict, comparison, key figures); with ``full``, the whole result's tables too,
    else a line saying how to see them. A result without a summary is shown whole."""
    summary = (job.result or {}).get("summary")
    tables = result_tables(job.result or {})
    if summary:
        out.print(Text(summary["headline"], style="bold"))
        out.print(Text.assemble("verdict: ", (verdict_text(summary), VERDICT_STYLE[summary["verdict"]["outcome"]])))
        if not full and tables:
            tables, more = summary_tables(summary), len(tables)
            for table in tables:
                _print_table(table)
            out.print(f"the full result ({more} more tables): gradlab show {job.id} --full", style="dim")
            return
        tables = summary_tables(summary) + tables
    for table in tables:
        _print_table(table)


def _print_table(table) -> None:
    """One of ``core.report``'s tables, fitted to the terminal (its first column is the row's name)."""
    right = () if table.title == "Result" else range(1, len(table.columns))
    out.print(Fitted(table.columns, table.rows, title=table.title, right=right))


def _print_outcome(job: Job, full: bool) -> None:
    """Final state of a job: its result, or why it did not succeed; exits 1 unless it succeeded."""
    out.print(
        Text.assemble(
            "job ",
            (job.id, "bold"),
            " ",
            status_text(job.status),
            f"  ({job.kind}, attempt {job.attempt}, device {job.device or '—'})",
        )
    )
    if job.succeeded:
        _print_result(job, full)
        return
    if job.error:
        err.print(f"{job.error.type}: {job.error.message}", markup=False)
    raise typer.Exit(1)


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _about(seconds: float) -> str:
    if seconds < 90:
        return f"{round(seconds)} s"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


def queue_place(job: Job) -> str:
    """ "3rd in the gpu queue, ~4 min" for a queued job that knows its place, "more than 1,000 ahead in the cpu
    queue" behind a long one (empty otherwise)."""
    if job.status == "queued" and job.queue_ahead_over is not None:
        return f"more than {job.queue_ahead_over:,} ahead in the {job.queue} queue"
    if job.status != "queued" or job.queue_position is None:
        return ""
    eta = "" if job.eta_s is None else f", ~{_about(job.eta_s)}"
    return f"{_ordinal(job.queue_position)} in the {job.queue} queue{eta}"


def _wait_in_queue(client: Client, job: Job, deadline: float | None, show: Callable[[str], None]) -> Job:
    """While the job is queued, show its place in the queue (polled: the event stream has no such event)."""
    job = client.get(job.id)
    while job.status == "queued":
        show(queue_place(job) or job.message)
        if deadline is not None and time.monotonic() >= deadline:
            raise WaitTimeout(f"job {job.id} still queued after the timeout", job)
        time.sleep(QUEUE_POLL_S if deadline is None else max(0.0, min(QUEUE_POLL_S, deadline - time.monotonic())))
        job = client.get(job.id)
    return job


def _watch(client: Client, job: Job, timeout: float | None) -> Job:
    """Follow the job's events on one line (its state, progress, message and latest metrics) until it is
    terminal; returns the final job."""
    latest: dict[str, tuple[int, float | None]] = {}
    state: dict[str, Any] = {"status": job.status, "progress": job.progress, "message": job.message}

    with LiveLine() as line:

        def show() -> None:
            shown = "  ".join(f"{n}={format_value(v)}@{s}" for n, (s, v) in list(latest.items())[-LATEST_METRICS:])
            detail = f"{state['message']}  {shown}".strip()
            line.update(state["status"], detail, fraction=state["progress"], key=state["status"])

        def on_event(event: Event) -> None:
            if event.event == "status":
                state.update(
                    status=event.data["status"],
                    progress=event.data["progress"],
                    message=event.data.get("message", ""),
                )
            elif event.event == "metric":
                latest.pop(event.data["name"], None)  # re-insert: most recently updated last
                latest[event.data["name"]] = (event.data["step"], event.data["value"])
            show()

        deadline = None if timeout is None else time.monotonic() + timeout
        _wait_in_queue(client, job, deadline, lambda text: line.update("queued", text, key="queued"))
        remaining = None if deadline is None else max(deadline - time.monotonic(), 0.1)
        return client.wait(job.id, timeout=remaining, on_event=on_event)


@client_cli.command()
def submit(
    spec: Path = typer.Argument(
        ...,
        exists=True,
        dir_okay=False,
        readable=True,
        help="job spec: .json or .yaml with kind, params, seed, device, timeout_s",
    ),
    wait: bool = typer.Option(False, "--wait", "-w", help="follow the job live and print its result"),
    idempotency_key: str | None = typer.Option(None, help="retrying with the same key makes no 2nd job"),
    timeout: float | None = typer.Option(
        None, min=1, help="with --wait: give up watching after this many seconds (exit 1; the job keeps running)"
    ),
    full: bool = typer.Option(False, "--full", help="with --wait: every table of the result, not just its summary"),
) -> None:
    """Submit a job; with --wait its progress on one line, then its summary (exit 1 if it failed)."""
    body = load_spec(spec)
    with api_client() as client:
        job = client.submit(body, idempotency_key=idempotency_key)
        out.print(Text.assemble("submitted job ", (job.id, "bold"), f" ({job.kind}) ", status_text(job.status)))
        if not wait:
            out.print(f"follow it with: gradlab events {job.id} --follow", markup=False)
            return
        try:
            final = _watch(client, job, timeout)
        except WaitTimeout as exc:
            err.print(f"{exc}; job {job.id} keeps running", markup=False)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err.print(f"stopped watching; job {job.id} keeps running (gradlab cancel {job.id} stops it)", markup=False)
            raise typer.Exit(130) from None
        _print_outcome(final, full)


@client_cli.command()
def jobs(
    status: State | None = typer.Option(None, help="only jobs in this state"),
    kind: str | None = typer.Option(None, help="only jobs of this kind"),
    limit: int = typer.Option(20, min=1, max=10_000, help="at most this many, newest first"),
    as_json: bool = typer.Option(False, "--json", help="the jobs as the API answers them, every field"),
) -> None:
    """List jobs, newest first."""
    with api_client() as client:
        found = list(client.list(status=status.value if status else None, kind=kind, limit=limit))
        if as_json:
            print_json([asdict(job) for job in found])
            return
    rows: list[list[str | Text]] = [
        [job.id, job.kind, status_text(job.status), f"{job.progress:.0%}", short_when(job.created_at), job.message]
        for job in found
    ]
    out.print(Fitted(["id", "kind", "status", "done", "created", "message"], rows, right=[3], optional=[5, 4]))


@client_cli.command()
def show(
    job_id: str = typer.Argument(..., help="job id"),
    full: bool = typer.Option(False, "--full", help="every table of the result, not just its summary"),
    as_json: bool = typer.Option(False, "--json", help="the job as the API answers it (the whole result)"),
) -> None:
    """A job's state, params, summary, error and artifacts."""
    with api_client() as client:
        job = client.get(job_id)
        if as_json:
            print_json(asdict(job))
            return
        arts = client.artifacts(job_id)
    info = Table(show_header=False, box=None)
    info.add_column(style="bold", no_wrap=True)
    info.add_column(overflow="fold")
    rows: list[tuple[str, str | Text]] = [
        ("id", job.id),
        ("kind", job.kind),
        ("status", status_text(job.status)),
        ("progress", f"{job.progress:.0%}  {job.message}"),
        ("attempt", str(job.attempt)),
        ("device", f"{job.device or '—'} (asked {job.device_requested})"),
        ("seed", str(job.seed)),
        ("created", when(job.created_at)),
        ("started", when(job.started_at)),
        ("finished", when(job.finished_at)),
        ("params", json.dumps(job.params, separators=(",", ":"))),
    ]
    if job.error:
        rows.append(("error", f"{job.error.type}: {job.error.message}"))
    if queue_place(job):
        rows.insert(4, ("queue", queue_place(job)))
    for key, value in rows:
        info.add_row(key, value)
    out.print(info)
    _print_result(job, full)
    if arts:
        out.print(
            Fitted(
                ["artifact", "type", "size"],
                [[a.name, a.media_type, format_value(a.size)] for a in arts],
                title="Artifacts",
                right=[2],
            )
        )


@client_cli.command()
def cancel(job_id: str = typer.Argument(..., help="job id")) -> None:
    """Cancel a queued or running job (exit 1 if it had already finished)."""
    with api_client() as client:
        job = client.cancel(job_id)
    out.print(Text.assemble("job ", (job.id, "bold"), " ", status_text(job.status)))


def _event_line(event: Event) -> Text:
    d = event.data
    if event.event == "status":
        return Text.assemble(
            ("status ", "bold"),
            status_text(d["status"]),
            f" {d['progress']:.0%} attempt {d['attempt']}: {d['message']}",
        )
    if event.event == "metric":
        return Text(f"metric step={d['step']} {d['name']}={format_value(d['value'])}")
    return Text(f"{event.event} {json.dumps(d)}")


@client_cli.command()
def events(
    job_id: str = typer.Argument(..., help="job id"),
    follow: bool = typer.Option(False, "--follow", "-f", help="stream live until the job finishes"),
    as_json: bool = typer.Option(False, "--json", help="one JSON object per line"),
) -> None:
    """The job's status and metric rows; with --follow stream new ones live (exit 1 unless it succeeded)."""

    def emit(event: Event) -> None:
        if as_json:
            print(json.dumps({"event": event.event, "id": event.id, **event.data}), flush=True)
        else:
            out.print(_event_line(event))

    with api_client() as client:
        if not follow:
            for row in client.metrics(job_id):
                emit(Event("metric", {"step": row.step, "name": row.name, "value": row.value}))
            job = client.get(job_id)
            emit(
                Event(
                    "status",
                    {"status": job.status, "progress": job.progress, "message": job.message, "attempt": job.attempt},
                )
            )
            return
        try:
            for event in client.events(job_id):
                emit(event)
        except KeyboardInterrupt:
            raise typer.Exit(130) from None
        if not client.get(job_id).succeeded:
            raise typer.Exit(1)


client_cli.command("logs", help="Alias of events.")(events)


@client_cli.command()
def artifacts(
    job_id: str = typer.Argument(..., help="job id"),
    out_dir: Path | None = typer.Option(
        None, "--out", "-o", file_okay=False, help="download every artifact into this directory"
    ),
) -> None:
    """List a job's artifacts, or download them all with --out DIR."""
    with api_client() as client:
        if out_dir is None:
            rows = [[a.name, a.media_type, format_value(a.size), a.sha256] for a in client.artifacts(job_id)]
            out.print(Fitted(["name", "type", "size", "sha256"], rows, right=[2], optional=[3]))
            return
        for path in client.download_artifacts(job_id, out_dir):
            out.print(str(path), markup=False)


@client_cli.command()
def kinds(
    kind: str | None = typer.Argument(None, help="print this kind's example spec, ready to edit"),
    as_yaml: bool = typer.Option(False, "--yaml", help="print the example as YAML instead of JSON"),
) -> None:
    """The job kinds; with KIND its example spec (gradlab kinds KIND > spec.json; gradlab submit spec.json)."""
    with api_client() as client:
        if kind is not None:
            example = client.kind(kind).example
            text = yaml.safe_dump(example, sort_keys=False) if as_yaml else json.dumps(example, indent=2) + "\n"
            sys.stdout.write(text)
            return
        found = client.kinds()
    rows = [[k.name, k.description] for k in found]
    out.print(Fitted(["kind", "description"], rows, title="gradlab kinds KIND > spec.json prints an example spec"))


def register(cli: typer.Typer) -> None:
    """Mount these commands on the main ``gradlab`` CLI."""
    cli.registered_commands.extend(client_cli.registered_commands)
    cli.add_typer(datasets_cli, name="datasets")
    cli.add_typer(study_cli, name="study")
