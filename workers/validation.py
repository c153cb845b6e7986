"""Validating an uploaded dataset in a worker: claim it, convert its raw upload into canonical files
(``core.data.ingest``), and settle it ``ready`` or ``rejected`` (with the field-naming reason).

A thread beats for the claim while the conversion runs (a big CSV takes a while), so the sweeper tells a slow
validation from one whose worker died; a dead one is released and published again, up to ``max_attempts``. Every
transition is a compare-and-set on the attempt that claimed it, so a duplicate message or a late worker changes
nothing.
"""

from __future__ import annotations

import logging
import uuid

from sqlalchemy.orm import sessionmaker

from core.blobs import blob_store
from core.blobs.layout import dataset_raw_key, upload_partial_key
from core.data.formats import UploadRejected
from core.data.ingest import ingest
from core.datasets import repository as datasets
from core.datasets.service import beating, drop_upload_leftovers
from core.db.tables import utcnow
from core.settings import Settings
from workers.retry import retrying

log = logging.getLogger(__name__)


def validate_dataset(sessions: sessionmaker, settings: Settings, dataset_id: str, worker: str) -> str:
    """Validate dataset ``dataset_id`` if it can be claimed; returns what happened (for logs and tests)."""
    ds_id = uuid.UUID(dataset_id)

    def claim():
        with sessions() as s:
            return datasets.claim_validation(s, ds_id, worker, utcnow())

    claimed = retrying(claim)
    if claimed is None:
        return "not-claimed"
    log.info("dataset %s: validating %s (attempt %d)", ds_id, claimed.filename, claimed.attempt)
    blobs = blob_store(settings)
    try:
        if claimed.upload_id is not None and blobs.partial_size(upload_partial_key(claimed.upload_id)):
            blobs.finish_partial(upload_partial_key(claimed.upload_id), dataset_raw_key(ds_id))
        if not blobs.exists(dataset_raw_key(ds_id)):
            raise UploadRejected("file: the upload's bytes are gone (its API process died before storing them)")
        with beating(sessions, settings.heartbeat_interval_s, ds_id, worker, claimed.attempt):
            found = ingest(
                blobs,
                ds_id,
                filename=claimed.filename,
                label_column=claimed.label_column,
                has_tokenizer=claimed.has_tokenizer,
                declared_sha256=claimed.declared_sha256,
                max_stored_bytes=settings.max_dataset_bytes,
                work_dir=settings.data_dir / "ingest" / f"{ds_id}-{claimed.attempt}",
            )
        outcome = found
    except UploadRejected as exc:
        outcome = {"reason": str(exc)[:2000]}
    except Exception as exc:  # a bug or a broken store: the dataset is refused with why, never left validating
        log.exception("dataset %s: validation failed", ds_id)
        outcome = {"reason": f"file: could not be validated ({type(exc).__name__}: {str(exc)[:500]})"}

    def finish() -> bool:
        with sessions() as s:
            return datasets.finish_validation(s, ds_id, worker, claimed.attempt, **outcome)

    if not retrying(finish):
        log.warning("dataset %s: attempt %d was taken away from this worker", ds_id, claimed.attempt)
        return "lost"
    drop_upload_leftovers(blobs, ds_id, claimed.upload_id)  # the canonical files are what jobs read
    status = "rejected" if "reason" in outcome else "ready"
    log.info("dataset %s: %s%s", ds_id, status, f" ({outcome['reason']})" if status == "rejected" else "")
    return status
