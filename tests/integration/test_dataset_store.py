"""The dataset transitions in ``core.jobs.repository`` on both backends: upload -> validating -> ready | rejected by
compare-and-set, and the sweeper's recovery (dead validator released or given up on, lost message republished,
abandoned upload removed)."""

from __future__ import annotations

import uuid
from datetime import timedelta

from core.datasets import repository as dataset_store
from core.db.tables import Dataset, DatasetUpload, utcnow

SWEEP = {"heartbeat_timeout_s": 30, "republish_after_s": 60, "max_attempts": 2}


def _uploading(sessions, expires_in_s: float = 3600) -> tuple[uuid.UUID, uuid.UUID]:
    now = utcnow()
    ds = Dataset(
        id=uuid.uuid4(),
        tenant="t",
        filename="a.csv",
        status="uploading",
        format="csv",
        upload_size=10,
        location="datasets/x/",
        created_at=now,
    )
    up = DatasetUpload(
        id=uuid.uuid4(),
        dataset_id=ds.id,
        tenant="t",
        size=10,
        sha256="0" * 64,
        created_at=now,
        expires_at=now + timedelta(seconds=expires_in_s),
    )
    with sessions() as s:
        dataset_store.add_dataset(s, ds, up)
    return up.id, ds.id


def test_a_validation_is_claimed_once_and_finished_by_its_claimer_only(sessions):
    up_id, ds_id = _uploading(sessions)
    with sessions() as s:
        assert dataset_store.claim_validation(s, ds_id, "w1", utcnow()) is None  # not complete yet
        assert dataset_store.complete_upload(s, ds_id, utcnow())
        assert not dataset_store.complete_upload(s, ds_id, utcnow())
        claim = dataset_store.claim_validation(s, ds_id, "w1", utcnow())
        assert claim is not None and (claim.attempt, claim.upload_id, claim.declared_sha256) == (1, up_id, "0" * 64)
        assert dataset_store.claim_validation(s, ds_id, "w2", utcnow()) is None  # a duplicate message
        assert not dataset_store.finish_validation(s, ds_id, "w2", 1, reason="file: no")
        assert dataset_store.finish_validation(s, ds_id, "w1", 1, reason="file: no")
        assert dataset_store.get_dataset(s, ds_id).status == "rejected"
        assert dataset_store.upload_session(s, up_id) is None  # the session ended with the validation
        tenant, info = dataset_store.dataset_infos(s, [ds_id])[ds_id]
        assert (tenant, info.status, info.reason, info.kind) == ("t", "rejected", "file: no", None)


def test_the_sweeper_recovers_validations_and_removes_abandoned_uploads(sessions):
    later = utcnow() + timedelta(seconds=120)
    up_id, ds_id = _uploading(sessions)
    abandoned, gone = _uploading(sessions, expires_in_s=10)
    with sessions() as s:
        dataset_store.complete_upload(s, ds_id, utcnow())
        dataset_store.claim_validation(s, ds_id, "w1", utcnow())
        out = dataset_store.sweep_datasets(s, **SWEEP, now=later)  # w1 stopped beating: released, published again
        assert out.republish == [ds_id] and out.rejected == [] and out.expired == [(abandoned, gone)]
        assert dataset_store.get_dataset(s, gone) is None and dataset_store.upload_session(s, abandoned) is None
        assert not dataset_store.beat_validation(s, ds_id, "w1", 1, later)  # the dead worker's claim is gone
        out = dataset_store.sweep_datasets(s, **SWEEP, now=later)
        assert out.republish == []  # just published: not again before republish_after_s
        out = dataset_store.sweep_datasets(s, **SWEEP, now=later + timedelta(seconds=61))
        assert out.republish == [ds_id]  # its message may be lost: published again, still unclaimed
        claim = dataset_store.claim_validation(s, ds_id, "w2", later + timedelta(seconds=61))
        assert claim.attempt == 2
        out = dataset_store.sweep_datasets(s, **SWEEP, now=later + timedelta(seconds=200))
        assert out.rejected == [ds_id] and out.republish == []  # max_attempts workers died on it
        ds = dataset_store.get_dataset(s, ds_id)
        assert ds.status == "rejected" and "stopped responding on each of 2 attempts" in ds.reason


