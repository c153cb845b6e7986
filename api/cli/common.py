"""What the client commands share: the consoles they print to, the status colours, the API client they open
(errors printed with their fields, exit 1), the spec files they read (JSON or YAML, a bad file is a usage error,
exit 2), tables that fit the terminal, the one line that shows progress, and ``--json`` output."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import typer
import yaml
from rich import box
from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.live import Live
from rich.table import Table
from rich.text import Text

from api.client import ApiError, Client

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

STATUS_STYLE = {
    "queued": "yellow",
    "running": "cyan",
    "succeeded": "green",
    "failed": "red",
    "cancelled": "magenta",
    "uploading": "yellow",
    "validating": "cyan",
    "ready": "green",
    "rejected": "red",
}


class State(StrEnum):
    """What ``--status`` takes for jobs and studies."""

    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


class DatasetState(StrEnum):
    uploading = "uploading"
    validating = "validating"
    ready = "ready"
    rejected = "rejected"


def status_text(status: str) -> Text:
    return Text(status, style=STATUS_STYLE.get(status, ""))


def when(t: datetime | None) -> str:
    return t.astimezone().strftime("%Y-%m-%d %H:%M:%S") if t else "—"


def short_when(t: datetime | None) -> str:
    """A list's timestamp: the time alone today, the date and time before."""
    if t is None:
        return "—"
    local = t.astimezone()
    return local.strftime("%H:%M:%S" if local.date() == datetime.now().astimezone().date() else "%Y-%m-%d %H:%M")


def print_json(value: Any) -> None:
    """Full values, for scripts and for what a table abbreviates (``--json``)."""
    print(json.dumps(value, indent=2, default=lambda v: v.isoformat() if isinstance(v, datetime) else str(v)))


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


# --- tables that fit --------------------------------------------------------------------------------------------

GAP = 2  # columns between two cells
TEXT_FLOOR = 10  # the narrowest a column of words (or of names) is squeezed to
WHOLE = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"  # an id
    r"|[-+−]?(\d[\d,]*(\.\d+)?|\.\d+)(e[-+]?\d+)?%?(/\d+)?|[-−]?∞|NaN|—"  # a number, a share, a count of
)


def _width(cell: str | Text) -> int:
    return max((cell_len(line) for line in str(cell).splitlines()), default=0)


def _floor(name: str, natural: int, cells: Sequence[str | Text]) -> int:
    """How narrow a column may get: ids and numbers are never broken (nor the header's words, up to a point);
    words and names wrap."""
    if cells and all(WHOLE.fullmatch(str(c).strip()) for c in cells):
        return max([*map(_width, cells), *(min(cell_len(w), TEXT_FLOOR) for w in name.split())])
    return min(natural, TEXT_FLOOR)


def _widths(header: Sequence[str], rows: Sequence[Sequence[str | Text]], room: int) -> list[int] | None:
    """Each column's width within ``room``: its natural width when all fit; else ids and numbers whole and the
    other columns squeezed, the room left shared out by what each still lacks. None when even that does not fit."""
    columns = list(zip(*rows)) if rows else [() for _ in header]
    natural = [max([_width(h), *map(_width, col)]) for h, col in zip(header, columns)]
    floor = [_floor(h, n, col) for h, n, col in zip(header, natural, columns)]
    room -= GAP * (len(header) - 1)
    if sum(natural) <= room:
        return natural
    if sum(floor) > room:
        return None
    widths, spare = list(floor), room - sum(floor)
    lacking = [n - f for n, f in zip(natural, floor)]
    total = sum(lacking)
    for i, lack in enumerate(lacking):
        widths[i] += spare * lack // total if total else 0
    return widths


@dataclass(frozen=True)
class Fitted:
    """A table no wider than the console it is printed on that cuts no value: ids and numbers stay whole, words
    wrap. When that is too wide, the ``optional`` columns go, in that order (a note says which; ``--json`` has
    everything), and when even that is too wide, one block per row ("column: value" lines under its first cell)."""

    header: Sequence[str]
    rows: Sequence[Sequence[str | Text]]
    title: str | None = None
    right: Sequence[int] = ()
    optional: Sequence[int] = ()

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        header, rows = self.header, self.rows
        keep = list(range(len(header)))
        dropped: list[str] = []
        while (
            widths := _widths([header[i] for i in keep], [[r[i] for i in keep] for r in rows], options.max_width)
        ) is None:
            if not (left := [i for i in self.optional if i in keep]):
                yield _records(header, rows, self.title)
                return
            keep.remove(left[0])
            dropped.append(header[left[0]])
        table = Table(
            box=box.SIMPLE_HEAD,
            show_edge=False,
            pad_edge=False,
            padding=(0, GAP - 1, 0, 0),  # with the separator: GAP columns between cells
            title=self.title,
            title_justify="left",
            title_style="bold",
            caption=f"left out at this width: {', '.join(dropped)} (--json has every field)" if dropped else None,
            caption_justify="left",
        )
        for i, width in zip(keep, widths):
            table.add_column(header[i], width=width, overflow="fold", justify="right" if i in self.right else "left")
        for row in rows:
            table.add_row(*(row[i] for i in keep))
        yield table


def _records(header: Sequence[str], rows: Sequence[Sequence[str | Text]], title: str | None) -> RenderableType:
    blocks: list[RenderableType] = [Text(title, style="bold")] if title else []
    for row in rows:
        grid = Table.grid(padding=(0, 1), pad_edge=False)
        grid.add_column(style="dim", overflow="fold")
        grid.add_column(overflow="fold")
        for name, cell in zip(header[1:], row[1:]):
            grid.add_row(f"{name}:", cell)
        blocks += [Text.assemble((str(row[0]), "bold")), grid]
    return Group(*blocks)


# --- progress on one line ---------------------------------------------------------------------------------------


class LiveLine:
    """Progress on one line of ``err``: redrawn in place on a terminal; elsewhere (a pipe, a log, CI) a line is
    printed only when it says something new: another ``key`` (a state), another tenth of the way, or a while
    after the last one."""

    EVERY_S = 30.0
    BAR = 20

    def __init__(self, console: Console = err):
        self.console = console
        self.live = Live(console=console, transient=True, refresh_per_second=4) if console.is_terminal else None
        self.started = time.monotonic()
        self._printed: tuple[str, int, float] | None = None

    def __enter__(self) -> LiveLine:
        if self.live is not None:
            self.live.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.live is not None:
            self.live.stop()

    def update(self, state: str | Text, detail: str = "", fraction: float | None = None, key: str = "") -> None:
        now = time.monotonic()
        elapsed = int(now - self.started)
        clock = f"{elapsed // 60}:{elapsed % 60:02d}"
        state = status_text(state) if isinstance(state, str) else state
        share = "" if fraction is None else f"{fraction:4.0%}"
        if self.live is not None:
            line = Text.assemble(state, " ", _bar(fraction, self.BAR), f" {share} {clock} {detail}")
            line.no_wrap, line.overflow = True, "ellipsis"
            self.live.update(line)
            return
        tenth = -1 if fraction is None else int(fraction * 10)
        last = self._printed
        if last is None or key != last[0] or tenth > last[1] or now - last[2] >= self.EVERY_S:
            self.console.print(Text.assemble(state, f" {share} {clock} {detail}".rstrip()), soft_wrap=True)
            self._printed = (key, tenth, now)


def _bar(fraction: float | None, width: int) -> Text:
    if fraction is None:
        return Text("━" * width, style="dim")
    done = round(max(0.0, min(1.0, fraction)) * width)
    return Text.assemble(("━" * done, "magenta"), ("━" * (width - done), "dim"))
