"""Publishing wake-up messages. Failure to publish never loses a job: the sweeper publishes it again later."""

from __future__ import annotations

import logging
import uuid
from functools import cached_property

from celery import Celery

from core.jobs.states import VALIDATION_QUEUE
from core.settings import Settings
from workers.app import make_celery

log = logging.getLogger(__name__)

RUN_JOB_TASK = "gradlab.run_job"
VALIDATE_DATASET_TASK = "gradlab.validate_dataset"


def publish(app: Celery, job_id: uuid.UUID | str, queue: str, task: str = RUN_JOB_TASK) -> bool:
    try:
        app.send_task(
            task,
            args=[str(job_id)],
            queue=queue,
            retry=True,
            retry_policy={"max_retries": 1, "interval_start": 0, "interval_step": 0.2},
        )
        return True
    except Exception as exc:  # any broker failure: the job stays queued in the database
        log.warning("publishing %s %s to %s failed (%s); the sweeper will publish it again", task, job_id, queue, exc)
        return False


class Publisher:
    """The API's side of the broker: a Celery app made on the first publish or readiness check, not at start-up
    (no broker folders or connections for a process that never publishes). Two requests racing to make it may
    make two; one is kept, which is harmless."""

    def __init__(self, settings: Settings):
        self.settings = settings

    @cached_property
    def app(self) -> Celery:
        return make_celery(self.settings)

    def publish(self, job_id: uuid.UUID | str, queue: str) -> bool:
        return publish(self.app, job_id, queue)

    def publish_validation(self, dataset_id: uuid.UUID | str) -> bool:
        return publish(self.app, dataset_id, VALIDATION_QUEUE, VALIDATE_DATASET_TASK)
