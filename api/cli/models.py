"""``gradlab models upload|list|show|delete``: the tenant's stored models.

``upload`` sends a model resumably, with a progress bar: a directory holding ``config.json`` and
``model.safetensors``, or a sharded checkpoint (``model.safetensors.index.json`` and its shards), as published on the
Hugging Face Hub; or the files themselves; or one ``.pt2`` (``torch.export.save``). The upload id is printed at once
and remembered in the uploads state file (``gradlab datasets upload``'s), keyed by the server and every file's path,
size and modification time, so running the same command again after an interruption resumes from the bytes the
server holds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn
from rich.table import Table

from api.cli.common import api_client, err, out
from api.cli.datasets import state_file
from api.client import ApiError, Client, Model
from core.report import format_value

models_cli = typer.Typer(help="Upload, list, show and delete models for jobs to use.", no_args_is_help=True)

SENT = ("config.json", ".safetensors", ".safetensors.index.json", ".pt2")


def model_files(paths: list[Path]) -> list[Path]:
    """The files to send: a directory's config.json, safetensors files, index and .pt2 (the rest of a Hub
    download, tokenizer files and pickled duplicates, stays home), or the files as given."""
    if len(paths) == 1 and paths[0].is_dir():
        found = sorted(p for p in paths[0].iterdir() if p.is_file() and p.name.lower().endswith(SENT))
        if not found:
            raise typer.BadParameter(f"{paths[0]} holds no config.json, .safetensors or .pt2", param_hint="PATH")
        return found
    directories = [p for p in paths if p.is_dir()]
    if directories:
        raise typer.BadParameter(f"{directories[0]} is a directory; give one directory or files", param_hint="PATH")
    return paths


def _state_key(client: Client, files: list[Path]) -> str:
    stats = sorted(f"{p.resolve()}|{p.stat().st_size}|{p.stat().st_mtime_ns}" for p in files)
    return "model|" + client.base_url + "|" + "|".join(stats)


def _state() -> dict[str, Any]:
    try:
        found = json.loads(state_file().read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def _remember(key: str, upload_id: str | None) -> None:
    state = _state()
    if upload_id is None:
        state.pop(key, None)
    else:
        state[key] = upload_id
    path = state_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(f".{path.name}.models")
    part.write_text(json.dumps(state, indent=1))
    part.replace(path)


def _send(client: Client, files: list[Path], chunk_mib: int) -> Model:
    key = _state_key(client, files)
    resume = _state().get(key)
    total = sum(p.stat().st_size for p in files)
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with Progress(*columns, TimeRemainingColumn(), console=err, transient=False) as bar:
        task = bar.add_task(f"uploading {len(files)} files", total=total)

        def progress(sent: int, size: int) -> None:
            bar.update(task, completed=sent, total=size)

        def started(upload: dict) -> None:
            _remember(key, upload["id"])
            bar.console.print(
                f"upload {upload['id']} (model {upload['model_id']}): {len(files)} files, {total:,} bytes"
            )

        if resume is not None:
            try:
                bar.console.print(f"resuming upload {resume}")
                return client.upload_model_resumable(
                    files, upload_id=resume, chunk_bytes=chunk_mib * 2**20, on_progress=progress
                )
            except ApiError as exc:
                if exc.status != 404:
                    raise
                bar.console.print(f"upload {resume} is gone (expired or refused); starting afresh")
        return client.upload_model_resumable(
            files, chunk_bytes=chunk_mib * 2**20, on_progress=progress, on_started=started
        )


@models_cli.command()
def upload(
    paths: list[Path] = typer.Argument(
        ..., exists=True, readable=True, help="a directory (config.json + safetensors or shards), files, or a .pt2"
    ),
    chunk_mib: int = typer.Option(64, min=1, help="MiB per request"),
) -> None:
    """Upload a model (resumable: run it again after an interruption); print how a job names it."""
    files = model_files(paths)
    with api_client() as client:
        model = _send(client, files, chunk_mib)
        _remember(_state_key(client, files), None)
    print_model(model)


def print_model(model: Model) -> None:
    kind = model.model_type or "exported program"
    size = f", {model.weights_size:,} bytes" if model.weights_size else ""
    out.print(
        f"model [bold]{model.id}[/bold] {model.filename}: {kind}, {model.format}, {model.n_params:,} parameters{size}"
    )
    out.print(f"use as: {json.dumps(model.use_as)}", markup=False, soft_wrap=True)
    if model.exported:
        _print_exported(model.exported)
    elif model.layers:
        first = ", ".join(layer["name"] for layer in model.layers[:3])
        out.print(f"{model.n_tensors} tensors; first: {first}", markup=False)


def _shape(entry: dict | None) -> str:
    if not entry:
        return "—"
    return f"{entry.get('dtype', '?')} [{', '.join(str(d) for d in entry.get('shape', []))}]"


def _print_exported(described: dict) -> None:
    table = Table("", "name", "dtype and shape", title="inputs and outputs", title_justify="left")
    for entry in described.get("inputs", []):
        table.add_row("in", entry.get("name", ""), _shape(entry))
    outputs = described.get("outputs")
    for entry in outputs if isinstance(outputs, list) else [outputs]:
        table.add_row("out", "", _shape(entry) if isinstance(entry, dict) and "dtype" in entry else json.dumps(entry))
    out.print(table)
    ops = Table("operator", "calls", title="operators", title_justify="left")
    for name, calls in described.get("operators", {}).items():
        ops.add_row(name, str(calls))
    out.print(ops)


@models_cli.command("list")
def list_models(
    source: str | None = typer.Option(None, help="uploaded or exported"),
    format: str | None = typer.Option(None, "--format", help="config, safetensors, sharded or exported"),  # noqa: A002
    limit: int = typer.Option(50, min=1, help="how many, newest first"),
    as_json: bool = typer.Option(False, "--json", help="print the models as JSON lines"),
) -> None:
    """The tenant's models, newest first."""
    with api_client() as client:
        models = list(client.models(source=source, format=format, limit=limit))
    if as_json:
        for m in models:
            print(json.dumps({**m.__dict__, "created_at": m.created_at.isoformat()}), flush=True)
        return
    table = Table("id", "format", "type", "parameters", "bytes", "created")
    for m in models:
        table.add_row(
            m.id,
            m.format,
            m.model_type or "—",
            format_value(m.n_params),
            format_value(m.weights_size) if m.weights_size else "—",
            m.created_at.astimezone().strftime("%Y-%m-%d %H:%M"),
        )
    out.print(table)


@models_cli.command()
def show(
    model_id: str = typer.Argument(..., help="a model id"),
    as_json: bool = typer.Option(False, "--json", help="the whole answer of GET /v1/models/{id}"),
) -> None:
    """A model: its config and layers, or an exported program's inputs, outputs and operators."""
    with api_client() as client:
        model = client.model(model_id)
    if as_json:
        print(json.dumps({**model.__dict__, "created_at": model.created_at.isoformat()}, indent=1), flush=True)
        return
    print_model(model)


@models_cli.command()
def delete(model_id: str = typer.Argument(..., help="a model id")) -> None:
    """Delete a model and its bytes (refused while a queued or running job uses it)."""
    with api_client() as client:
        client.delete_model(model_id)
    out.print(f"model {model_id} deleted")
