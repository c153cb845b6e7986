"""What the client commands share: the consoles they print to, the status colours, the API client they open
(errors printed with their fields, exit 1) and the spec files they read (JSON or YAML, a bad file is a usage
error, exit 2)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
import yaml
from rich.console import Console

from api.client import ApiError, Client

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

STATUS_STYLE = {"queued": "yellow", "running": "cyan", "succeeded": "green", "failed": "red", "cancelled": "magenta"}


@contextmanager
def api_client() -> Iterator[Client]:
    """A client from the environment; any API error is printed with its field errors and exits 1."""
    try:
        with Client() as client:
            yield client
    except ApiError as exc:
        err.print(f"[red]error:[/red] {exc}", markup=True, highlight=False)
        for e in exc.errors:
            err.print(f"  {e.get('field', '?')}: {e.get('message', '')}", markup=False)
        if exc.retry_after:
            err.print(f"  retry after {exc.retry_after:g} s", markup=False)
        raise typer.Exit(1) from None


def load_spec(path: Path) -> dict[str, Any]:
    """A job spec from .json or .yaml/.yml (other suffixes: JSON, then YAML); a bad file is a usage error."""
    text = path.read_text(encoding="utf-8")
    try:
        spec = (
            json.loads(text)
            if path.suffix.lower() == ".json"
            else (yaml.safe_load(text) if path.suffix.lower() in (".yaml", ".yml") else json_or_yaml(text))
        )
    except (ValueError, yaml.YAMLError) as exc:
        raise typer.BadParameter(f"{path} is not valid JSON/YAML: {exc}", param_hint="SPEC") from None
    if not isinstance(spec, dict) or "kind" not in spec:
        raise typer.BadParameter(
            f"{path} must hold a mapping with at least 'kind' and 'params' (print one with: gradlab kinds KIND)",
            param_hint="SPEC",
        )
    return spec


def json_or_yaml(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return yaml.safe_load(text)
