"""The ``hang`` kind's run: blocks forever in one call that never checks in, as a technique stuck in one long
operation would. Importing this module takes ``HANG_KIND_IMPORT_DELAY_S`` seconds (default 0), as a heavy first
import (torch, matplotlib's font cache) can on a loaded machine."""

from __future__ import annotations

import os
import threading
import time

time.sleep(float(os.environ.get("HANG_KIND_IMPORT_DELAY_S", "0")))


def run(params, ctx) -> dict:
    ctx.progress(0.5, "blocking")
    if params.block:
        threading.Event().wait()
    return {"blocked": False}
