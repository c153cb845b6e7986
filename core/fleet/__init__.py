"""The fleet: worker processes, the queues they consume, and how long a queued job will wait."""
