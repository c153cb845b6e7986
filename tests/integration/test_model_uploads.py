"""Resumable model uploads on real processes (an API, a worker, PostgreSQL, the directory blob store): one
safetensors file, a sharded checkpoint of three bfloat16 shards, a .pt2 exported program; interrupted and resumed;
every refusal naming its field with nothing stored; tenant isolation; listing and deleting; and the one-shot
``POST /v1/models`` 500s of issue 27 item 5, now 422s that keep nothing."""

from __future__ import annotations

import json
import math
import os
import subprocess
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from api.client import ApiError, Client
from core.db.engine import make_engine, make_sessionmaker
from core.networks.resolve import load_exported
from core.networks.spec import ExportedModel
from core.settings import Settings
from core.techniques.base import ForeignResource
from tests.model_configs import TINY_GPT2, TINY_LLAMA, hf_model
from tests.stack import BIN, ROOT, wait_job
from tests.unit.test_exported_archive import edit_json, export, mlp, rewrite
from workers.context import DbRunContext


@pytest.fixture(scope="module")
def service_env(service_env):
    return {**service_env, "GRADLAB_AUTH": "required"}


def make_key(stack, tenant: str) -> str:
    out = subprocess.run(
        [str(BIN / "gradlab"), "keys", "create", "--tenant", tenant],
        env={**os.environ, **stack.env},
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return dict(line.split(": ", 1) for line in out.strip().splitlines())["key"]


@pytest.fixture(scope="module")
def keys(stack, api) -> dict[str, str]:
    return {tenant: make_key(stack, tenant) for tenant in ("alice", "bob", "carol")}


@pytest.fixture(scope="module")
def alice(stack, keys):
    with httpx.Client(base_url=stack.api_url, timeout=60, headers={"Authorization": f"Bearer {keys['alice']}"}) as c:
        yield c


@pytest.fixture(scope="module")
def bob(stack, keys):
    with httpx.Client(base_url=stack.api_url, timeout=60, headers={"Authorization": f"Bearer {keys['bob']}"}) as c:
        yield c


@pytest.fixture(scope="module")
def client(stack, keys):
    with Client(stack.api_url, api_key=keys["alice"], timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def worker(stack, keys):
    """A worker of the cpu and auto queues only: a ``cuda`` job stays queued (the delete tests hold models so)."""
    return stack.start_worker(queues="cpu,auto")


@pytest.fixture(scope="module")
def blobs(service_env) -> Path:
    return Path(service_env["GRADLAB_DATA_DIR"]) / "blobs"


def stored_files(blobs: Path) -> set[str]:
    """Every blob of a model or of a model upload in progress."""
    return {str(p.relative_to(blobs)) for p in blobs.rglob("*") if p.is_file() and "models" in p.parts}


def refused(resp: httpx.Response, status: int, field: str, words: str) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    body = resp.json()
    assert body["errors"][0]["field"] == field, body
    assert words in body["detail"], body
    return body


# --- checkpoints --------------------------------------------------------------------------------------------------


def llama_tensors(dtype: torch.dtype, seed: int = 0, config: dict = TINY_LLAMA) -> dict[str, torch.Tensor]:
    """Every tensor of a Llama, drawn with a spread (0.5) that no initialisation of the model uses."""
    gen = torch.Generator().manual_seed(seed)
    shapes = {n: p.shape for n, p in hf_model(config).state_dict().items()}
    return {n: (0.5 * torch.randn(shape, generator=gen)).to(dtype) for n, shape in shapes.items()}


def write_config(folder: Path, config: dict) -> Path:
    (folder / "config.json").write_text(json.dumps(config))
    return folder / "config.json"


def sharded(
    folder: Path,
    tensors: dict[str, torch.Tensor],
    n: int = 3,
    weight_map: dict | None = None,
    config: dict = TINY_LLAMA,
) -> list[Path]:
    """config.json, model.safetensors.index.json and ``n`` shards holding ``tensors`` round-robin."""
    folder.mkdir(parents=True, exist_ok=True)
    names = sorted(tensors)
    groups = [names[i::n] for i in range(n)]
    shard_names = [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    for shard, group in zip(shard_names, groups):
        save_file({name: tensors[name] for name in group}, str(folder / shard), metadata={"format": "pt"})
    mapping = weight_map or {name: shard for shard, group in zip(shard_names, groups) for name in group}
    index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in tensors.values())}}
    (folder / "model.safetensors.index.json").write_text(json.dumps({**index, "weight_map": mapping}))
    return [
        write_config(folder, config),
        folder / "model.safetensors.index.json",
        *(folder / s for s in shard_names),
    ]


