"""``gradlab study submit|show|cancel``: a grid of settings over seeds as one study, followed with a progress bar
and read as one comparison table (mean ± 95 % CI per setting, paired difference against the baseline)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import typer
from rich.progress import (
    BarColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from api.cli.common import STATUS_STYLE, api_client, err, load_spec, out
from core.report import format_value

study_cli = typer.Typer(help="Compare settings over seeds: one study, many ordinary jobs.", no_args_is_help=True)
TERMINAL = ("succeeded", "failed", "cancelled")
POLL_S = 0.5


def _stat(f: dict | None) -> str:
    if not f or f["mean"] is None:
        return "—"
    return format_value(f["mean"]) if f["ci95"] is None else f"{format_value(f['mean'])} ± {format_value(f['ci95'])}"


def _print_study(study: dict) -> None:
    c = study["comparison"]
    counts = ", ".join(f"{n} {s}" for s, n in sorted(study["counts"].items()))
    out.print(
        Text.assemble(
            "study ",
            (study["id"], "bold"),
            " ",
            (study["status"], STATUS_STYLE.get(study["status"], "")),
            f"  ({study['kind']}, {len(study['jobs'])} jobs: {counts})",
        )
    )
    baseline = c["rows"][c["baseline"]]["label"] if c["rows"] else "—"
    table = Table(
        title=f"mean ± 95 % CI over seeds; Δ = paired difference from the baseline ({baseline})", title_justify="left"
    )
    for col in ("setting", "jobs ok", "verdicts"):
        table.add_column(col)
    for name in c["figures"]:
        table.add_column(name, justify="right")
    for row in c["rows"]:
        verdicts = ", ".join(f"{n} {v}" for v, n in row["verdicts"].items()) or "—"
        cells = []
        for name in c["figures"]:
            text = _stat(row["figures"][name])
            if row["paired"] and row["paired"][name]["n"]:
                text += f"\nΔ {_stat(row['paired'][name])}"
            cells.append(text)
        table.add_row(row["label"], f"{row['succeeded']}/{row['jobs']}", verdicts, *cells)
    out.print(table)


def _follow(client, study: dict, timeout: float | None) -> dict:
    deadline = None if timeout is None else time.monotonic() + timeout
    with Progress(
        TextColumn("{task.fields[status]}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
        console=out,
    ) as bar:
        task = bar.add_task("", total=100, status=study["status"])
        while True:
            done = sum(study["counts"].get(s, 0) for s in TERMINAL)
            bar.update(
                task,
                completed=study["progress"] * 100,
                status=study["status"],
                description=f"{done}/{len(study['jobs'])} jobs finished",
            )
            if study["status"] in TERMINAL:
                return study
            if deadline is not None and time.monotonic() > deadline:
                err.print(f"stopped watching after {timeout:g} s; study {study['id']} keeps running", markup=False)
                raise typer.Exit(1)
            time.sleep(POLL_S)
            study = client.study(study["id"])


@study_cli.command("submit")
def submit(
    spec: Path = typer.Argument(
        ...,
        exists=True,
        dir_okay=False,
        readable=True,
        help="study spec: kind, base, grid or settings, seeds, baseline",
    ),
    wait: bool = typer.Option(False, "--wait", "-w", help="follow it and print the comparison"),
    idempotency_key: str | None = typer.Option(None, help="retrying with the same key makes no 2nd study"),
    timeout: float | None = typer.Option(
        None, min=1, help="with --wait: give up watching after this many seconds (exit 1; the study keeps running)"
    ),
) -> None:
    """Submit a study; with --wait, a progress bar until every job finished, then the comparison table."""
    body = load_spec(spec)
    with api_client() as client:
        study = client.submit_study(body, idempotency_key=idempotency_key)
        out.print(
            Text.assemble(
                "submitted study ",
                (study["id"], "bold"),
                f" ({study['kind']}: {len(study['settings'])} settings × {len(study['seeds'])} "
                f"seeds = {len(study['jobs'])} jobs)",
            )
        )
        if not wait:
            out.print(f"follow it with: gradlab study show {study['id']}", markup=False)
            return
        study = _follow(client, study, timeout)
    _print_study(study)
    if study["status"] != "succeeded":
        raise typer.Exit(1)


@study_cli.command("show")
def show(
    study_id: str = typer.Argument(..., help="study id"),
    csv: bool = typer.Option(False, "--csv", help="print the comparison as CSV instead"),
) -> None:
    """A study's state and its comparison table (or CSV)."""
    with api_client() as client:
        if csv:
            sys.stdout.write(client.study_csv(study_id))
            return
        study = client.study(study_id)
    _print_study(study)


@study_cli.command("cancel")
def cancel(study_id: str = typer.Argument(..., help="study id")) -> None:
    """Cancel a study's queued and running jobs (finished ones keep their results)."""
    with api_client() as client:
        study = client.cancel_study(study_id)
    _print_study(study)
