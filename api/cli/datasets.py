"""``gradlab datasets upload|list|show|delete``: uploads that resume, and the datasets a key has.

An upload says at once which dataset it makes, then what it waits for: its bytes going out, then a worker to
validate them (its place in line), then the validation. The upload is remembered in a small state file, keyed by
the server and the file's absolute path, with the file's size and modification time, until its dataset is
validated: running the same command again after an interruption (Ctrl-C, a lost connection, a restarted API)
resumes from the bytes the server holds, or, when the bytes were all sent, follows the validation of that same
dataset instead of uploading again; a file changed since starts a new upload (the earlier one is given up).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import typer
from rich.text import Text

from api.cli.common import DatasetState, Fitted, LiveLine, api_client, err, out, print_json, short_when, status_text
from api.client import ApiError, Client, Dataset
from core.report import format_value

VALIDATION_TIMEOUT_S = 3600.0

datasets_cli = typer.Typer(
    help="Upload datasets for jobs to train on; list, show and delete them.", no_args_is_help=True
)


# --- what a rerun finds -------------------------------------------------------------------------------------------


def state_file() -> Path:
    """``GRADLAB_UPLOAD_STATE``, else ``$XDG_STATE_HOME/gradlab/uploads.json`` (``~/.local/state/...``)."""
    if os.environ.get("GRADLAB_UPLOAD_STATE"):
        return Path(os.environ["GRADLAB_UPLOAD_STATE"])
    base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return base / "gradlab" / "uploads.json"


@dataclass(frozen=True)
class Earlier:
    """An upload of this file to this server that a run began: its ids, and the file as it was then."""

    upload: str
    dataset: str
    size: int
    mtime_ns: int


def _file_key(client: Client, path: Path) -> str:
    return f"{client.base_url}|{path.resolve()}"


def _load_state() -> dict[str, dict]:
    try:
        found = json.loads(state_file().read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in found.items() if isinstance(v, dict)} if isinstance(found, dict) else {}


def _earlier(key: str) -> Earlier | None:
    try:
        return Earlier(**_load_state()[key])
    except (KeyError, TypeError):
        return None


def _remember(key: str, earlier: Earlier | None) -> None:
    state = _load_state()
    if earlier is None:
        state.pop(key, None)
    else:
        state[key] = asdict(earlier)
    path = state_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(f".{path.name}.{os.getpid()}")
    part.write_text(json.dumps(state, indent=1))
    part.replace(path)


def _say(text: str) -> None:
    err.print(text, markup=False)


def _found_earlier(client: Client, file: Path, earlier: Earlier) -> Dataset | None:
    """What became of an earlier upload of this file: its dataset when it is still there and the file has not
    changed since (said so), else None (said why; a changed file's earlier upload is given up)."""
    st = file.stat()
    if (earlier.size, earlier.mtime_ns) != (st.st_size, st.st_mtime_ns):
        try:
            client.abort_upload(earlier.upload)
            gone = "gave it up"
        except ApiError as exc:
            if exc.status not in (404, 409):
                raise
            gone = "left it as it is" if exc.status == 409 else "it is gone"
        _say(
            f"{file.name} changed since upload {earlier.upload} (dataset {earlier.dataset}) began; "
            f"{gone} and start a new upload"
        )
        return None
    try:
        ds = client.dataset(earlier.dataset)
    except ApiError as exc:
        if exc.status != 404:
            raise
        _say(f"the earlier upload of {file.name} (dataset {earlier.dataset}) expired or was deleted; starting anew")
        return None
    if ds.status == "uploading":
        _say(f"dataset {ds.id}: resuming upload {earlier.upload} of {file.name}")
    else:
        _say(f"dataset {ds.id}: {file.name} was uploaded already (upload {earlier.upload}); it is {ds.status}")
    return ds


# --- upload -----------------------------------------------------------------------------------------------------


def _send(
    client: Client, file: Path, key: str, upload_id: str | None, label_column, tokenizer, chunk_mib: int
) -> Dataset:
    """Upload ``file`` (resuming ``upload_id`` when given), saying at once which dataset it makes, with its bytes'
    progress on one line."""
    st = file.stat()

    def started(new_upload: str, dataset_id: str) -> None:
        _remember(key, Earlier(new_upload, dataset_id, st.st_size, st.st_mtime_ns))
        out.print(Text.assemble("dataset ", (dataset_id, "bold"), f": uploading {file.name} (upload {new_upload})"))

    with LiveLine() as line:

        def progress(sent: int, size: int) -> None:
            line.update("uploading", f"{format_value(sent)} of {format_value(size)} bytes", fraction=sent / size)

        if upload_id is not None:
            try:
                return client.upload_dataset_resumable(
                    file, upload_id=upload_id, chunk_bytes=chunk_mib * 2**20, on_progress=progress
                )
            except ApiError as exc:
                if exc.status != 404:
                    raise
                _say(f"upload {upload_id} expired meanwhile; starting anew")
        return client.upload_dataset_resumable(
            file,
            label_column=label_column,
            tokenizer=tokenizer,
            chunk_bytes=chunk_mib * 2**20,
            on_progress=progress,
            on_started=started,
        )


def _waiting(ds: Dataset) -> str:
    if ds.queue_position is None:
        return "a worker is validating it"
    ahead = ds.queue_position - 1
    return f"waiting for a worker (queued behind {ahead})" if ahead else "waiting for a worker (next in line)"


def _wait(client: Client, ds: Dataset) -> Dataset:
    """The dataset once validated, saying meanwhile what it waits for."""
    with LiveLine() as line:

        def show(now: Dataset) -> None:
            line.update(now.status, _waiting(now), key=f"{now.status} {now.queue_position is None}")

        return client.wait_dataset(ds.id, timeout=VALIDATION_TIMEOUT_S, on_poll=show)


@datasets_cli.command("upload")
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
    """Upload a dataset; use the printed id as params.dataset (run again after an interruption, it resumes)."""
    with api_client() as client:
        key = _file_key(client, file)
        earlier = _earlier(key)
        ds = _found_earlier(client, file, earlier) if earlier is not None else None
        if ds is None or ds.status == "uploading":
            resume = earlier.upload if ds is not None and earlier is not None else None
            ds = _send(client, file, key, resume, label_column, tokenizer, chunk_mib)
        if not wait and not ds.settled:
            out.print(f"dataset {ds.id} {ds.filename}: {ds.status}", markup=False)
            return
        if not ds.settled:
            ds = _wait(client, ds)
        _remember(key, None)  # validated: a rerun uploads afresh
    if ds.status == "rejected":
        err.print(f"[red]rejected:[/red] {ds.reason}")
        raise typer.Exit(1)
    print_preview(ds)


# --- list, show, delete -------------------------------------------------------------------------------------------


def _shape(ds: Dataset) -> str:
    if ds.rows is None:
        return "—"
    return format_value(ds.rows) + ("" if ds.columns is None else f"×{format_value(ds.columns)}")


@datasets_cli.command("list")
def list_datasets(
    status: DatasetState | None = typer.Option(None, help="only datasets in this state"),
    format: str | None = typer.Option(
        None, "--format", help="only datasets of this format: npy, npz, csv, parquet, jsonl"
    ),
    limit: int = typer.Option(20, min=1, max=10_000, help="at most this many, newest first"),
    as_json: bool = typer.Option(False, "--json", help="the datasets as the API lists them, every field"),
) -> None:
    """List your datasets, newest first (an interrupted upload shows as uploading)."""
    with api_client() as client:
        found = list(client.datasets(status=status.value if status else None, format=format, limit=limit))
    if as_json:
        print_json([asdict(ds) for ds in found])
        return
    rows: list[list[str | Text]] = [
        [ds.id, ds.filename, status_text(ds.status), ds.format, ds.kind or "—", _shape(ds), short_when(ds.created_at)]
        for ds in found
    ]
    header = ["id", "file", "status", "format", "kind", "rows×cols", "created"]
    out.print(Fitted(header, rows, right=[5], optional=[6, 3, 5, 4]))


@datasets_cli.command("show")
def show(
    dataset_id: str = typer.Argument(..., help="dataset id"),
    as_json: bool = typer.Option(False, "--json", help="the dataset as the API answers it, preview included"),
) -> None:
    """A dataset's state, shape and preview (columns, label balance, first rows, statistics)."""
    with api_client() as client:
        ds = client.dataset(dataset_id)
    if as_json:
        print_json(asdict(ds))
        return
    if ds.status != "ready":
        detail = ds.reason if ds.status == "rejected" else _waiting(ds) if ds.status == "validating" else ""
        out.print(Text.assemble("dataset ", (ds.id, "bold"), f" {ds.filename}: ", status_text(ds.status), f" {detail}"))
        return
    print_preview(ds)


@datasets_cli.command("delete")
def delete(
    dataset_id: str = typer.Argument(..., help="dataset id"),
    yes: bool = typer.Option(False, "--yes", "-y", help="do not ask first"),
) -> None:
    """Delete a dataset and its stored files (refused while a queued or running job uses it)."""
    if not yes:
        typer.confirm(f"delete dataset {dataset_id} and its files?", abort=True, err=True)
    with api_client() as client:
        client.delete_dataset(dataset_id)
    out.print(f"deleted dataset {dataset_id}", markup=False)


def print_preview(ds: Dataset) -> None:
    shape = f"{ds.rows} rows" + (f" × {ds.columns} columns" if ds.columns is not None else "")
    labels = "with labels" if ds.has_labels else "no labels"
    out.print(f"dataset [bold]{ds.id}[/bold] {ds.filename}: {ds.kind}, {ds.format}, {shape}, {labels}")
    preview = ds.preview or {}
    stats = preview.get("stats")
    if isinstance(stats, dict) and all(isinstance(v, list) for v in stats.values()):
        rows = [[str(i), *(format_value(v[i]) for v in stats.values())] for i in range(min(map(len, stats.values())))]
        out.print(Fitted(["column", *stats], rows, title="statistics", right=range(1, len(stats) + 1)))
    for name, value in preview.items():
        if name != "stats":
            out.print(f"{name}: {json.dumps(value)[:400]}", markup=False)
