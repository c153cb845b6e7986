"""The list queries on both backends: datasets paged newest first and filtered; a study's status filter agrees
with the status a study reads (``stats.status``) for every combination of its children's states; a waiting
validation's place in line."""

from __future__ import annotations

import itertools
import uuid
from datetime import timedelta

from sqlalchemy import update

from core.datasets import repository as datasets
from core.db.tables import Dataset, Job, utcnow
from core.studies import repository as studies
from core.studies import stats

T0 = utcnow() - timedelta(days=1)


def _dataset(session, tenant: str, i: int, status: str, fmt: str, **extra) -> uuid.UUID:
    ds_id = uuid.uuid4()
    datasets.add_dataset(
        session,
        Dataset(
            id=ds_id,
            tenant=tenant,
            filename=f"d{i}.{fmt}",
            status=status,
            format=fmt,
            upload_size=10,
            location=f"datasets/{ds_id}",
            created_at=T0 + timedelta(seconds=i),
            **extra,
        ),
    )
    return ds_id


def _all(list_page, **query) -> list:
    rows, cursor = [], None
    while True:
        page, cursor = list_page(cursor=cursor, **query)
        rows += page
        if cursor is None:
            return rows


def test_datasets_page_newest_first_by_status_and_format(sessions):
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    with sessions() as s:
        made = [
            (_dataset(s, tenant, i, status, fmt), status, fmt)
            for i, (status, fmt) in enumerate(
                list(itertools.product(["ready", "uploading", "rejected"], ["csv", "npz"])) * 2
            )
        ]
        other = _dataset(s, "someone-else", 100, "ready", "csv")

        def listed(**query):
            return [d.id for d in _all(datasets.list_datasets, session=s, limit=2, **query)]

        assert listed(tenant=tenant, status=None, fmt=None) == [d for d, _, _ in made][::-1]
        for status, fmt in itertools.product([None, "ready", "uploading"], [None, "csv"]):
            want = [d for d, st, f in made if status in (None, st) and fmt in (None, f)][::-1]
            assert listed(tenant=tenant, status=status, fmt=fmt) == want
        everyone = listed(tenant=None, status="ready", fmt="csv")
        assert everyone[0] == other and set(everyone) >= {d for d, st, f in made if (st, f) == ("ready", "csv")}


def test_a_waiting_validation_knows_how_many_wait_before_it(sessions):
    with sessions() as s:
        waiting = [_dataset(s, "t", 200 + i, "validating", "csv") for i in range(3)]
        claimed = _dataset(s, "t", 199, "validating", "csv", validation_worker="w1")
        places = [datasets.validation_place(s, datasets.get_dataset(s, d)) for d in waiting]
        assert places[1] - places[0] == 1 and places[2] - places[1] == 1  # a claimed one waits no more
        assert datasets.validation_place(s, datasets.get_dataset(s, claimed)) is None
        ready = _dataset(s, "t", 300, "ready", "csv")
        assert datasets.validation_place(s, datasets.get_dataset(s, ready)) is None


STATES = ["queued", "running", "succeeded", "failed", "cancelled"]


def test_the_study_status_filter_is_the_status_a_study_reads(sessions):
    """Every pair of children's states, with and without a cancelled study: the filter finds exactly the studies
    whose status (read from their children) is the one asked for."""
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    expected: dict[str, list[uuid.UUID]] = {state: [] for state in STATES}
    with sessions() as s:
        for (first, second), cancelled in itertools.product(itertools.product(STATES, repeat=2), [False, True]):
            study, _, _ = studies.create_study(
                s,
                tenant=tenant,
                kind="init_averaging",
                request={},
                settings=[{"label": "base", "params": {}}],
                seeds=[0, 1],
                baseline=0,
                device="cpu",
                timeout_s=60,
                republish_after_s=60,
            )
            for job_id, state in zip(sorted(studies.child_job_ids(s, study.id)), (first, second)):
                s.execute(update(Job).where(Job.id == job_id).values(status=state))
            s.commit()
            if cancelled:
                s.execute(update(type(study)).where(type(study).id == study.id).values(cancelled_at=utcnow()))
                s.commit()
            children = [stats.Child(0, 0, st, 0.0, None) for st in (first, second)]
            expected[stats.status(children, cancelled)].append(study.id)
        for state in STATES:
            found = _all(studies.list_studies, session=s, tenant=tenant, status=state, kind=None, limit=3)
            assert {st.id for st in found} == set(expected[state]) and len(found) == len(expected[state]), state
            keys = [(st.created_at, st.id) for st in found]
            assert keys == sorted(keys, reverse=True)
        assert not studies.list_studies(s, tenant="nobody", status=None, kind=None, limit=5, cursor=None)[0]
