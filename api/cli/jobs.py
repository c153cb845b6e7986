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
from datetime import datetime
from enum import StrEnum
from pathlib import Path

import typer
import yaml
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from api.cli.common import STATUS_STYLE, api_client, err, load_spec, out
from api.cli.datasets import upload as dataset_upload
from api.cli.studies import study_cli
from api.client import Client, Event, Job, WaitTimeout
from core.report import format_value, result_tables, summary_tables, verdict_text

client_cli = typer.Typer(
    help="Work with jobs on a gradlab API (GRADLAB_URL, GRADLAB_API_KEY).", no_args_is_help=True, add_completion=False
)

datasets_cli = typer.Typer(help="Upload datasets for jobs to train on.", no_args_is_help=True)
datasets_cli.command("upload")(dataset_upload)
client_cli.add_typer(datasets_cli, name="datasets")

LATEST_METRICS = 6
QUEUE_POLL_S = 1.0


class Status(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


def _status(status: str) -> Text:
    return Text(status, style=STATUS_STYLE.get(status, ""))


def _when(t: datetime | None) -> str:
    return t.astimezone().strftime("%Y-%m-%d %H:%M:%S") if t else "—"


VERDICT_STYLE = {"supports": "green", "contradicts": "red", "inconclusive": "yellow"}


def _print_result(job: Job) -> None:
    """The summary first (headline, verdict, comparison, key figures), then the full result's tables."""
    summary = (job.result or {}).get("summary")
    tables = result_tables(job.result or {})
    if summary:
        out.print(Text(summary["headline"], style="bold"))
        out.print(Text.assemble("verdict: ", (verdict_text(summary), VERDICT_STYLE[summary["verdict"]["outcome"]])))
        tables = summary_tables(summary) + tables
    for table in tables:
        t = Table(title=table.title, title_justify="left", show_lines=False)
        for i, col in enumerate(table.columns):
            t.add_column(col, justify="left" if i == 0 or table.title == "Result" else "right")
        for row in table.rows:
            t.add_row(*row)
        out.print(t)


def _print_outcome(job: Job) -> None:
    """Final state of a job: its result tables, or why it did not succeed; exits 1 unless it succeeded."""
    out.print(
        Text.assemble(
            "job ",
            (job.id, "bold"),
            " ",
            _status(job.status),
            f"  ({job.kind}, attempt {job.attempt}, device {job.device or '—'})",
        )
    )
    if job.succeeded:
        _print_result(job)
        return
    if job.error:
        err.print(f"{job.error.type}: {job.error.message}", markup=False)
    raise typer.Exit(1)


class _JobProgress(Progress):
    """A progress bar with the job's latest metrics on the line below it."""

    metrics_line = Text("")

    def get_renderables(self):
        yield self.make_tasks_table(self.tasks)
        if self.metrics_line.plain:
            yield self.metrics_line


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
    """ "3rd in the gpu queue, ~4 min" for a queued job that knows its place (empty otherwise)."""
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
    """Follow the job's events with a live progress bar until it is terminal; returns the final job."""
    latest: dict[str, tuple[int, float | None]] = {}
    progress = _JobProgress(
        SpinnerColumn(),
        TextColumn("{task.fields[status]}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
        console=out,
        transient=False,
    )

    def on_event(event: Event) -> None:
        if event.event == "status":
            d = event.data
            progress.update(
                task,
                completed=d["progress"] * 100,
                description=d.get("message", ""),
                status=f"[{STATUS_STYLE.get(d['status'], '')}]{d['status']}[/]",
            )
        elif event.event == "metric":
            latest.pop(event.data["name"], None)  # re-insert: most recently updated last
            latest[event.data["name"]] = (event.data["step"], event.data["value"])
            shown = list(latest.items())[-LATEST_METRICS:]
            progress.metrics_line = Text(
                "  " + "  ".join(f"{n}={format_value(v)}@{s}" for n, (s, v) in shown), style="dim"
            )

    deadline = None if timeout is None else time.monotonic() + timeout
    with progress:
        task = progress.add_task(
            job.message,
            total=100,
            completed=job.progress * 100,  # type: ignore[arg-type]  # rich keeps a float (Task.completed); its annotation says int
            status=f"[{STATUS_STYLE.get(job.status, '')}]{job.status}[/]",
        )
        _wait_in_queue(client, job, deadline, lambda text: progress.update(task, description=text))
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
) -> None:
    """Submit a job; with --wait show live progress and metrics, then the result table (exit 1 if it failed)."""
    body = load_spec(spec)
    with api_client() as client:
        job = client.submit(body, idempotency_key=idempotency_key)
        out.print(Text.assemble("submitted job ", (job.id, "bold"), f" ({job.kind}) ", _status(job.status)))
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
        _print_outcome(final)


@client_cli.command()
def jobs(
    status: Status | None = typer.Option(None, help="only jobs in this state"),
    kind: str | None = typer.Option(None, help="only jobs of this kind"),
    limit: int = typer.Option(20, min=1, max=10_000, help="at most this many, newest first"),
) -> None:
    """List jobs, newest first."""
    table = Table("id", "kind", "status", "progress", "message", "created")
    with api_client() as client:
        for job in client.list(status=status.value if status else None, kind=kind, limit=limit):
            table.add_row(
                job.id, job.kind, _status(job.status), f"{job.progress:.0%}", job.message[:60], _when(job.created_at)
            )
    out.print(table)


@client_cli.command()
def show(job_id: str = typer.Argument(..., help="job id")) -> None:
    """A job's state, params, result tables, error and artifacts."""
    with api_client() as client:
        job = client.get(job_id)
        arts = client.artifacts(job_id)
    info = Table(show_header=False, box=None)
    info.add_column(style="bold")
    info.add_column()
    rows: list[tuple[str, str | Text]] = [
        ("id", job.id),
        ("kind", job.kind),
        ("status", _status(job.status)),
        ("progress", f"{job.progress:.0%}  {job.message}"),
        ("attempt", str(job.attempt)),
        ("device", f"{job.device or '—'} (asked {job.device_requested})"),
        ("seed", str(job.seed)),
        ("created", _when(job.created_at)),
        ("started", _when(job.started_at)),
        ("finished", _when(job.finished_at)),
        ("params", json.dumps(job.params, separators=(",", ":"))),
    ]
    if job.error:
        rows.append(("error", f"{job.error.type}: {job.error.message}"))
    if queue_place(job):
        rows.insert(4, ("queue", queue_place(job)))
    for key, value in rows:
        info.add_row(key, value)
    out.print(info)
    _print_result(job)
    if arts:
        table = Table("artifact", "type", "size", title="Artifacts", title_justify="left")
        for a in arts:
            table.add_row(a.name, a.media_type, format_value(a.size))
        out.print(table)


@client_cli.command()
def cancel(job_id: str = typer.Argument(..., help="job id")) -> None:
    """Cancel a queued or running job (exit 1 if it had already finished)."""
    with api_client() as client:
        job = client.cancel(job_id)
    out.print(Text.assemble("job ", (job.id, "bold"), " ", _status(job.status)))


def _event_line(event: Event) -> Text:
    d = event.data
    if event.event == "status":
        return Text.assemble(
            ("status ", "bold"), _status(d["status"]), f" {d['progress']:.0%} attempt {d['attempt']}: {d['message']}"
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
            table = Table("name", "type", "size", "sha256")
            for a in client.artifacts(job_id):
                table.add_row(a.name, a.media_type, format_value(a.size), a.sha256[:16])
            out.print(table)
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
    table = Table(
        "kind", "description", title="gradlab kinds KIND > spec.json prints an example spec", title_justify="left"
    )
    for k in found:
        table.add_row(k.name, k.description)
    out.print(table)


def register(cli: typer.Typer) -> None:
    """Mount these commands on the main ``gradlab`` CLI."""
    cli.registered_commands.extend(client_cli.registered_commands)
    cli.add_typer(datasets_cli, name="datasets")
    cli.add_typer(study_cli, name="study")
