"""A worker's row in the ``workers`` table: who it is, what it consumes, its device, its last beat and counters.

A thread registers the row when the worker is ready, beats every ``heartbeat_interval_s`` and removes the row
when the worker stops; a killed worker's row stays with its last beat, so ``GET /v1/workers`` leaves it out and
the ``gradlab_worker_heartbeat_age_seconds`` metric shows it going silent. Rows silent for a day are forgotten.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from datetime import timedelta

import torch
from sqlalchemy.orm import sessionmaker

from core.db.tables import utcnow
from core.fleet import repository as fleet
from core.settings import Settings
from workers import telemetry

log = logging.getLogger(__name__)
FORGET_AFTER = timedelta(days=1)


def describe_device() -> dict:
    """The device jobs run on here: the GPU's name and memory when CUDA is available, else the CPU threads."""
    if torch.cuda.is_available():
        index = torch.cuda.current_device()
        free, total = torch.cuda.mem_get_info(index)
        return {
            "type": "cuda",
            "name": torch.cuda.get_device_name(index),
            "count": torch.cuda.device_count(),
            "memory_total_bytes": total,
            "memory_free_bytes": free,
        }
    return {"type": "cpu", "threads": torch.get_num_threads()}


class Presence(threading.Thread):
    def __init__(self, sessions: sessionmaker, settings: Settings, name: str, queues: list[str]):
        super().__init__(name="gradlab-presence", daemon=True)
        self.sessions, self.settings, self.worker, self.queues = sessions, settings, name, queues
        self.stopping = threading.Event()

    def _register(self) -> None:
        with self.sessions() as s:
            fleet.register_worker(
                s,
                name=self.worker,
                host=socket.gethostname(),
                pid=os.getpid(),
                queues=self.queues,
                device=describe_device(),
                forget_before=utcnow() - FORGET_AFTER,
            )

    def _beat(self) -> None:
        with self.sessions() as s:
            alive = fleet.worker_beat(s, self.worker, describe_device(), telemetry.snapshot())
        if not alive:
            self._register()

    def run(self) -> None:
        step = self._register
        while True:
            try:
                step()
                step = self._beat
            except Exception as exc:  # database down: try again at the next beat
                log.warning("worker presence update failed: %s", exc)
            if self.stopping.wait(self.settings.heartbeat_interval_s):
                return

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=5)
        try:
            with self.sessions() as s:
                fleet.unregister_worker(s, self.worker)
        except Exception as exc:
            log.warning("could not remove this worker's row: %s", exc)
