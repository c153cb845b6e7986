"""Job states and the transitions the jobs repository is allowed to make.

queued -> running -> succeeded | failed | cancelled; running -> queued only by the sweeper (a retry, counted in
``attempt``); queued -> cancelled by the user. Terminal states are final.
"""

from enum import StrEnum


class JobStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled})

QUEUE_FOR_DEVICE = {"cpu": "cpu", "cuda": "gpu", "auto": "auto"}

MAX_SEED = 2**63 - 1  # a job's seed is a BIGINT
