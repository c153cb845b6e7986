"""``gradlab study submit|list|show|cancel``: a grid of settings over seeds as one study, followed on one line and
read as one comparison table (mean ± 95 % CI per setting, paired difference against the baseline)."""

from __future__ import annotations

import sys
import time
from datetime import datetime
from pathlib import Path

import typer
from rich.text import Text

from api.cli.common import Fitted, LiveLine, State, api_client, err, load_spec, out, print_json, short_when, status_text
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
            status_text(study["status"]),
            f"  ({study['kind']}, {len(study['jobs'])} jobs: {counts})",
        )
    )
    baseline = c["rows"][c["baseline"]]["label"] if c["rows"] else "—"
    rows = []
    for row in c["rows"]:
        verdicts = ", ".join(f"{n} {v}" for v, n in row["verdicts"].items()) or "—"
        cells = []
        for name in c["figures"]:
            text = _stat(row["figures"][name])
            if row["paired"] and row["paired"][name]["n"]:
                text += f"\nΔ {_stat(row['paired'][name])}"
            cells.append(text)
        rows.append([row["label"], f"{row['succeeded']}/{row['jobs']}", verdicts, *cells])
    out.print(
        Fitted(
            ["setting", "jobs ok", "verdicts", *c["figures"]],
            rows,
            title=f"mean ± 95 % CI over seeds; Δ = paired difference from the baseline ({baseline})",
            right=range(3, 3 + len(c["figures"])),
            optional=[2],
        )
    )


def _follow(client, study: dict, timeout: float | None) -> dict:
    deadline = None if timeout is None else time.monotonic() + timeout
    with LiveLine() as line:
        while True:
            done = sum(study["counts"].get(s, 0) for s in TERMINAL)
            line.update(
                study["status"],
                f"{done}/{len(study['jobs'])} jobs finished",
                fraction=study["progress"],
                key=study["status"],
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
    """Submit a study; with --wait, its progress on one line until every job finished, then the comparison."""
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


@study_cli.command("list")
def list_studies(
    status: State | None = typer.Option(None, help="only studies in this state"),
    kind: str | None = typer.Option(None, help="only studies of this kind"),
    limit: int = typer.Option(20, min=1, max=10_000, help="at most this many, newest first"),
    as_json: bool = typer.Option(False, "--json", help="the studies as the API lists them, every field"),
) -> None:
    """List your studies, newest first, with how many of their jobs are in each state."""
    with api_client() as client:
        found = list(client.studies(status=status.value if status else None, kind=kind, limit=limit))
    if as_json:
        print_json(found)
        return
    rows = [
        [
            s["id"],
            s["kind"],
            status_text(s["status"]),
            f"{s['progress']:.0%}",
            f"{len(s['settings'])}×{len(s['seeds'])}",
            ", ".join(f"{n} {state}" for state, n in sorted(s["counts"].items())),
            short_when(datetime.fromisoformat(s["created_at"])),
        ]
        for s in found
    ]
    header = ["id", "kind", "status", "done", "grid", "jobs", "created"]  # grid: settings × seeds
    out.print(Fitted(header, rows, right=[3, 4], optional=[6, 5, 4]))


@study_cli.command("show")
def show(
    study_id: str = typer.Argument(..., help="study id"),
    csv: bool = typer.Option(False, "--csv", help="print the comparison as CSV instead"),
    as_json: bool = typer.Option(False, "--json", help="the study as the API answers it"),
) -> None:
    """A study's state and its comparison table (or CSV, or JSON)."""
    with api_client() as client:
        if csv:
            sys.stdout.write(client.study_csv(study_id))
            return
        study = client.study(study_id)
    if as_json:
        print_json(study)
        return
    _print_study(study)


@study_cli.command("cancel")
def cancel(study_id: str = typer.Argument(..., help="study id")) -> None:
    """Cancel a study's queued and running jobs (finished ones keep their results)."""
    with api_client() as client:
        study = client.cancel_study(study_id)
    _print_study(study)