NONSQUARE = {
    n for n, p in hf_model(TINY_LLAMA).named_parameters() if p.dim() == 2 and p.shape[0] != p.shape[1]
}  # the embedding and each layer's gate, up and down projections


def variances(tensors: dict[str, torch.Tensor]) -> dict[str, float]:
    return {n: float(t.double().var()) for n, t in tensors.items()}


def run_job(http: httpx.Client, kind: str, params: dict, device: str = "cpu") -> dict:
    resp = http.post("/v1/jobs", json={"kind": kind, "params": params, "device": device})
    assert resp.status_code == 201, resp.text
    done = wait_job(http, resp.json()["id"], timeout=240)
    assert done["status"] == "succeeded", done
    return done["result"]


def init_averaging(http: httpx.Client, model: dict) -> dict[str, float]:
    """The variance of each non-square weight as the worker's job found it loaded."""
    result = run_job(http, "init_averaging", {"model": model, "means": ["arithmetic"], "batch": 2, "seq_len": 8})
    return {row["name"]: row["current_variance"] for row in result["layers"]}


def wait_offset(http: httpx.Client, url: str, timeout: float = 10) -> int:
    """The bytes received of a file once the server has finished with a cut-off chunk (it holds them then)."""
    deadline, last = time.monotonic() + timeout, -1
    while time.monotonic() < deadline:
        now = int(http.head(url).headers["Upload-Offset"])
        if now == last and now > 0:
            return now
        last = now
        time.sleep(0.2)
    return last


# --- uploads that succeed -----------------------------------------------------------------------------------------


def test_one_file_uploads_in_chunks_resumes_after_a_cut_chunk_and_the_worker_loads_its_weights(
    alice, worker, blobs, tmp_path
):
    tensors = llama_tensors(torch.float32)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    weights = (tmp_path / "model.safetensors").read_bytes()
    config = json.dumps(TINY_LLAMA).encode()
    started = alice.post(
        "/v1/models/uploads",
        json={
            "files": [{"name": "config.json", "size": len(config)}, {"name": "model.safetensors", "size": len(weights)}]
        },
    )
    assert started.status_code == 201, started.text
    up = started.json()
    assert up["format"] == "safetensors" and [f["offset"] for f in up["files"]] == [0, 0]
    base = f"/v1/models/uploads/{up['id']}/files"
    assert alice.patch(f"{base}/config.json", content=config, headers={"Upload-Offset": "0"}).json()["offset"] == len(
        config
    )

    half = len(weights) // 2

    def cut():  # the connection drops after half the file: what arrived is kept
        yield weights[:half]
        raise ConnectionError("cable pulled")

    with pytest.raises(ConnectionError):
        alice.patch(f"{base}/model.safetensors", content=cut(), headers={"Upload-Offset": "0"})
    held = wait_offset(alice, f"{base}/model.safetensors")
    assert 0 < held <= half  # the header passed its check, and what arrived after it is kept: resume from there
    early = alice.post(f"/v1/models/uploads/{up['id']}/complete")
    assert early.status_code == 409 and early.headers["Upload-Offset"] == str(held), early.text
    wrong = alice.patch(f"{base}/model.safetensors", content=weights[:10], headers={"Upload-Offset": "0"})
    assert wrong.status_code == 409 and wrong.headers["Upload-Offset"] == str(held)
    rest = alice.patch(f"{base}/model.safetensors", content=weights[held:], headers={"Upload-Offset": str(held)})
    assert rest.json()["offset"] == len(weights)
    past = alice.patch(f"{base}/model.safetensors", content=b"x", headers={"Upload-Offset": str(len(weights))})
    assert past.status_code == 413, past.text

    done = alice.post(f"/v1/models/uploads/{up['id']}/complete")
    assert done.status_code == 201, done.text
    model = done.json()
    assert model["id"] == up["model_id"] and model["format"] == "safetensors" and model["source"] == "uploaded"
    assert model["use_as"] == {"source": "uploaded", "id": up["model_id"]}
    assert model["weights_size"] == len(config) + len(weights)
    assert model["n_params"] == sum(t.numel() for t in tensors.values())
    assert alice.get(f"/v1/models/uploads/{up['id']}").status_code == 404  # the session ended with the row
    assert f"models/{model['id']}/model.safetensors" in stored_files(blobs)
    assert not any(f.startswith(f"uploads/models/{up['id']}") for f in stored_files(blobs))
    found = init_averaging(alice, {"source": "uploaded", "id": model["id"]})
    assert found == pytest.approx({n: v for n, v in variances(tensors).items() if n in found}, rel=1e-9)
    assert set(found) == NONSQUARE


