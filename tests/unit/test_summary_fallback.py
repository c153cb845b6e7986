"""``workers.runner.attach_summary``: a summary that cannot be built, or that does not have a summary's shape, is
stored as ``summary: null`` with the reason logged, and the job keeps its result (issue 33.3; the whole job through
a real worker: tests/integration/test_summary_null.py)."""

from __future__ import annotations

import logging
from types import SimpleNamespace

from core.summary import summary
from workers.runner import attach_summary


def _kind(summarize):
    return SimpleNamespace(name="k", summarize=summarize)


def _good(params, result):
    return summary(
        question="q",
        claim="c",
        headline="h",
        outcome="supports",
        statistic="x",
        rule="r",
        columns=["a"],
        rows=[[result["x"]]],
        figures={"x": result["x"]},
    )


def test_a_summary_that_raises_is_stored_as_null_with_the_reason_logged(caplog):
    result = {"x": 1.0}

    def broken(params, result):
        raise ZeroDivisionError("division by zero")

    with caplog.at_level(logging.ERROR, logger="workers.runner"):
        attach_summary(_kind(broken), None, result)
    assert result == {"x": 1.0, "summary": None}
    assert "the k summary could not be built (ZeroDivisionError: division by zero)" in caplog.text


def test_a_summary_without_a_summarys_shape_is_stored_as_null(caplog):
    result = {"x": 1.0}
    with caplog.at_level(logging.ERROR, logger="workers.runner"):
        attach_summary(_kind(lambda p, r: {"headline": "no verdict"}), None, result)
    assert result["summary"] is None and "ValidationError" in caplog.text


def test_a_good_summary_is_stored_json_safe_and_a_kind_without_one_adds_nothing():
    result = {"x": float("nan")}
    attach_summary(_kind(_good), None, result)
    assert result["summary"]["figures"] == {"x": None} and result["summary"]["verdict"]["value"] is None
    assert result["summary"]["table"]["rows"] == [[None]] and result["summary"]["headline"] == "h"
    bare = {"x": 1.0}
    attach_summary(_kind(None), None, bare)
    assert bare == {"x": 1.0}
