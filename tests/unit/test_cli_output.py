"""The CLI's tables fit the terminal without cutting a value, and its progress is one line: redrawn on a terminal,
a line now and then anywhere else."""

from __future__ import annotations

import io
import uuid

import pytest
from rich.console import Console

from api.cli.common import Fitted, LiveLine


def rendered(renderable, width: int) -> list[str]:
    console = Console(file=io.StringIO(), width=width, force_terminal=False, color_system=None)
    console.print(renderable)
    return console.file.getvalue().splitlines()


IDS = [str(uuid.UUID(int=i * 7919 + 12345)) for i in range(3)]
ROWS = [[i, "embedding_dim", "succeeded", "1,658,896,123", "fitting n=8 at step 400 of 400 " * 2] for i in IDS]
HEADER = ["id", "kind", "status", "n_params", "message"]


@pytest.mark.parametrize("width", [160, 100, 80, 60, 40])
def test_a_table_fits_and_keeps_ids_and_numbers_whole(width):
    lines = rendered(Fitted(HEADER, ROWS, title="jobs", right=[3]), width)
    assert all(len(line) <= width for line in lines), lines
    text = "\n".join(lines)
    assert all(text.count(i) == 1 for i in IDS)  # whole, on one line
    assert text.split().count("1,658,896,123") == 3
    assert "…" not in text


def test_optional_columns_go_first_and_a_note_says_which():
    lines = rendered(Fitted(HEADER, ROWS, right=[3], optional=[4]), 80)
    text = "\n".join(lines)
    assert "fitting" not in text and "left out at this width: message (--json has every field)" in text
    assert all(i in text for i in IDS) and text.split().count("1,658,896,123") == 3
    wide = "\n".join(rendered(Fitted(HEADER, ROWS, right=[3], optional=[4]), 200))
    assert "fitting" in wide and "left out" not in wide  # only when it must


def test_too_narrow_for_any_table_gives_one_block_per_row():
    lines = [line.rstrip() for line in rendered(Fitted(HEADER, ROWS), 40)]
    assert IDS[0] in lines and "n_params: 1,658,896,123" in lines
    assert all(len(line) <= 40 for line in lines)


def test_a_long_word_wraps_instead_of_being_cut():
    long = "x" * 150
    lines = rendered(Fitted(["key", "value"], [["a", long]]), 80)
    assert all(len(line) <= 80 for line in lines) and len(lines) > 3
    assert "".join("".join(line.split()) for line in lines[2:]) == "a" + long  # every character, folded


def test_progress_on_a_terminal_is_one_line_redrawn():
    buf = io.StringIO()
    console = Console(file=buf, width=60, force_terminal=True, color_system=None)
    with LiveLine(console) as line:
        for step in range(50):
            line.update("running", f"step {step} of 50 " + "loss=0.1234 " * 20, fraction=step / 50)
        assert line.live is not None
        assert len(console.render_lines(line.live.renderable, console.options)) == 1  # the long detail is cut
    # everything drawn was drawn over the same line: no line feed between frames
    assert buf.getvalue().count("\n") <= 1


def test_progress_elsewhere_is_a_line_per_state_and_tenth():
    buf = io.StringIO()
    console = Console(file=buf, width=80, force_terminal=False)
    with LiveLine(console) as line:
        line.update("queued", "1st in the cpu queue", key="queued")
        line.update("queued", "1st in the cpu queue", key="queued")
        for step in range(1001):
            line.update("running", f"step {step}", fraction=step / 1000, key="running")
        line.update("succeeded", "done", fraction=1.0, key="succeeded")
    lines = buf.getvalue().splitlines()
    assert lines[0].startswith("queued") and lines[-1].startswith("succeeded")
    assert len([x for x in lines if x.startswith("running")]) == 11  # 0 %, 10 %, …, 100 %
