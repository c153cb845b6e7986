"""The API's way to inspect a model without loading torch: ``core.networks.meta_summary`` in a child process.

One long-lived child per API process answers one request at a time (torch and transformers are imported once,
there); it is started on first use, replaced when it dies or overruns a request's time limit, and recycled when its
resident memory passes ``RECYCLE_RSS_BYTES`` (meta builds leave some behind: ~43 MiB per 512-layer config) or after
``RECYCLE_AFTER`` requests. Answers are remembered per process by the sha256 of the request. At most ``max_waiting``
requests wait behind the one being answered; one more is turned away at once (``InspectorBusy``: the API's 429 with
Retry-After) rather than queued for minutes.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import select
import subprocess
import sys
import time
from collections import OrderedDict
from pathlib import Path
from threading import Lock

ROOT = Path(__file__).resolve().parents[2]
CACHE_SIZE = 256
RECYCLE_AFTER = 500
RECYCLE_RSS_BYTES = 3 * 2**29  # 1.5 GiB


class ModelRejected(ValueError):
    """The model cannot be built as asked; the message names the field and the reason."""


class InspectionFailed(RuntimeError):
    """The inspector itself failed (timeout, crash): not the user's fault."""


class InspectorBusy(RuntimeError):
    """Too many requests wait for this process's inspector; ``retry_after`` seconds is when one might get in."""

    def __init__(self, waiting: int, retry_after: int):
        super().__init__(f"{waiting} model inspections are already waiting in this process")
        self.retry_after = retry_after


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (Linux /proc; 0 where it cannot be read)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class _Child:
    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.served = 0

    def _start(self) -> subprocess.Popen:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "OMP_NUM_THREADS": "1",
            "TRANSFORMERS_VERBOSITY": "error",
            "HF_HUB_OFFLINE": "1",
        }
        self.served = 0
        return subprocess.Popen(
            [sys.executable, "-m", "core.networks.meta_summary"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
            cwd=ROOT,
        )

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def _worn(self) -> bool:
        assert self.proc is not None  # asked only of a started child
        return self.served >= RECYCLE_AFTER or rss_bytes(self.proc.pid) > RECYCLE_RSS_BYTES

    def ask(self, request: str, timeout_s: float) -> dict:
        if self.proc is None or self.proc.poll() is not None or self._worn():
            self.stop()
            self.proc = self._start()
        self.served += 1
        stdin, stdout = self.proc.stdin, self.proc.stdout
        assert stdin is not None and stdout is not None  # _start opens both pipes
        try:
            stdin.write(request + "\n")
            stdin.flush()
        except BrokenPipeError:
            self.stop()
            raise InspectionFailed("the model inspector exited") from None
        ready, _, _ = select.select([stdout], [], [], timeout_s)
        line = stdout.readline() if ready else ""
        if not line:
            self.stop()
            raise InspectionFailed(
                f"no answer from the model inspector within {timeout_s:g} s"
                if not ready
                else "the model inspector exited"
            )
        return json.loads(line)


_CHILD = _Child()
_CACHE: OrderedDict[str, dict] = OrderedDict()
_LOCK = Lock()
_QUEUE = Lock()  # guards _CACHE, _waiting and _seconds
_waiting = 0  # requests in this process being answered or waiting for the child
_seconds = 1.0  # how long the last answer took, for Retry-After


def _enter(max_waiting: int) -> None:
    global _waiting
    with _QUEUE:
        if _waiting > max_waiting:
            raise InspectorBusy(_waiting - 1, max(1, math.ceil(_waiting * _seconds)))
        _waiting += 1


def _leave(seconds: float | None) -> None:
    global _waiting, _seconds
    with _QUEUE:
        _waiting -= 1
        if seconds is not None:
            _seconds = seconds


def inspect_model(
    model: dict,
    *,
    input: dict | None = None,
    weights_header: dict | None = None,
    timeout_s: float = 120.0,
    max_waiting: int = 16,
) -> dict:
    """Summary of ``model`` (a builtin or hf_config spec as JSON): task, n_params, sizes, layers and, with ``input``
    ({batch, seq_len, features, classes}), the activation bytes of one micro-batch. ``InspectorBusy`` when
    ``max_waiting`` requests already wait."""
    request = json.dumps({"model": model, "input": input, "weights_header": weights_header}, sort_keys=True)
    key = hashlib.sha256(request.encode()).hexdigest()
    reply = _cached(key)
    if reply is None:
        _enter(max_waiting)
        took = None
        try:
            with _LOCK:
                reply = _cached(key)  # answered while this request waited
                if reply is None:
                    started = time.monotonic()
                    reply = _CHILD.ask(request, timeout_s)
                    took = time.monotonic() - started
                    with _QUEUE:
                        _CACHE[key] = reply
                        while len(_CACHE) > CACHE_SIZE:
                            _CACHE.popitem(last=False)
        finally:
            _leave(took)
    if "error" in reply:
        raise ModelRejected(reply["error"])
    return reply["summary"]


def _cached(key: str) -> dict | None:
    """A remembered answer (a summary or a refusal: the same request gets the same answer)."""
    with _QUEUE:
        reply = _CACHE.get(key)
        if reply is not None:
            _CACHE.move_to_end(key)
        return reply