def test_three_bfloat16_shards_upload_with_the_client_and_load_as_stored_in_either_run_dtype(
    client, alice, worker, tmp_path
):
    tensors = llama_tensors(torch.bfloat16, seed=1)
    files = sharded(tmp_path / "ckpt", tensors)
    seen: list[tuple[int, int]] = []
    model = client.upload_model_resumable(files, chunk_bytes=64 * 1024, on_progress=lambda s, t: seen.append((s, t)))
    total = sum(p.stat().st_size for p in files)
    assert seen[-1] == (total, total) and len(seen) > len(files)  # 64 KiB chunks: progress block by block
    assert model.format == "sharded" and model.source == "uploaded" and model.weights_size == total
    assert [f["name"] for f in model.files] == [p.name for p in files]
    assert model.n_params == sum(t.numel() for t in tensors.values())
    for dtype in ("float32", "bfloat16"):  # bf16 → float32 is exact, and bfloat16 keeps the stored values
        found = init_averaging(alice, {"source": "uploaded", "id": model.id, "dtype": dtype})
        assert found == pytest.approx({n: v for n, v in variances(tensors).items() if n in found}, rel=1e-9)
    with_weights = {"source": "hf_config", "config": TINY_LLAMA, "weights": model.id, "dtype": "bfloat16"}
    assert init_averaging(alice, with_weights) == found
    assert [m.id for m in client.models(format="sharded")] == [model.id]


def test_an_exported_program_uploads_is_described_and_built_by_the_workers_loader(
    client, alice, bob, stack, keys, tmp_path
):
    torch.manual_seed(0)
    original = mlp(torch.nn.Tanh())
    path = export(original, (torch.randn(6, 5),), tmp_path / "mlp.pt2")
    model = client.upload_model_resumable([path], chunk_bytes=4096)
    assert (model.source, model.format, model.model_type) == ("exported", "exported", None)
    shown = alice.get(f"/v1/models/{model.id}").json()
    described = shown["exported"]
    assert [(i["dtype"], i["shape"][1:]) for i in described["inputs"]] == [("float32", [5])]
    assert described["outputs"]["shape"][1:] == [3]
    assert [p["name"] for p in described["parameters"]] == [n for n, _ in original.named_parameters()]
    assert described["operators"] == {"aten.linear": 3, "aten.tanh": 2}
    assert shown["n_params"] == sum(p.numel() for p in original.parameters())
    assert shown["use_as"] == {"source": "exported", "id": model.id}
    one_shot = alice.post("/v1/models", files={"program": ("mlp.pt2", path.read_bytes())})
    assert one_shot.status_code == 201 and one_shot.json()["exported"] == described

    settings = Settings(**{k.removeprefix("GRADLAB_").lower(): v for k, v in stack.env.items()})
    sessions = make_sessionmaker(make_engine(stack.env["GRADLAB_DATABASE_URL"]))

    def context(tenant: str) -> DbRunContext:
        return DbRunContext(sessions, settings, uuid.uuid4(), 1, tenant, 0, 60.0, on_hung=lambda why: None)

    spec = ExportedModel(source="exported", id=model.id)
    module = load_exported(spec, context("alice"))
    x = torch.randn(9, 5)
    assert torch.equal(module(x), original(x))
    with pytest.raises(ForeignResource):
        load_exported(spec, context("bob"))

    job = {"kind": "embedding_dim", "params": {"vocab_sizes": [64], "model": {"source": "exported", "id": model.id}}}
    refused(alice.post("/v1/jobs", json=job), 422, "params.model", "does not take an exported program")
    refused(bob.post("/v1/jobs", json=job), 422, "params.model", f"model {model.id} not found")
    as_config = {
        "kind": "embedding_dim",
        "params": {"vocab_sizes": [64], "model": {"source": "uploaded", "id": model.id}},
    }
    refused(alice.post("/v1/jobs", json=as_config), 422, "params.model", "is an exported program")


