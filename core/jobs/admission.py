"""Admission: what a job must pass before it is queued, whether it comes alone (``POST /v1/jobs``) or as a study's
child (``POST /v1/studies``): one path, so a study can never skip a check a job gets.

- every uploaded dataset it names is its tenant's, ``ready``, and what the kind needs of it;
- the model it names, and the weights an ``hf_config`` names, are stored models of its tenant, and the model builds
  (on the ``meta`` device, in the inspector process) and fits the memory of its queue's worker (in its run dtype);
  a token model's dataset holds ids its vocabulary has (the dataset's validation recorded their range);
  an exported program is its tenant's and the kind takes one;
- its tenant stays under its caps: queued plus running jobs, and submissions in the last ``RATE_WINDOW``.

Resources are matched against the job's tenant, not the caller's rights: an admin key reads every tenant's rows,
but a job runs with its own tenant's models and datasets only (the worker checks again when it loads them).
"""

from __future__ import annotations

import math
import uuid
from dataclasses import replace
from datetime import datetime, timedelta

from pydantic import BaseModel
from sqlalchemy.orm import Session

from core.datasets import repository as datasets
from core.datasets.service import check_datasets
from core.errors import Busy, Invalid, Unavailable
from core.jobs import repository as jobs
from core.jobs.states import QUEUE_FOR_DEVICE
from core.networks import repository as networks
from core.networks.budget import estimate, refusal
from core.networks.exported.roles import ROLES, sizes_refusal, step_bytes
from core.networks.exported.roles import refusal as role_refusal
from core.networks.inspector import InspectionFailed, InspectorBusy, ModelRejected, inspect_model
from core.networks.intake import inspector_busy
from core.networks.spec import MODEL_FIELDS, BuiltinModel, ExportedModel, HFConfigModel, UploadedModel
from core.settings import Settings
from core.techniques import specs

RATE_WINDOW = timedelta(seconds=60)
SEQUENCE_CLASSIFIER_KINDS = frozenset({"embedding_dim", "init_averaging", "contrastive_accumulation"})
"""Kinds that take a Hugging Face sequence classifier: they read its sizes or its initialisation, or pool its
encoder; the others train a language model's targets, which a classifier's head does not predict."""


def check_job(
    session: Session, settings: Settings, tenant: str, kind: str, params: BaseModel, device: str, prefix: str
) -> None:
    """Raise ``Invalid`` (on ``<prefix>.dataset`` or ``<prefix>.model``) or ``Unavailable`` unless a job of ``tenant``
    with these validated params may be queued; ``prefix``: ``params`` for a job, ``base`` for a study."""
    check_datasets(session, tenant, kind, params, f"{prefix}.dataset")
    _check_model(session, settings, tenant, kind, params, device, f"{prefix}.model")


def _model_refused(field: str, message: str) -> Invalid:
    return Invalid.of(field, message, "invalid_model")


def _stored(session: Session, tenant: str, model_id: uuid.UUID, field: str, what: str):
    """A stored model of ``tenant``; unknown ids, and other tenants', are refused alike."""
    row = networks.model_meta(session, model_id)
    if row is None or row.tenant != tenant:
        raise _model_refused(field, f"{what}: model {model_id} not found")
    return row


def _buildable(session: Session, tenant: str, model, field: str) -> tuple[dict, list | None]:
    """The spec as the inspector builds it, in float32 (a stored model becomes its config), and the tensors of the
    weights it names (None: its own initialisation)."""
    if isinstance(model, UploadedModel):
        row = _stored(session, tenant, model.id, field, "id")
        if row.config is None:
            raise _model_refused(
                field, f'id: model {model.id} is an exported program; name it as {{"source": "exported"}}'
            )
        return {"source": "hf_config", "config": row.config}, None
    buildable = model.model_dump(mode="json", exclude={"weights", "dtype"})
    if isinstance(model, HFConfigModel) and model.weights is not None:
        row = _stored(session, tenant, model.weights, field, "weights")
        if row.format not in ("safetensors", "sharded"):
            raise _model_refused(field, f"weights: model {model.weights} has no safetensors weights")
        return buildable, row.summary["layers"]
    return buildable, None


