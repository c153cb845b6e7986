"""Log formats with their context, the queue-wait estimate, and the CLI's words for a place in a queue."""

from __future__ import annotations

import json
import logging

import pytest

from api.cli.jobs import queue_place
from api.client import Job
from core import logs
from core.fleet.queueing import estimate_wait_s


def record(message: str = "hello %s", args=("world",)) -> logging.LogRecord:
    rec = logging.LogRecord("gradlab.test", logging.INFO, __file__, 1, message, args, None)
    logs.ContextFilter().filter(rec)
    return rec


def test_json_lines_carry_the_bound_context_and_drop_it_on_reset():
    token = logs.bind(job_id="j-1", attempt=2, kind="init_averaging", tenant=None)
    try:
        line = json.loads(logs.JsonFormatter().format(record()))
    finally:
        logs.reset(token)
    assert line["message"] == "hello world" and line["level"] == "info" and line["logger"] == "gradlab.test"
    assert line["job_id"] == "j-1" and line["attempt"] == 2 and line["kind"] == "init_averaging"
    assert "tenant" not in line and line["time"].endswith("+00:00")
    assert "job_id" not in json.loads(logs.JsonFormatter().format(record()))


def test_json_line_keeps_a_traceback_in_one_field():
    try:
        raise ValueError("bad")
    except ValueError:
        import sys

        rec = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    line = logs.JsonFormatter().format(rec)
    assert "\n" not in line and "ValueError: bad" in json.loads(line)["exc"]


def test_console_format_puts_the_context_after_the_message():
    token = logs.bind(request_id="r-9")
    try:
        text = logs.ConsoleFormatter().format(record())
    finally:
        logs.reset(token)
    assert text.endswith("INFO  gradlab.test: hello world  request_id=r-9")


def test_wait_is_the_work_ahead_shared_by_the_workers():
    run_s = {"a": [10.0, 20.0, 30.0], "b": [4.0]}  # typical: the median, 20 and 4
    # one worker: the rest of the running "a" (20 - 5) plus two "a" and one "b" ahead
    assert estimate_wait_s({"a": 2, "b": 1}, [("a", 5.0)], 1, run_s) == pytest.approx(15 + 40 + 4)
    assert estimate_wait_s({"a": 2, "b": 1}, [("a", 5.0)], 2, run_s) == pytest.approx((15 + 40 + 4) / 2)
    assert estimate_wait_s({}, [("a", 25.0)], 1, run_s) == 0.0  # running past its typical time: no negative rest
    assert estimate_wait_s({}, [], 1, {}) == 0.0  # next in an idle queue


def test_no_estimate_without_a_worker_or_a_run_history():
    assert estimate_wait_s({"a": 1}, [], 0, {"a": [1.0]}) is None
    assert estimate_wait_s({"a": 1, "c": 1}, [], 1, {"a": [1.0], "c": []}) is None
    assert estimate_wait_s({}, [("c", 1.0)], 1, {"c": []}) is None


def job(**kw) -> Job:
    base = dict(
        id="x",
        kind="k",
        status="queued",
        progress=0.0,
        message="queued",
        params={},
        seed=0,
        device_requested="cuda",
        device=None,
        timeout_s=60,
        attempt=0,
        created_at=None,
        queue="gpu",
    )
    return Job(**{**base, **kw})


@pytest.mark.parametrize(
    "position,eta,words",
    [
        (1, None, "1st in the gpu queue"),
        (2, 5.4, "2nd in the gpu queue, ~5 s"),
        (3, 240.0, "3rd in the gpu queue, ~4 min"),
        (4, 7200.0, "4th in the gpu queue, ~2.0 h"),
        (11, None, "11th in the gpu queue"),
        (12, None, "12th in the gpu queue"),
        (13, None, "13th in the gpu queue"),
        (21, None, "21st in the gpu queue"),
        (112, None, "112th in the gpu queue"),
    ],
)
def test_place_in_queue_in_words(position, eta, words):
    assert queue_place(job(queue_position=position, eta_s=eta)) == words


def test_no_place_once_running():
    assert queue_place(job(status="running", queue_position=None)) == ""


def test_place_behind_a_long_queue_in_words():
    assert queue_place(job(queue_position=None, queue_ahead_over=1000)) == "more than 1,000 ahead in the gpu queue"