# --- refusals -----------------------------------------------------------------------------------------------------


def start(http: httpx.Client, files: list[Path]) -> dict:
    resp = http.post("/v1/models/uploads", json={"files": [{"name": p.name, "size": p.stat().st_size} for p in files]})
    assert resp.status_code == 201, resp.text
    return resp.json()


def send_all(http: httpx.Client, upload: dict, files: list[Path]) -> None:
    for path in files:
        resp = http.patch(
            f"/v1/models/uploads/{upload['id']}/files/{path.name}",
            content=path.read_bytes(),
            headers={"Upload-Offset": "0"},
        )
        assert resp.status_code == 200, resp.text


def assert_nothing_kept(http: httpx.Client, blobs: Path, upload: dict) -> None:
    assert http.get(f"/v1/models/uploads/{upload['id']}").status_code == 404
    assert http.get(f"/v1/models/{upload['model_id']}").status_code == 404
    assert not any(upload["id"] in f or upload["model_id"] in f for f in stored_files(blobs))


def test_declarations_are_refused_from_names_and_sizes(alice):
    cases = [
        ([("config.json", 10), ("pytorch_model.bin", 10)], 422, "files[1].name", "pickled"),
        ([("config.json", 10), ("config.json", 10)], 422, "files[1].name", "twice"),
        ([("model.pt2", 10), ("config.json", 10)], 422, "files", "sent alone"),
        ([("config.json", 10), ("a.safetensors", 10), ("b.safetensors", 10)], 422, "files", "without an index"),
        ([("model.safetensors", 10)], 422, "files", "config.json is missing"),
        ([("config.json", 10)], 422, "files", "POST /v1/models"),
        ([("config.json", 10), ("../model.safetensors", 10)], 422, "files[1].name", "not a plain file name"),
        ([("config.json", 10), ("model.safetensors", 300 * 2**30)], 413, "files", "exceed the limit"),
        ([("config.json", 70_000), ("model.safetensors", 10)], 413, "files[0].size", "exceeds the limit"),
    ]
    for files, status, field, words in cases:
        body = {"files": [{"name": name, "size": size} for name, size in files]}
        refused(alice.post("/v1/models/uploads", json=body), status, field, words)
    as_text = {"files": [{"name": "config.json", "size": "10"}, {"name": "model.safetensors", "size": 10}]}
    refused(alice.post("/v1/models/uploads", json=as_text), 422, "files[0].size", "integer")


def test_a_bad_safetensors_header_is_refused_before_its_data_is_stored(alice, blobs, tmp_path):
    tensors = llama_tensors(torch.float32)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    good = (tmp_path / "model.safetensors").read_bytes()
    length = int.from_bytes(good[:8], "little")
    bad = good[:8] + good[8 : 8 + length].replace(b'"F32"', b'"F99"', 1) + good[8 + length :]
    files = [write_config(tmp_path, TINY_LLAMA), tmp_path / "model.safetensors"]
    up = start(alice, files)
    url = f"/v1/models/uploads/{up['id']}/files/model.safetensors"
    refused(alice.patch(url, content=bad, headers={"Upload-Offset": "0"}), 422, "model.safetensors", "F99")
    refused(
        alice.patch(url, content=good[:100], headers={"Upload-Offset": "0"}), 422, "model.safetensors", "first chunk"
    )
    pickled = b"\x80\x04\x95" + good[3:]
    refused(alice.patch(url, content=pickled, headers={"Upload-Offset": "0"}), 422, "model.safetensors", "pickle")
    assert alice.head(url).headers["Upload-Offset"] == "0"  # none of the data behind a refused header was stored
    assert alice.delete(f"/v1/models/uploads/{up['id']}").status_code == 204
    assert_nothing_kept(alice, blobs, up)


