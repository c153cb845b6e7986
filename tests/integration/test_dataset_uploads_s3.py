"""A resumable dataset upload on the S3 store (moto's S3 server on loopback): chunks kept as objects and joined by a
server-side multipart copy, validated by a worker that downloads the upload, and trained on by a job whose worker
reads the canonical files through its download cache."""

from __future__ import annotations

import hashlib
import os

import httpx
import numpy as np
import pytest

from tests.integration.test_dataset_uploads import MiB, job_on, npz_bytes, offset_of, patch, settle, start
from tests.servers import PrivateS3
from tests.stack import wait_job

CREDS = PrivateS3.CREDENTIALS


@pytest.fixture(scope="module")
def bucket(s3_server):
    import s3fs

    fs = s3fs.S3FileSystem(key="test", secret="test", endpoint_url=s3_server.endpoint, use_listings_cache=False)
    name = f"b{os.urandom(6).hex()}"
    fs.mkdir(name)
    return fs, name


@pytest.fixture(scope="module")
def service_env(service_env, s3_server, bucket):
    return {
        **service_env,
        **CREDS,
        "GRADLAB_BLOB_URL": f"s3://{bucket[1]}/gradlab",
        "GRADLAB_BLOB_S3_ENDPOINT_URL": s3_server.endpoint,
    }


@pytest.fixture(scope="module")
def worker(stack, api):
    return stack.start_worker()


def test_an_upload_to_s3_is_joined_validated_and_trained_on(stack, worker, bucket):
    fs, name = bucket
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(40_000, 40)).astype("<f4"), np.arange(40_000) % 4  # 6.7 MB: two chunks
    data = npz_bytes(x=x, y=y)
    sha = hashlib.sha256(data).hexdigest()
    with httpx.Client(base_url=stack.api_url, timeout=120) as http:
        up = start(http, "train.npz", len(data), sha256=sha)
        assert up["min_chunk_bytes"] == 5 * MiB
        small = patch(http, up["id"], 0, data[:MiB])
        assert small.status_code == 422 and "at least" in small.json()["detail"]
        assert offset_of(http, up["id"]) == 0  # the refused chunk was not kept
        assert patch(http, up["id"], 0, data[: 5 * MiB]).json()["offset"] == 5 * MiB
        assert patch(http, up["id"], 5 * MiB, data[5 * MiB :]).json()["offset"] == len(data)
        assert http.post(f"/v1/datasets/uploads/{up['id']}/complete").status_code == 202
        ds = settle(http, up["dataset_id"])
        assert ds["status"] == "ready", ds
        assert ds["sha256"] == sha and (ds["rows"], ds["columns"]) == (40_000, 40)
        assert ds["preview"]["label_balance"] == {str(k): 10_000 for k in range(4)}
        stored = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(f"{name}/gradlab/datasets/{ds['id']}"))
        assert stored == ["x.npy", "y.npy"]  # the raw upload went once validated
        assert not fs.exists(f"{name}/gradlab/uploads/{up['id']}")  # and its chunks once joined
        with fs.open(f"{name}/gradlab/datasets/{ds['id']}/x.npy", "rb") as fh:
            assert (np.load(fh) == x).all()

        job = job_on(http, ds["id"])
        assert job.status_code == 201, job.text
        assert wait_job(http, job.json()["id"], timeout=300)["status"] == "succeeded"

        gone = http.delete(f"/v1/datasets/{ds['id']}")  # its job is over: the dataset and its objects go
        assert gone.status_code == 204, gone.text
        assert not fs.exists(f"{name}/gradlab/datasets/{ds['id']}/x.npy")
        assert not fs.exists(f"{name}/gradlab/datasets/{ds['id']}")
        assert http.get(f"/v1/datasets/{ds['id']}").status_code == 404


def test_a_tokenizer_on_s3_is_read_by_the_validation_and_nothing_of_it_stays(stack, worker, bucket):
    """The tokenizer streams to an object of its own, is copied into place under the row lock, and goes once the
    dataset is validated; a chunk past the declared size keeps nothing (S3 drops the chunk whole)."""
    import json

    fs, name = bucket
    vocab = {"[UNK]": 0, "the": 1, "cat": 2, "sat": 3}
    tokenizer = {
        "version": "1.0",
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"},
        "pre_tokenizer": {"type": "Whitespace"},
    }
    text = b"".join(json.dumps({"text": t}).encode() + b"\n" for t in ["the cat sat", "the cat", "sat"])
    with httpx.Client(base_url=stack.api_url, timeout=120) as http:
        up = start(http, "t.jsonl", len(text))
        put = http.put(f"/v1/datasets/uploads/{up['id']}/tokenizer", content=json.dumps(tokenizer).encode())
        assert put.status_code == 204, put.text
        past = patch(http, up["id"], 0, text + b"x")
        assert past.status_code == 413 and past.headers["Upload-Offset"] == "0", past.text
        assert patch(http, up["id"], 0, text).json()["offset"] == len(text)
        assert http.post(f"/v1/datasets/uploads/{up['id']}/complete").status_code == 202
        ds = settle(http, up["dataset_id"])
        assert ds["status"] == "ready", ds
        assert (ds["preview"]["tokenizer"], ds["preview"]["token_length"]["tokens"]) == ("tokenizer.json", 6)
        stored = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(f"{name}/gradlab/datasets/{ds['id']}"))
        assert stored == ["offsets.npy", "tokens.npy"]  # neither upload.raw nor tokenizer.json
        assert not fs.exists(f"{name}/gradlab/uploads/tokenizers") or fs.ls(f"{name}/gradlab/uploads/tokenizers") == []
