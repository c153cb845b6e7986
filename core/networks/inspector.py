"""The API's way to inspect a model without loading torch: ``core.networks.meta_summary`` in a child process.

One long-lived child per API process answers one request at a time (torch and transformers are imported once,
there); it is started on first use, replaced when it dies or overruns a request's time limit, and recycled after
``RECYCLE_AFTER`` requests. Answers are remembered per process.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path
from threading import Lock

ROOT = Path(__file__).resolve().parents[2]
CACHE_SIZE = 256
RECYCLE_AFTER = 500


class ModelRejected(ValueError):
    """The model cannot be built as asked; the message names the field and the reason."""


class InspectionFailed(RuntimeError):
    """The inspector itself failed (timeout, crash): not the user's fault."""


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

    def ask(self, request: str, timeout_s: float) -> dict:
        if self.proc is None or self.proc.poll() is not None or self.served >= RECYCLE_AFTER:
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


def inspect_model(
    model: dict, *, input: dict | None = None, weights_header: dict | None = None, timeout_s: float = 120.0
) -> dict:
    """Summary of ``model`` (a builtin or hf_config spec as JSON): task, n_params, layers and, with ``input``
    ({batch, seq_len, features, classes}), the activation bytes of one micro-batch."""
    request = json.dumps({"model": model, "input": input, "weights_header": weights_header}, sort_keys=True)
    with _LOCK:
        if request in _CACHE:
            _CACHE.move_to_end(request)
            return _CACHE[request]
        reply = _CHILD.ask(request, timeout_s)
        if "error" in reply:
            raise ModelRejected(reply["error"])
        _CACHE[request] = reply["summary"]
        while len(_CACHE) > CACHE_SIZE:
            _CACHE.popitem(last=False)
        return reply["summary"]