def _shards_with(tmp_path: Path, name: str, change) -> list[Path]:
    tensors = llama_tensors(torch.bfloat16)
    files = sharded(tmp_path / name, tensors)
    return change(files, tensors) or files


def _missing_shard(files, tensors):
    return files[:-1]  # the index names all three shards; two are sent


def _tensor_in_two_shards(files, tensors):
    with safe_open(str(files[2]), framework="pt") as f:
        twice = sorted(f.keys())[0]  # a tensor of shard 1, written again into shard 3
    with safe_open(str(files[4]), framework="pt") as f:
        held = {n: f.get_tensor(n) for n in f.keys()}
    save_file({**held, twice: tensors[twice]}, str(files[4]), metadata={"format": "pt"})


def _index_names_a_tensor_the_shard_lacks(files, tensors):
    index = json.loads(files[1].read_text())
    index["weight_map"]["model.extra.weight"] = files[3].name
    files[1].write_text(json.dumps(index))


def _index_puts_a_tensor_in_another_shard(files, tensors):
    index = json.loads(files[1].read_text())
    moved = next(n for n, shard in index["weight_map"].items() if shard == files[2].name)
    index["weight_map"][moved] = files[3].name
    files[1].write_text(json.dumps(index))


def _a_shard_the_index_does_not_name(files, tensors):
    index = json.loads(files[1].read_text())
    index["weight_map"] = {n: files[2].name if s == files[4].name else s for n, s in index["weight_map"].items()}
    files[1].write_text(json.dumps(index))


def _config_of_another_size(files, tensors):
    write_config(files[0].parent, {**TINY_LLAMA, "intermediate_size": 96})


@pytest.mark.parametrize(
    "change, field, words",
    [
        (
            _missing_shard,
            "files",
            "model-00003-of-00003.safetensors, which model.safetensors.index.json names, is missing",
        ),
        (_tensor_in_two_shards, "model-00003-of-00003.safetensors", "is also in model-00001-of-00003"),
        (_index_names_a_tensor_the_shard_lacks, "model-00002-of-00003.safetensors", "and the shard lacks it"),
        (_index_puts_a_tensor_in_another_shard, "model-00001-of-00003.safetensors", "which model.safetensors.index"),
        (_a_shard_the_index_does_not_name, "model-00003-of-00003.safetensors", "names no tensor in it"),
        (_config_of_another_size, "weights", "do not match the config"),
    ],
    ids=lambda v: v.__name__.strip("_") if callable(v) else None,
)
def test_a_sharded_checkpoint_that_does_not_agree_is_refused_whole(alice, blobs, tmp_path, change, field, words):
    files = _shards_with(tmp_path, change.__name__, change)
    up = start(alice, files)
    send_all(alice, up, files)
    refused(alice.post(f"/v1/models/uploads/{up['id']}/complete"), 422, field, words)
    assert_nothing_kept(alice, blobs, up)


def test_an_exported_program_with_a_pickle_or_a_foreign_operator_is_refused_at_completion(alice, blobs, tmp_path):
    torch.manual_seed(0)
    path = export(mlp(torch.nn.Tanh()), (torch.randn(6, 5),), tmp_path / "mlp.pt2")

    def pickled(doc):
        doc["config"]["0.weight"]["use_pickle"] = True

    def foreign(doc):
        for node in doc["graph_module"]["graph"]["nodes"]:
            node["target"] = node["target"].replace("torch.ops.aten.tanh", "torch.ops.mylib.tanh")

    for name, member, change, words in (
        ("pickled.pt2", "data/weights/model_weights_config.json", pickled, "stored as a pickle"),
        ("foreign.pt2", "models/model.json", foreign, "mylib.tanh"),
    ):
        evil = rewrite(path, tmp_path / name, edit_json(member, change))
        up = start(alice, [evil])
        send_all(alice, up, [evil])
        refused(alice.post(f"/v1/models/uploads/{up['id']}/complete"), 422, name, words)
        assert_nothing_kept(alice, blobs, up)
    zipless = tmp_path / "zipless.pt2"
    zipless.write_bytes(b"not a zip" * 10)
    up = start(alice, [zipless])
    url = f"/v1/models/uploads/{up['id']}/files/zipless.pt2"
    refused(alice.patch(url, content=zipless.read_bytes(), headers={"Upload-Offset": "0"}), 422, "zipless.pt2", "zip")


