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

# Lanes: dataset validations and quick jobs never wait behind long training jobs, because they have queues of their
# own that a worker can be kept for (``gradlab up`` and docker-compose.yml run one that consumes only these two).
QUICK_QUEUE = "quick"
VALIDATION_QUEUE = "validation"
LANE_QUEUES = (QUICK_QUEUE, VALIDATION_QUEUE)


def queue_for(device: str, timeout_s: float, quick_max_s: float) -> str:
    """The queue a new job goes to: the quick lane when its time budget (``timeout_s``: it is stopped past it) is at
    most ``quick_max_s`` and any CPU may run it; else its device's queue."""
    if device != "cuda" and timeout_s <= quick_max_s:
        return QUICK_QUEUE
    return QUEUE_FOR_DEVICE[device]


MAX_SEED = 2**63 - 1  # a job's seed is a BIGINT
