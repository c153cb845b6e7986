"""Whether the uploaded datasets a job names can serve it, decided before queueing from their rows (one query, no
data read): each must exist, belong to the caller's tenant, be ``ready`` (not still validating, not rejected), and
be what the kind's params need of it (``KindSpec.dataset_needs``: its dataset kind, labels, square rows)."""

from __future__ import annotations

import uuid

from sqlalchemy.orm import Session

from api.auth import owns
from api.deps import parse_id
from api.problems import Problem
from core.data import uploaded_dataset_ids
from core.data.needs import dataset_refusal
from core.jobs import repository as store
from core.keys.repository import Principal
from core.techniques import specs


def check_datasets(session: Session, who: Principal, kind: str, params, field: str) -> None:
    """A 422 on ``field`` (``params.dataset`` for a job, ``base.dataset`` for a study) naming the first dataset the
    params name that cannot serve this kind, and why; nothing when all can."""
    named = uploaded_dataset_ids(params)
    if not named:
        return
    needs = specs()[kind].dataset_needs(params)
    found = store.dataset_infos(session, [parse_id(ds, "dataset") for ds in named])
    for ds in named:
        tenant, info = found.get(uuid.UUID(ds), (None, None))
        if info is None or tenant is None or not owns(who, tenant):
            why, error = f"dataset {ds} not found", "not_found"
        elif info.status == "rejected":
            why, error = f"dataset {ds} was rejected: {info.reason}", "dataset_rejected"
        elif info.status != "ready":
            why, error = f"dataset {ds} is not ready yet ({info.status})", "dataset_not_ready"
        elif (refused := dataset_refusal(needs, info, ds)) is not None:
            why, error = refused, "wrong_dataset"
        else:
            continue
        raise Problem(422, f"{field}: {why}", errors=[{"field": field, "message": why, "type": error}])