def test_repeated_weights_parts_are_refused_rather_than_one_kept(alice, tmp_path):
    files = sharded(tmp_path / "ckpt", llama_tensors(torch.float32))
    parts = [("config", ("config.json", files[0].read_bytes()))]
    parts += [("weights", (p.name, p.read_bytes())) for p in files[2:]]
    refused(alice.post("/v1/models", files=parts), 422, "weights", "3 files sent under one field")


def test_the_one_shot_500s_of_issue_27_are_422s_that_store_nothing(keys, stack, blobs, tmp_path):
    """Issue 27 item 5: a config or safetensors header nested 30k deep or holding a 5000-digit integer, a config
    with NaN (PostgreSQL refused it after the weights blob was written): each a 422 naming its field, no row, no
    blob."""
    carol = httpx.Client(base_url=stack.api_url, timeout=60, headers={"Authorization": f"Bearer {keys['carol']}"})
    save_file(llama_tensors(torch.float32), str(tmp_path / "model.safetensors"))
    weights = (tmp_path / "model.safetensors").read_bytes()
    length = int.from_bytes(weights[:8], "little")
    header, data = weights[8 : 8 + length].rstrip(), weights[8 + length :]  # without the padding to 8 bytes

    def with_header(new: bytes) -> bytes:
        return len(new).to_bytes(8, "little") + new + data

    deep = b'"x":' + b"[" * 30_000 + b"]" * 30_000
    config = json.dumps(TINY_LLAMA).encode()
    digits = "9" * 5000
    cases = [
        ({"config": config[:-1] + b"," + deep + b"}"}, "config", "nested 30001 deep"),
        ({"config": config[:-1] + f', "x": {digits}}}'.encode()}, "config", "5000 digits"),
        ({"config": config[:-1] + b', "rope_theta": NaN}'}, "config", "NaN is not a JSON number"),
        ({"config": config[:-1] + b', "rope_theta": NaN}', "weights": weights}, "config", "NaN"),  # left a blob
        ({"config": config[:-1] + b', "rope_theta": 1e999}'}, "config", "beyond the range"),
        ({"config": config, "weights": with_header(b"{" + deep + b"," + header[1:])}, "weights", "nested 30001 deep"),
        (
            {"config": config, "weights": with_header(header[:-1] + f', "x": {digits}}}'.encode())},
            "weights",
            "5000 digits",
        ),
    ]
    before = stored_files(blobs)
    for parts, field, words in cases:
        files = {
            name: (f"{name}.json" if name == "config" else "model.safetensors", raw) for name, raw in parts.items()
        }
        refused(carol.post("/v1/models", files=files), 422, field, words)
    nan_job = {"source": "hf_config", "config": {**TINY_GPT2, "layer_norm_epsilon": math.nan}}
    resp = carol.post(
        "/v1/jobs",
        content=json.dumps({"kind": "embedding_dim", "params": {"vocab_sizes": [512], "model": nan_job}}),
        headers={"Content-Type": "application/json"},
    )
    refused(resp, 422, "params.model.hf_config.config", "not a finite number")
    assert carol.get("/v1/models").json()["items"] == []
    assert stored_files(blobs) == before
    carol.close()


# --- tenants, listing, deleting -----------------------------------------------------------------------------------


