"""Ending a job that does not stop: the worker process replaces itself with a fresh copy of its own command.

With the solo pool the job runs in the worker process, in a thread that nothing can interrupt from outside
(Python threads cannot be killed, and a CUDA kernel or a long C call ignores exceptions). Replacing the process
image (exec) is the one way to stop it that also releases everything it held, its CUDA context included, and it
keeps the process id, so a supervisor or ``gradlab up`` sees one worker that carries on. The job's message stays
unacknowledged; when the broker delivers it again its claim is a no-op, since the job is finished.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import NoReturn

log = logging.getLogger(__name__)


def restart_worker_process(reason: str) -> NoReturn:
    log.critical("%s: restarting this worker process", reason)
    logging.shutdown()  # flush every log handler: nothing survives the exec
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
