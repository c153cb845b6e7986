"""A sharded checkpoint uploaded to the S3 store (moto's S3 server on loopback): each file's chunks kept as objects
and joined by a server-side copy when the upload completes, then loaded by a worker through its download cache."""

from __future__ import annotations

import os

import pytest
import torch

from api.client import Client
from tests.integration.test_model_uploads import init_averaging, llama_tensors, sharded, variances
from tests.model_configs import TINY_LLAMA
from tests.servers import PrivateS3

MiB = 1024 * 1024
WIDE_VOCAB = {**TINY_LLAMA, "vocab_size": 42_000}  # the embedding and the head: 5.1 MiB each in bfloat16


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
        **PrivateS3.CREDENTIALS,
        "GRADLAB_BLOB_URL": f"s3://{bucket[1]}/gradlab",
        "GRADLAB_BLOB_S3_ENDPOINT_URL": s3_server.endpoint,
    }


def test_shards_on_s3_are_joined_at_completion_and_loaded_through_the_workers_cache(stack, api, bucket, tmp_path):
    fs, name = bucket
    tensors = llama_tensors(torch.bfloat16, seed=3, config=WIDE_VOCAB)
    files = sharded(tmp_path / "ckpt", tensors, config=WIDE_VOCAB)
    assert sum(p.stat().st_size > 5 * MiB for p in files) == 2  # sent in two chunks each, joined by a copy
    with Client(stack.api_url) as client:
        model = client.upload_model_resumable(files, chunk_bytes=5 * MiB)
    stored = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(f"{name}/gradlab/models/{model.id}"))
    assert stored == sorted(p.name for p in files)
    assert not fs.exists(f"{name}/gradlab/uploads/models")  # every chunk went once joined
    for p in files[2:]:
        with fs.open(f"{name}/gradlab/models/{model.id}/{p.name}", "rb") as fh:
            assert fh.read() == p.read_bytes()
    stack.start_worker()
    found = init_averaging(api, {"source": "uploaded", "id": model.id})
    assert found == pytest.approx({n: v for n, v in variances(tensors).items() if n in found}, rel=1e-9)
    cache = os.path.join(stack.env["GRADLAB_DATA_DIR"], "model-cache", model.id)
    assert sorted(os.listdir(cache)) == sorted(p.name for p in files[2:])  # the shards, downloaded once
