"""What queued and running jobs hold: a stored model or an uploaded dataset one of them names is not deleted under
it.

A job names a model in ``params.model`` (and exported ones in ``encoder``, ``decoder``, ``critic``, ``generator``):
``{"source": "uploaded" | "exported", "id": ...}``, or an ``hf_config`` whose ``weights`` are a stored model's; it
names a dataset by its id anywhere else in its params (a study's children are jobs like any other). The check and the
delete are two statements: a job admitted between them fails when its worker finds the model or dataset gone
("... not found").
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session

from core.datasets import service as datasets
from core.errors import Conflict
from core.jobs import repository as jobs
from core.keys.repository import Principal
from core.networks import service as networks
from core.networks.spec import MODEL_FIELDS
from core.settings import Settings


def models_named(params: dict[str, Any]) -> set[str]:
    """The stored model ids a job's params (as stored, JSON) name, in any of ``MODEL_FIELDS``."""
    found = set()
    for field in MODEL_FIELDS:
        model = params.get(field)
        if isinstance(model, dict):
            named = model.get("weights") if model.get("source") == "hf_config" else model.get("id")
            if isinstance(named, str):
                found.add(named)
    return found


def delete_model(session: Session, settings: Settings, who: Principal, model_id: uuid.UUID) -> None:
    """Delete a model the caller may see, with its bytes; ``Conflict`` naming a queued or running job that uses
    it."""
    row = networks.model_of(session, who, model_id)
    _refuse_while_used(session, row.tenant, "model", model_id, models_named)
    networks.delete_model(session, settings, row)


def datasets_named(params: dict[str, Any]) -> set[str]:
    """The uploaded dataset ids a job's params (as stored, JSON) name: every UUID string outside ``MODEL_FIELDS``,
    whose ids are models'. Walked without recursion."""
    found: set[str] = set()
    stack: list[Any] = [v for k, v in params.items() if k not in MODEL_FIELDS]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
        elif isinstance(value, str) and len(value) == 36:
            try:
                found.add(str(uuid.UUID(value)))
            except ValueError:
                pass
    return found


def delete_dataset(session: Session, settings: Settings, who: Principal, dataset_id: uuid.UUID) -> None:
    """Delete a dataset the caller may see, with its bytes; ``Conflict`` naming a queued or running job that uses
    it (or while a worker validates it)."""
    ds = datasets.dataset_of(session, who, dataset_id)
    _refuse_while_used(session, ds.tenant, "dataset", dataset_id, datasets_named)
    datasets.delete_dataset(session, settings, ds)


def _refuse_while_used(
    session: Session, tenant: str, what: str, rid: uuid.UUID, named: Callable[[dict[str, Any]], set[str]]
) -> None:
    """``Conflict`` naming the first queued or running job of ``tenant`` whose params name ``rid``."""
    for job_id, params in jobs.active_params(session, tenant):
        if str(rid) in named(params):
            raise Conflict(
                f"{what} {rid} is used by job {job_id}, which is queued or running; cancel it or wait for it to finish"
            )
