"""Whether the uploaded dataset a job names can serve it, decided before queueing from the dataset's row: it must
exist, belong to the caller's tenant, and be what the kind's params need (``KindSpec.dataset_needs``)."""

from __future__ import annotations

from sqlalchemy.orm import Session

from api.auth import owns
from api.deps import parse_id
from core.data import uploaded_dataset_ids
from core.data.needs import dataset_refusal
from core.jobs import store
from core.jobs.keys import Principal
from core.techniques import specs


def dataset_refusal_for(session: Session, who: Principal, kind: str, params) -> tuple[str, str] | None:
    """(reason, error type) when the params name an uploaded dataset that is missing, another tenant's, or not
    what the kind needs of it (its dataset kind, labels, square rows), judged from its row; None when fine."""
    needs = specs()[kind].dataset_needs(params)
    for ds in uploaded_dataset_ids(params):
        found = store.dataset_info(session, parse_id(ds, "dataset"))
        if found is None or not owns(who, found[0]):
            return f"dataset {ds} not found", "not_found"
        why = dataset_refusal(needs, found[1], ds)
        if why is not None:
            return why, "wrong_dataset"
    return None