def _check_exported(
    session: Session, settings: Settings, tenant: str, kind: str, params: BaseModel, device: str, prefix: str
) -> None:
    """Each exported program the params name is the tenant's and plays its role (``roles.ROLES``); their widths
    agree with each other and an uploaded dataset's columns; and, all together, a step of them fits the queue's
    worker."""
    roles = {role.field: role for role in ROLES.get(kind, ())}
    needed = 0
    programs: dict[str, dict] = {}
    for name in MODEL_FIELDS:
        model = getattr(params, name, None)
        if not isinstance(model, ExportedModel):
            continue
        field = f"{prefix}.{name}"
        row = _stored(session, tenant, model.id, field, "id")
        if row.format != "exported":
            raise _model_refused(
                field, f'id: model {model.id} is not an exported program; name it as {{"source": "uploaded"}}'
            )
        if name not in roles:
            raise _model_refused(field, f"source: kind {kind} does not take an exported program")
        described = row.summary["exported"]
        why = role_refusal(roles[name], described)
        if why is not None:
            raise _model_refused(field, f"id: model {model.id}: {why}")
        needed += step_bytes(roles[name], described, params)
        programs[name] = described
    dataset = getattr(params, "dataset", None)
    columns = datasets.dataset_columns(session, dataset) if isinstance(dataset, uuid.UUID) else None
    disagree = sizes_refusal(programs, columns)
    if disagree is not None:
        raise _model_refused(f"{prefix}.{disagree[0]}", disagree[1])
    queue = QUEUE_FOR_DEVICE[device]
    capacity = settings.queue_memory_bytes(queue)
    if needed > capacity:
        raise _model_refused(
            f"{prefix}.{roles_named(params, roles)}",
            f"about {_size(needed)} needed (weights, gradients, Adam state and the graphs' values for one batch) "
            f"exceeds the {_size(capacity)} of a '{queue}' worker; lower the batch",
        )


