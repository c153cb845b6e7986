"""``gradlab datasets upload FILE``: a resumable upload with a progress bar, then the validation's verdict.

The upload id is remembered in a small state file, keyed by the server and the file's absolute path, size and
modification time, so running the same command again after an interruption (Ctrl-C, a lost connection, a
restarted API) resumes from the bytes the server holds instead of starting over; a changed file starts afresh.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn
from rich.table import Table

from api.cli.common import api_client, err, out
from api.client import ApiError, Client, Dataset
from core.report import format_value

VALIDATION_TIMEOUT_S = 3600.0


def state_file() -> Path:
    """``GRADLAB_UPLOAD_STATE``, else ``$XDG_STATE_HOME/gradlab/uploads.json`` (``~/.local/state/...``)."""
    if os.environ.get("GRADLAB_UPLOAD_STATE"):
        return Path(os.environ["GRADLAB_UPLOAD_STATE"])
    base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return base / "gradlab" / "uploads.json"


def _file_key(client: Client, path: Path) -> str:
    st = path.stat()
    return f"{client.base_url}|{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"


def _load_state() -> dict[str, str]:
    try:
        found = json.loads(state_file().read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def _remember(key: str, upload_id: str | None) -> None:
    state = _load_state()
    if upload_id is None:
        state.pop(key, None)
    else:
        state[key] = upload_id
    path = state_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(f".{path.name}.{os.getpid()}")
    part.write_text(json.dumps(state, indent=1))
    part.replace(path)


def _send(client: Client, file: Path, label_column, tokenizer, chunk_mib: int) -> Dataset:
    key = _file_key(client, file)
    resume = _load_state().get(key)
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with Progress(*columns, TimeRemainingColumn(), console=err, transient=False) as bar:
        task = bar.add_task(f"uploading {file.name}", total=file.stat().st_size)

        def progress(sent: int, size: int) -> None:
            bar.update(task, completed=sent, total=size)

        if resume is not None:
            try:
                return client.upload_dataset_resumable(
                    file, upload_id=resume, chunk_bytes=chunk_mib * 2**20, on_progress=progress
                )
            except ApiError as exc:
                if exc.status != 404:
                    raise
                bar.update(task, description=f"uploading {file.name} (the earlier upload expired; afresh)")
        return client.upload_dataset_resumable(
            file,
            label_column=label_column,
            tokenizer=tokenizer,
            chunk_bytes=chunk_mib * 2**20,
            on_progress=progress,
            on_started=lambda upload_id: _remember(key, upload_id),
        )


def print_preview(ds: Dataset) -> None:
    shape = f"{ds.rows} rows" + (f" × {ds.columns} columns" if ds.columns is not None else "")
    labels = "with labels" if ds.has_labels else "no labels"
    out.print(f"dataset [bold]{ds.id}[/bold] {ds.filename}: {ds.kind}, {ds.format}, {shape}, {labels}")
    preview = ds.preview or {}
    stats = preview.get("stats")
    if isinstance(stats, dict) and all(isinstance(v, list) for v in stats.values()):
        table = Table("column", *stats, title="statistics", title_justify="left")
        for i in range(min(len(v) for v in stats.values())):
            table.add_row(str(i), *(format_value(v[i]) for v in stats.values()))
        out.print(table)
    for name, value in preview.items():
        if name != "stats":
            out.print(f"{name}: {json.dumps(value)[:400]}", markup=False)


def upload(
    file: Path = typer.Argument(
        ..., exists=True, dir_okay=False, readable=True, help=".npy, .npz, .csv, .parquet or .jsonl"
    ),
    label_column: str | None = typer.Option(None, help="column holding the labels (CSV, Parquet)"),
    tokenizer: Path | None = typer.Option(
        None, exists=True, dir_okay=False, help="tokenizer.json for JSON Lines text (default: UTF-8 bytes)"
    ),
    chunk_mib: int = typer.Option(64, min=1, help="MiB per request"),
    wait: bool = typer.Option(True, help="wait for the validation and print the preview"),
) -> None:
    """Upload a dataset (resumable: run it again after an interruption); use the printed id as params.dataset."""
    with api_client() as client:
        ds = _send(client, file, label_column, tokenizer, chunk_mib)
        _remember(_file_key(client, file), None)
        if not wait:
            out.print(f"dataset [bold]{ds.id}[/bold] {ds.filename}: {ds.status}")
            return
        with err.status(f"validating {file.name}"):
            ds = client.wait_dataset(ds.id, timeout=VALIDATION_TIMEOUT_S)
    if ds.status == "rejected":
        err.print(f"[red]rejected:[/red] {ds.reason}")
        raise typer.Exit(1)
    print_preview(ds)
