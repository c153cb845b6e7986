"""The API's way to inspect a model without loading torch: ``core.models.inspect`` in a child process.

One child per distinct request (answers are remembered per process): importing torch and transformers costs a few
seconds there and nothing in the API process, whose import stays torch-free.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path
from threading import Lock

ROOT = Path(__file__).resolve().parents[2]
REJECTED = 3
_CACHE: OrderedDict[str, dict] = OrderedDict()
_CACHE_SIZE = 256
_LOCK = Lock()


class ModelRejected(ValueError):
    """The model cannot be built as asked; the message names the field and the reason."""


class InspectionFailed(RuntimeError):
    """The inspector itself failed (timeout, crash): not the user's fault."""


def inspect_model(model: dict, *, input: dict | None = None, weights_header: dict | None = None,
                  timeout_s: float = 120.0) -> dict:
    """Summary of ``model`` (a builtin or hf_config spec as JSON): task, n_params, layers and, with ``input``
    ({batch, seq_len, features, classes}), the activation bytes of one micro-batch."""
    request = json.dumps({"model": model, "input": input, "weights_header": weights_header}, sort_keys=True)
    with _LOCK:
        if request in _CACHE:
            _CACHE.move_to_end(request)
            return _CACHE[request]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1", "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_OFFLINE": "1"}
    try:
        proc = subprocess.run([sys.executable, "-m", "core.models.inspect"], input=request, capture_output=True,
                              text=True, timeout=timeout_s, env=env, cwd=ROOT)
    except subprocess.TimeoutExpired:
        raise InspectionFailed(f"inspecting the model took more than {timeout_s:g} s") from None
    if proc.returncode == REJECTED:
        raise ModelRejected(json.loads(proc.stdout)["error"])
    if proc.returncode != 0:
        raise InspectionFailed(f"the model inspector exited with {proc.returncode}: {proc.stderr[-500:]}")
    answer = json.loads(proc.stdout)
    with _LOCK:
        _CACHE[request] = answer
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return answer