def _size(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def roles_named(params: BaseModel, roles: dict) -> str:
    """The first field naming an exported program: where a refusal of them all is reported."""
    return next(name for name in roles if isinstance(getattr(params, name, None), ExportedModel))


def _check_model(
    session: Session, settings: Settings, tenant: str, kind: str, params: BaseModel, device: str, field: str
) -> None:
    """A job on a model is queued only when the model is its tenant's, builds, and its memory fits the queue's
    worker class."""
    if any(isinstance(getattr(params, name, None), ExportedModel) for name in MODEL_FIELDS):
        _check_exported(session, settings, tenant, kind, params, device, field.rsplit(".", 1)[0])
        return
    model = getattr(params, "model", None)
    if not isinstance(model, (BuiltinModel, HFConfigModel, UploadedModel)):
        return
    buildable, weight_layers = _buildable(session, tenant, model, field)
    spec = specs()[kind]
    dataset = getattr(params, "dataset", None)
    columns = datasets.dataset_columns(session, dataset) if isinstance(dataset, uuid.UUID) else None
    workload = spec.model_workload(params, columns) if spec.model_workload else None
    if workload is None and isinstance(model, BuiltinModel):
        return  # nothing to budget, and a built-in spec is fully checked by its own validation
    try:
        summary = inspect_model(
            buildable,
            input=workload.input() if workload else None,
            timeout_s=settings.inspect_timeout_s,
            max_waiting=settings.inspect_queue,
        )
    except ModelRejected as exc:
        raise _model_refused(field, str(exc)) from None
    except InspectorBusy as exc:
        raise inspector_busy(field, exc) from None
    except InspectionFailed as exc:
        raise Unavailable(f"{field}: could not be inspected now ({exc}); retry", headers={"Retry-After": "5"}) from None
    if summary["task"] == "sequence_classification" and kind not in SEQUENCE_CLASSIFIER_KINDS:
        raise _model_refused(
            field,
            f"task: kind {kind} trains a language model; this config builds a sequence classifier (set task to "
            f"causal_lm or masked_lm, or use one of {sorted(SEQUENCE_CLASSIFIER_KINDS)})",
        )
    if isinstance(dataset, uuid.UUID) and summary["sizes"] is not None:
        _check_token_ids(session, dataset, summary, field.rsplit(".", 1)[0] + ".dataset")
    if weight_layers is not None and weight_layers != summary["layers"]:
        assert isinstance(model, HFConfigModel)  # only an HF config names separate weights
        raise _model_refused(field, f"weights: the tensors of model {model.weights} do not match this config's")
    if workload is not None:
        if getattr(model, "dtype", "float32") == "bfloat16":
            workload = replace(workload, dtype_bytes=2)
        queue = QUEUE_FOR_DEVICE[device]
        why = refusal(
            estimate(summary["n_params"], summary["activation_bytes"], workload),
            queue,
            settings.queue_memory_bytes(queue),
        )
        if why is not None:
            raise _model_refused(field, why)


def _check_token_ids(session: Session, dataset: uuid.UUID, summary: dict, field: str) -> None:
    """A token model reads the dataset's values as ids: each in [0, vocabulary) — all of it for a causal LM or a
    classifier (GPT-2's last id, 50256, is its end-of-text), all but the last id for a masked LM (its mask token)."""
    recorded, ids = datasets.dataset_token_ids(session, dataset)
    if not recorded:
        return  # validated before the fact was kept: the run checks the ids as it reads them
    if ids is None:
        raise Invalid.of(field, f"dataset {dataset} holds values that are not whole numbers; a token model reads ids")
    vocab = summary["sizes"]["vocab"]
    usable = vocab - 1 if summary["task"] == "masked_lm" else vocab
    if ids["min"] < 0 or ids["max"] >= usable:
        why = " (the last id is the masked LM's mask token)" if usable < vocab else ""
        raise Invalid.of(
            field,
            f"dataset {dataset} holds token ids {ids['min']}..{ids['max']}; the model's vocabulary takes "
            f"0..{usable - 1}{why}",
            "token_out_of_vocabulary",
        )


def caps(settings: Settings, now: datetime, n: int = 1) -> jobs.Admission:
    """The tenant's caps on queued+running jobs and on submissions in the last RATE_WINDOW, as they stand for ``n``
    new jobs at once (a study's children)."""
    return jobs.Admission(
        active_cap=settings.max_active_jobs_per_tenant - n + 1,
        window_cap=settings.submissions_per_minute_per_tenant - n + 1,
        since=now - RATE_WINDOW,
    )


def check_batch(settings: Settings, n: int, field: str) -> None:
    """``Invalid`` on ``field`` when ``n`` jobs submitted at once exceed the tenant's caps by themselves."""
    cap, rate = settings.max_active_jobs_per_tenant, settings.submissions_per_minute_per_tenant
    if n > cap or n > rate:
        raise Invalid.of(
            field, f"the study's {n} jobs exceed the tenant's limits ({cap} active jobs, {rate} submissions a minute)"
        )


def busy(settings: Settings, tenant: str, use: jobs.Usage, now: datetime, study_jobs: int | None = None) -> Busy:
    """429 with Retry-After, naming the cap the tenant is at (``study_jobs``: the children of a study that asked to
    be admitted at once; None for a job alone)."""
    cap, rate = settings.max_active_jobs_per_tenant, settings.submissions_per_minute_per_tenant
    if use.window_filled_at is not None and not use.at_active_cap:
        wait = max(1, math.ceil((use.window_filled_at + RATE_WINDOW - now).total_seconds()))
        detail = (
            f"tenant {tenant} submitted {rate} jobs in the last minute (the limit)"
            if study_jobs is None
            else f"tenant {tenant}: {study_jobs} more jobs would pass the limit of {rate} submissions a minute"
        )
        return Busy(detail, headers={"Retry-After": str(wait)})
    detail = (
        f"tenant {tenant} has {cap} queued or running jobs (the limit); wait for some to finish"
        if study_jobs is None
        else f"tenant {tenant}: {study_jobs} more jobs would pass the limit of {cap} queued or running jobs"
    )
    return Busy(detail, headers={"Retry-After": "5"})