def test_another_tenant_can_reach_neither_an_upload_nor_a_model(alice, bob, tmp_path):
    hf_model(TINY_GPT2).save_pretrained(tmp_path, safe_serialization=True)
    files = [write_config(tmp_path, TINY_GPT2), tmp_path / "model.safetensors"]
    up = start(alice, files)
    url = f"/v1/models/uploads/{up['id']}"
    assert bob.get(url).status_code == 404
    assert bob.head(f"{url}/files/config.json").status_code == 404
    assert bob.patch(f"{url}/files/config.json", content=b"{}", headers={"Upload-Offset": "0"}).status_code == 404
    assert bob.post(f"{url}/complete").status_code == 404
    assert bob.delete(url).status_code == 404
    send_all(alice, up, files)
    assert bob.post(f"{url}/complete").status_code == 404
    model = alice.post(f"{url}/complete").json()
    assert bob.get(f"/v1/models/{model['id']}").status_code == 404
    assert bob.delete(f"/v1/models/{model['id']}").status_code == 404
    assert model["id"] not in [m["id"] for m in bob.get("/v1/models").json()["items"]]
    assert model["id"] in [m["id"] for m in alice.get("/v1/models").json()["items"]]


def test_models_list_newest_first_a_page_at_a_time_and_filter_by_source(alice, keys, stack, tmp_path):
    dave = {"Authorization": f"Bearer {make_key(stack, 'dave')}"}
    made = []
    for width in (16, 32, 48):
        config = {**TINY_GPT2, "n_embd": width}
        resp = alice.post("/v1/models", files={"config": ("config.json", json.dumps(config))}, headers=dave)
        made.append(resp.json()["id"])
    path = export(mlp(torch.nn.Tanh()), (torch.randn(6, 5),), tmp_path / "m.pt2")
    made.append(alice.post("/v1/models", files={"program": ("m.pt2", path.read_bytes())}, headers=dave).json()["id"])
    first = alice.get("/v1/models", params={"limit": 3}, headers=dave).json()
    second = alice.get("/v1/models", params={"limit": 3, "cursor": first["next_cursor"]}, headers=dave).json()
    assert [m["id"] for m in first["items"] + second["items"]] == made[::-1] and second["next_cursor"] is None
    exported = alice.get("/v1/models", params={"source": "exported"}, headers=dave).json()["items"]
    assert [m["id"] for m in exported] == [made[-1]]
    configs = alice.get("/v1/models", params={"source": "uploaded", "format": "config"}, headers=dave).json()
    assert [m["id"] for m in configs["items"]] == made[2::-1]
    assert first["items"][0]["exported"] is None and second["items"][0]["config"] is None  # details: GET {id}
    bad = alice.get("/v1/models", params={"cursor": "not-a-cursor"}, headers=dave)
    assert bad.status_code == 400 and "cursor" in bad.json()["detail"]


def test_a_model_a_queued_job_uses_is_not_deleted_then_goes_with_its_bytes(alice, worker, blobs, tmp_path):
    files = sharded(tmp_path / "ckpt", llama_tensors(torch.bfloat16))
    up = start(alice, files)
    send_all(alice, up, files)
    model = alice.post(f"/v1/models/uploads/{up['id']}/complete").json()
    assert {f"models/{model['id']}/{p.name}" for p in files} <= stored_files(blobs)
    named_by = [
        {"source": "uploaded", "id": model["id"]},
        {"source": "hf_config", "config": TINY_LLAMA, "weights": model["id"]},
    ]
    for spec in named_by:  # no worker takes the gpu queue here: the job stays queued
        job = alice.post(
            "/v1/jobs",
            json={"kind": "embedding_dim", "params": {"vocab_sizes": [512], "model": spec}, "device": "cuda"},
        )
        assert job.status_code == 201, job.text
        held = alice.delete(f"/v1/models/{model['id']}")
        assert held.status_code == 409 and job.json()["id"] in held.json()["detail"], held.text
        assert alice.post(f"/v1/jobs/{job.json()['id']}/cancel").status_code == 200
    assert alice.delete(f"/v1/models/{model['id']}").status_code == 204
    assert alice.get(f"/v1/models/{model['id']}").status_code == 404
    assert not any(model["id"] in f for f in stored_files(blobs))
    assert alice.delete(f"/v1/models/{model['id']}").status_code == 404


# --- the CLI ------------------------------------------------------------------------------------------------------


