"""Publishing wake-up messages. Failure to publish never loses a job: the sweeper publishes it again later."""
from __future__ import annotations

import logging
import uuid

from celery import Celery

log = logging.getLogger(__name__)

RUN_JOB_TASK = "gradlab.run_job"


def publish(app: Celery, job_id: uuid.UUID | str, queue: str) -> bool:
    try:
        app.send_task(RUN_JOB_TASK, args=[str(job_id)], queue=queue, retry=True,
                      retry_policy={"max_retries": 1, "interval_start": 0, "interval_step": 0.2})
        return True
    except Exception as exc:  # any broker failure: the job stays queued in the database
        log.warning("publishing job %s to %s failed (%s); the sweeper will publish it again", job_id, queue, exc)
        return False
