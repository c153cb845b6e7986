"""The RunContext a worker hands to a technique: buffered metrics, heartbeats and cancellation, backed by SQL.

A background thread does all periodic database work (heartbeat, progress, metric batches) and learns from the
same compare-and-set whether the job was cancelled or taken away, so ``check_cancelled`` costs no I/O. It runs from
the claim on, and it is also the job's hard deadline: a technique that has not stopped ``stop_grace_s`` after its
``timeout_s`` (the job is then failed as ``timeout``), or after it was cancelled or taken away, never checks in
again, so ``on_hung`` is called to end the process that runs it.

``finish`` is the one place a worker writes a job's final status (the runner's outcomes and the deadline's).
A model or dataset is loaded only when it belongs to the job's tenant (``ForeignResource`` otherwise): admission
checks it, and the worker checks again, so a job row that names another tenant's upload never reads it.
"""

from __future__ import annotations

import collections
import contextvars
import logging
import math
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import torch
from sqlalchemy.orm import sessionmaker

from core.blobs import blob_store
from core.blobs.layout import artifact_key, dataset_file_key, model_file_key
from core.blobs.store import BlobStore
from core.data.loader import DatasetView, open_dataset
from core.datasets import repository as datasets
from core.jobs import repository as jobs
from core.jobs.states import JobStatus
from core.networks import repository as networks
from core.networks.stored import ModelFiles, archive_limits
from core.renders import Recipe
from core.settings import Settings
from core.techniques.base import ForeignResource, JobCancelled, JobTimedOut
from workers.retry import retrying
from workers.telemetry import rows_ingested

log = logging.getLogger(__name__)


def _cached(blobs: BlobStore, key: str, path: Path) -> Path:
    """A blob downloaded to ``path`` once (canonical files never change), atomically, so a worker killed mid-way
    leaves no half file that a later job would read."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        part = path.with_name(f".{path.name}.{os.getpid()}.part")
        with blobs.open(key) as src, open(part, "wb") as sink:
            shutil.copyfileobj(src, sink, 1024 * 1024)
        os.replace(part, path)
    return path


class JobLost(Exception):
    """The job is no longer this attempt's (the sweeper re-queued it, or it finished elsewhere)."""


