"""The worker's logging: gradlab's format (``GRADLAB_LOG_FORMAT``) for every logger, Celery's included, and the
job id on Celery's own "Task ... received" line, which is written before the task (and its log context) starts."""

from __future__ import annotations

import logging
import re

from celery.signals import setup_logging

from core import logs
from workers import process
from workers.publish import RUN_JOB_TASK

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class ReceivedJobId(logging.Filter):
    """Celery logs a received task with its arguments in ``record.data``; a run_job task's only argument is the
    job id."""

    def filter(self, record: logging.LogRecord) -> bool:
        data = getattr(record, "data", None)
        if isinstance(data, dict) and data.get("name") == RUN_JOB_TASK and not hasattr(record, "job_id"):
            found = _UUID.search(str(data.get("args", "")))
            if found:
                record.job_id, record.worker = found.group(0), process.WORKER_NAME
        return True


@setup_logging.connect
def _configure(loglevel=None, **_):
    """Connected, so Celery leaves logging to us."""
    logs.configure(process.settings().log_format, loglevel or logging.INFO)
    for handler in logging.getLogger().handlers:
        handler.addFilter(ReceivedJobId())