def test_the_cli_uploads_a_checkpoint_directory_resumes_after_ctrl_c_and_lists_shows_deletes(
    stack, keys, client, monkeypatch, tmp_path
):
    from typer.testing import CliRunner

    from api.cli.main import cli

    folder = tmp_path / "hub"
    sharded(folder, llama_tensors(torch.bfloat16, seed=2))
    (folder / "tokenizer.json").write_text("{}")  # a Hub download holds more than the model: it stays home
    env = {"GRADLAB_URL": stack.api_url, "GRADLAB_API_KEY": keys["alice"], "GRADLAB_UPLOAD_STATE": str(tmp_path / "s")}
    runner = CliRunner()
    calls = {"n": 0}
    real = Client.append_model_chunk

    def interrupted(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # Ctrl-C after two files went out
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Client, "append_model_chunk", interrupted)
    first = runner.invoke(cli, ["models", "upload", str(folder)], env=env)
    assert first.exit_code == 130, first.output  # what a Ctrl-C exits with
    upload_id = first.output.split("upload ", 1)[1].split(" ", 1)[0]
    held = client.model_upload(upload_id)
    assert sorted(f["offset"] > 0 for f in held["files"]) == [False, False, False, True, True]
    monkeypatch.setattr(Client, "append_model_chunk", real)
    second = runner.invoke(cli, ["models", "upload", str(folder)], env=env)
    assert second.exit_code == 0, second.output
    assert f"resuming upload {upload_id}" in second.output and held["model_id"] in second.output
    assert '"source": "uploaded"' in second.output

    listed = runner.invoke(cli, ["models", "list", "--json", "--format", "sharded"], env=env)
    rows = [json.loads(line) for line in listed.output.splitlines()]
    assert held["model_id"] in [r["id"] for r in rows]
    shown = runner.invoke(cli, ["models", "show", held["model_id"], "--json"], env=env)
    assert [f["name"] for f in json.loads(shown.output)["files"]] == sorted(
        p.name for p in folder.iterdir() if p.name != "tokenizer.json"
    )
    gone = runner.invoke(cli, ["models", "delete", held["model_id"]], env=env)
    assert gone.exit_code == 0, gone.output
    with pytest.raises(ApiError) as missing:
        client.model(held["model_id"])
    assert missing.value.status == 404


def test_an_abandoned_upload_is_swept_with_its_bytes(alice, worker, stack, blobs, tmp_path):
    """The worker's sweeper removes an upload past its expiry: the row, then its partial objects."""
    tensors = llama_tensors(torch.float32)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    files = [write_config(tmp_path, TINY_LLAMA), tmp_path / "model.safetensors"]
    up = start(alice, files)
    send_all(alice, up, files[:1])
    assert any(up["id"] in f for f in stored_files(blobs))
    engine = make_engine(stack.env["GRADLAB_DATABASE_URL"])
    with engine.begin() as conn:  # as if its last chunk came a day ago
        conn.execute(
            sa.text("UPDATE model_uploads SET expires_at = :past WHERE id = :id"),
            {"past": datetime.now(UTC) - timedelta(seconds=1), "id": uuid.UUID(up["id"])},
        )
    engine.dispose()
    deadline = time.monotonic() + 30
    while alice.get(f"/v1/models/uploads/{up['id']}").status_code != 404 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert_nothing_kept(alice, blobs, up)


def test_a_bfloat16_run_is_budgeted_at_two_bytes_a_parameter(alice):
    """2.6e9 parameters: weights and gradients take 19.6 GiB in float32, over a 16 GiB 'gpu' worker, and 9.8 GiB in
    bfloat16, which fits with what autograd saves (no gpu worker takes the job here; it is cancelled)."""
    big = {**TINY_GPT2, "n_embd": 4096, "n_head": 32, "n_layer": 12, "vocab_size": 50_000, "n_positions": 1024}
    params = {"model": {"source": "hf_config", "config": big}, "means": ["arithmetic"], "batch": 1, "seq_len": 16}
    job = {"kind": "init_averaging", "params": params, "device": "cuda"}
    refused(alice.post("/v1/jobs", json=job), 422, "params.model", "of a 'gpu' worker")
    params["model"]["dtype"] = "bfloat16"
    queued = alice.post("/v1/jobs", json=job)
    assert queued.status_code == 201, queued.text
    assert alice.post(f"/v1/jobs/{queued.json()['id']}/cancel").status_code == 200