def test_the_worker_sweeper_removes_an_abandoned_upload_and_stray_temporaries(sessions, tmp_path):
    import os
    import time

    from core.blobs import blob_store
    from core.blobs.layout import dataset_tokenizer_key, tokenizer_staging_key, upload_partial_key
    from core.settings import Settings
    from workers.app import make_celery
    from workers.sweeper import TEMPORARY_AGE_S, sweep_datasets, sweep_temporaries

    settings = Settings(data_dir=tmp_path, blob_url=(tmp_path / "blobs").as_uri())
    blobs = blob_store(settings)
    up_id, ds_id = _uploading(sessions, expires_in_s=-1)
    kept_up, kept_ds = _uploading(sessions)
    for upload in (up_id, kept_up):
        blobs.append_partial(upload_partial_key(upload), 0, [b"half"], 10)
    blobs.put(dataset_tokenizer_key(ds_id), [b"{}"])
    blobs.put(tokenizer_staging_key(up_id, "left-by-a-killed-api"), [b"{}"])
    stray = tmp_path / "blobs" / "artifacts" / ".tmp-dead"
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"x")
    os.utime(stray, (time.time() - TEMPORARY_AGE_S - 60,) * 2)

    out = sweep_datasets(sessions, settings, make_celery(settings))
    assert out.expired == [(up_id, ds_id)]
    assert blobs.partial_size(upload_partial_key(up_id)) == 0 and not blobs.exists(dataset_tokenizer_key(ds_id))
    assert not blobs.exists(tokenizer_staging_key(up_id, "left-by-a-killed-api"))
    assert blobs.partial_size(upload_partial_key(kept_up)) == 4  # a live upload keeps its bytes
    with sessions() as s:
        assert (
            dataset_store.get_dataset(s, ds_id) is None and dataset_store.get_dataset(s, kept_ds).status == "uploading"
        )
    assert sweep_temporaries(settings) == 1 and not stray.exists()


def test_a_validation_given_up_on_by_the_sweeper_drops_the_raw_upload_and_tokenizer(sessions, tmp_path):
    from core.blobs import blob_store
    from core.blobs.layout import dataset_file_key, dataset_raw_key, dataset_tokenizer_key
    from core.settings import Settings
    from workers.app import make_celery
    from workers.sweeper import sweep_datasets

    settings = Settings(data_dir=tmp_path, blob_url=(tmp_path / "blobs").as_uri(), max_attempts=1)
    blobs = blob_store(settings)
    _, ds_id = _uploading(sessions)
    with sessions() as s:
        dataset_store.complete_upload(s, ds_id, utcnow())
        dataset_store.claim_validation(s, ds_id, "w1", utcnow() - timedelta(hours=1))  # then never beat again
        s.execute(
            Dataset.__table__.update().where(Dataset.id == ds_id).values(validation_at=utcnow() - timedelta(hours=1))
        )
        s.commit()
    for key in (dataset_raw_key(ds_id), dataset_tokenizer_key(ds_id), dataset_file_key("other", "x.npy")):
        blobs.put(key, [b"bytes"])
    out = sweep_datasets(sessions, settings, make_celery(settings))
    assert out.rejected == [ds_id]
    assert not blobs.exists(dataset_raw_key(ds_id)) and not blobs.exists(dataset_tokenizer_key(ds_id))
    assert blobs.exists(dataset_file_key("other", "x.npy"))  # another dataset's files stay


def test_the_open_upload_caps_count_one_tenants_uploading_unexpired_sessions(sessions):
    now = utcnow()
    caps = {"max_open": 2, "max_bytes": 25, "now": now}

    def new(tenant: str, size: int, expires_in_s: float = 3600) -> tuple[Dataset, DatasetUpload]:
        ds = Dataset(
            id=uuid.uuid4(),
            tenant=tenant,
            filename="a.csv",
            status="uploading",
            format="csv",
            upload_size=size,
            location="datasets/x/",
            created_at=now,
        )
        up = DatasetUpload(
            id=uuid.uuid4(),
            dataset_id=ds.id,
            tenant=tenant,
            size=size,
            created_at=now,
            expires_at=now + timedelta(seconds=expires_in_s),
        )
        return ds, up

    a, b, c = (uuid.uuid4().hex[:8] for _ in range(3))  # the module's database is shared: tenants of this test
    with sessions() as s:
        assert dataset_store.add_upload_within(s, *new(a, 10), **caps) is None
        assert dataset_store.add_upload_within(s, *new(a, 16), **caps) == (1, 10)  # 26 bytes > 25
        assert dataset_store.add_upload_within(s, *new(b, 25), **caps) is None  # another tenant's caps
        assert dataset_store.add_upload_within(s, *new(a, 15), **caps) is None
        assert dataset_store.add_upload_within(s, *new(a, 1), **caps) == (2, 25)  # two open already
        expired, done = new(c, 10, expires_in_s=-10), new(c, 10)
        dataset_store.add_dataset(s, *expired)
        dataset_store.add_dataset(s, *done)
        dataset_store.complete_upload(s, done[0].id, now)  # validating: no longer open
        assert dataset_store.add_upload_within(s, *new(c, 10), **caps) is None
        assert dataset_store.add_upload_within(s, *new(c, 10), **caps) is None
        assert dataset_store.add_upload_within(s, *new(c, 10), **caps) == (2, 20)