class DbRunContext:
    def __init__(
        self,
        sessions: sessionmaker,
        settings: Settings,
        job_id: uuid.UUID,
        attempt: int,
        tenant: str,
        seed: int,
        timeout_s: float,
        on_hung: Callable[[str], None],
    ):
        self.sessions = sessions
        self.settings = settings
        self.job_id = job_id
        self.attempt = attempt
        self.tenant = tenant
        self.seed = seed
        self.device = torch.device("cpu")  # the runner sets the job's device once it has picked it
        self.timeout_s = timeout_s
        self._on_hung = on_hung
        self._started = time.monotonic()
        self._stop_seen_at: float | None = None
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()  # commits in row order, so metric ids follow logging order
        # appended by the job's thread, taken from the left by the writer: deque ends are thread-safe, so a logged
        # row costs no lock
        self._rows: collections.deque[tuple[int, str, float | None]] = collections.deque()
        self._progress: tuple[float, str] | None = None
        self._recipes: list[dict] = []  # artifact rows of recipes not written yet (taken by the writer)
        self._stopped_by: type[Exception] | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()  # set with _stop, or when a full batch of rows waits
        # in a copy of the job's context, so that its log lines carry the job's fields
        self._thread = threading.Thread(
            target=contextvars.copy_context().run, args=(self._beat_loop,), name=f"heartbeat-{job_id}", daemon=True
        )

    # --- RunContext -------------------------------------------------------------------------------------------
    def progress(self, fraction: float, message: str = "") -> None:
        with self._lock:
            self._progress = (min(max(float(fraction), 0.0), 1.0), message[:500])

    def metric(self, step: int, name: str, value: float) -> None:
        v = float(value)
        self._rows.append((int(step), name[:128], v if math.isfinite(v) else None))
        backlog = len(self._rows)
        if backlog == self.settings.metric_flush_rows:
            self._wake.set()  # a full batch: the heartbeat thread writes it now, not at its next tick
        elif backlog >= 20 * self.settings.metric_flush_rows:
            self.flush()  # back-pressure: a technique logging faster than the database takes rows waits here

    def artifact(self, name: str, data: bytes | Recipe, media_type: str) -> None:
        """Store the bytes, then their row. A recipe is only a row, rendered when first asked for: it is written
        with the next heartbeat or the job's last flush (no transaction of its own)."""
        if isinstance(data, Recipe):
            row = dict(name=name, media_type=media_type, size=0, sha256="", recipe=data.as_json())
            with self._lock:
                self._recipes.append({**row, "location": artifact_key(self.job_id, self.attempt, name)})
            self.check_cancelled()
            return
        if len(data) > self.settings.max_artifact_bytes:
            raise ValueError(f"artifact {name!r} is {len(data)} bytes, over the {self.settings.max_artifact_bytes} cap")
        blobs, key = blob_store(self.settings), artifact_key(self.job_id, self.attempt, name)
        info = blobs.put(key, [data])  # bytes first: a row never names a missing blob

        def write() -> bool:
            with self.sessions() as s:
                return jobs.put_artifact(
                    s,
                    self.job_id,
                    self.attempt,
                    name,
                    media_type=media_type,
                    size=info.size,
                    sha256=info.sha256,
                    location=key,
                )

        if not retrying(write):
            blobs.delete(key)
            self._learn_why_not_ours()
        self.check_cancelled()

    def check_cancelled(self) -> None:
        if self._stopped_by is not None:
            raise self._stopped_by(f"job {self.job_id} stopped")
        if time.monotonic() - self._started > self.timeout_s:
            raise JobTimedOut(f"job ran past its timeout_s={self.timeout_s:g}")

    def load_dataset(self, dataset_id: str) -> DatasetView:
        """The dataset's canonical files, memory-mapped (``core.data.loader``): the store's own files for a
        directory store, else downloaded once into a cache under the data dir."""

        def ready():
            with self.sessions() as s:
                return datasets.ready_dataset(s, uuid.UUID(dataset_id))

        row = retrying(ready)
        if row is not None and row.tenant != self.tenant:
            raise ForeignResource(
                f"dataset {dataset_id} is not a dataset of tenant {self.tenant}; the job may not read it"
            )
        if row is None:
            raise LookupError(f"dataset {dataset_id} not found or not ready")
        blobs = blob_store(self.settings)
        cache = self.settings.data_dir / "dataset-cache" / dataset_id
        files = {}
        for name in row.files:
            key = dataset_file_key(row.id, name)
            files[name] = blobs.local_path(key) or _cached(blobs, key, cache / name)
        meta = {
            "kind": row.kind,
            "format": row.format,
            "rows": row.rows,
            "columns": row.columns,
            "has_labels": row.has_labels,
            "preview": row.preview,
        }
        return open_dataset(files, meta)

    def load_model(self, model_id: str) -> ModelFiles:
        """A stored model of the job's tenant: its config and its files on local disk, opened in place by the
        loaders (memory-mapped): the directory store's own files, or copies cached under the data dir when the
        store is S3."""

        def read():
            with self.sessions() as s:
                return networks.model_meta(s, uuid.UUID(model_id))

        row = retrying(read)
        if row is None:
            raise LookupError(f"model {model_id} not found")
        if row.tenant != self.tenant:
            raise ForeignResource(f"model {model_id} is not a model of tenant {self.tenant}; the job may not load it")
        blobs = blob_store(self.settings)
        cache = self.settings.data_dir / "model-cache" / model_id
        paths = {}
        for name in (f["name"] for f in row.files or []):
            if name.lower().endswith((".safetensors", ".pt2")):  # the config is the row's; the index was checked
                key = model_file_key(row.id, name)
                paths[name] = blobs.local_path(key) or _cached(blobs, key, cache / name)
        return ModelFiles(
            model_id=model_id,
            format=row.format,
            config=row.config,
            weights=tuple(p for name, p in paths.items() if name.lower().endswith(".safetensors")),
            archive=next((p for name, p in paths.items() if name.lower().endswith(".pt2")), None),
            limits=archive_limits(self.settings.max_model_bytes),
        )

    def check_resources(self, dataset_ids: list[str], model_ids: list[str]) -> None:
        """``ForeignResource`` when any of these uploaded datasets or models is another tenant's (read before the
        technique starts, so such a job fails without running)."""

        def owners():
            with self.sessions() as s:
                found = datasets.dataset_infos(s, [uuid.UUID(d) for d in dataset_ids]) if dataset_ids else {}
                metas = [networks.model_meta(s, uuid.UUID(m)) for m in model_ids]
            return [("dataset", str(i), tenant) for i, (tenant, _) in found.items()] + [
                ("model", str(m.id), m.tenant) for m in metas if m is not None
            ]

        for what, rid, tenant in retrying(owners):
            if tenant != self.tenant:
                raise ForeignResource(f"{what} {rid} is not a {what} of tenant {self.tenant}; the job may not use it")

    # --- lifecycle --------------------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop the heartbeat thread (idempotent)."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()

    def close(self) -> None:
        """Stop the heartbeat thread and write what is still buffered (raises JobLost/JobCancelled if not ours)."""
        self.stop()
        retrying(self.flush)

    def finish(
        self,
        status: JobStatus,
        *,
        retry: bool = True,
        result: dict | None = None,
        error_type: str | None = None,
        error_message: str | None = None,
    ) -> bool:
        """Write the job's final status, for this attempt only (False: the job is no longer ours); ``retry``: wait
        out a database outage first."""

        def write() -> bool:
            with self.sessions() as s:
                return jobs.finish(
                    s,
                    self.job_id,
                    self.attempt,
                    status,
                    result=result,
                    error_type=error_type,
                    error_message=error_message,
                )

        return retrying(write) if retry else write()

    def flush(self) -> None:
        with self._write_lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        take = self._rows.popleft
        rows = [take() for _ in range(len(self._rows))]
        with self._lock:
            progress, self._progress = self._progress, None
            recipes, self._recipes = self._recipes, []
        try:
            with self.sessions() as s:
                ok = jobs.beat(
                    s,
                    self.job_id,
                    self.attempt,
                    progress[0] if progress else None,
                    progress[1] if progress else None,
                    rows,
                    recipes,
                )
        except Exception:
            self._rows.extendleft(reversed(rows))  # keep the rows for the next try, in their order
            with self._lock:
                self._progress = self._progress or progress
                self._recipes[:0] = recipes
            raise
        if ok:
            rows_ingested(len(rows))
        else:
            self._learn_why_not_ours()
            self.check_cancelled()

    def _learn_why_not_ours(self) -> None:
        with self.sessions() as s:
            state = jobs.status_of(s, self.job_id)
        if state is not None and state[0] == JobStatus.cancelled:
            self._stopped_by = JobCancelled
        else:
            self._stopped_by = JobLost

    def _beat_loop(self) -> None:
        interval = min(self.settings.heartbeat_interval_s, self.settings.metric_flush_interval_s)
        while True:
            self._wake.wait(interval)
            if self._stop.is_set():
                return
            self._wake.clear()
            if self._stopped_by is None:
                try:
                    self.flush()
                except (JobCancelled, JobLost, JobTimedOut):
                    pass  # the job's thread learns it at its next check-in; the deadline below waits for that
                except Exception as exc:  # the database is briefly unreachable: keep beating, rows stay buffered
                    log.warning("heartbeat for job %s failed: %s", self.job_id, exc)
            reason = self._past_deadline()
            if reason is not None and not self._stop.is_set():
                self._on_hung(reason)
                return

    def _past_deadline(self) -> str | None:
        """Why the job's thread must be given up on, or None while it may still stop by itself."""
        now, grace = time.monotonic(), self.settings.stop_grace_s
        if self._stopped_by is not None:
            self._stop_seen_at = self._stop_seen_at or now
            if now - self._stop_seen_at <= grace:
                return None
            why = "was cancelled" if self._stopped_by is JobCancelled else "was taken away from this worker"
            return f"job {self.job_id} {why} and did not stop within {grace:g}s"
        if now - self._started <= self.timeout_s + grace:
            return None
        message = (
            f"job ran past its timeout_s={self.timeout_s:g} and did not stop within {grace:g}s more; "
            f"its worker process was restarted"
        )
        try:
            self.flush()
            self.finish(JobStatus.failed, retry=False, error_type="timeout", error_message=message)
        except Exception as exc:  # not ours any more, or no database: the sweeper settles the row
            log.warning("could not record the timeout of job %s: %s", self.job_id, exc)
        return f"job {self.job_id} {message}"
