"""A model's files before anything is built: JSON parsed with bounds, what a set of file names is, whether a sharded
checkpoint's index and shards agree; and how safetensors files load into a module (memory-mapped, one tensor at a
time, in the spec's run dtype)."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import textwrap

import pytest
import torch
from pydantic import TypeAdapter
from safetensors.torch import save_file

from core.networks.build import build
from core.networks.checkpoint import CheckpointRejected, layout_of, merge_shards, weight_map
from core.networks.safetensors_header import WeightsRejected, read_header
from core.networks.spec import ModelSpec
from core.networks.strict_json import JsonRefused, parse
from tests.model_configs import TINY_LLAMA, hf_model
from tests.stack import ROOT

SPEC = TypeAdapter(ModelSpec)


def test_the_api_side_of_models_imports_neither_torch_nor_transformers():
    code = (
        "import sys; import core.networks.service, core.networks.uploads, core.networks.intake, "
        "core.networks.stored, core.jobs.holds, api.routes.models; "
        "bad = {'torch', 'transformers', 'safetensors'} & set(sys.modules); "
        "sys.exit(f'imported {bad}' if bad else 0)"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


# --- JSON with bounds ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, words",
    [
        (b"[" * 30_000 + b"]" * 30_000, "nested 30000 deep, more than 32"),
        (b'{"a": "[[[[", "b": ' + b"[" * 40 + b"]" * 40 + b"}", "nested 41 deep"),  # brackets in strings: not counted
        (b'{"eps": NaN}', "NaN is not a JSON number"),
        (b'{"eps": -Infinity}', "-Infinity is not a JSON number"),
        (b'{"eps": 1e999}', "beyond the range of a finite number"),
        (b'{"n": ' + b"9" * 5000 + b"}", "an integer of 5000 digits; at most 20"),
        (b'{"n": -' + b"9" * 21 + b"}", "an integer of 21 digits"),
        (b'{"a": 1,}', "not JSON"),
        (b"\xff\xfe{}", "not JSON"),
    ],
)
def test_json_beyond_its_bounds_is_refused_naming_the_file(raw, words):
    with pytest.raises(JsonRefused, match=f"^config.json: .*{words.replace('[', '.')}"):
        parse(raw, "config.json", 32)


def test_json_within_its_bounds_parses_as_usual():
    raw = b'{"a": [[1, -2.5e3]], "n": 18446744073709551615, "s": "]]]]", "t": true, "z": null}'
    assert parse(raw, "x", 3) == json.loads(raw)


def _safetensors(header: bytes, data: bytes = b"") -> bytes:
    return struct.pack("<Q", len(header)) + header + data


@pytest.mark.parametrize(
    "blob, words",
    [
        (_safetensors(b'{"w": ' + b"[" * 30_000 + b"]" * 30_000 + b"}"), "nested 30001 deep"),
        (_safetensors(b'{"w": {"dtype": "F32", "shape": [' + b"9" * 5000 + b'], "data_offsets": [0, 4]}}'), "digits"),
        (_safetensors(b'{"w": {"dtype": "F32", "shape": [true], "data_offsets": [0, 4]}}', b"\0" * 4), "shape"),
        (_safetensors(b'{"w": {"dtype": "F32", "shape": [' + b"1," * 16 + b'1], "data_offsets": [0, 4]}}'), "16"),
        (_safetensors(b'{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, NaN]}}'), "NaN"),
    ],
)
def test_a_safetensors_header_beyond_its_bounds_is_refused_naming_the_file(blob, words):
    with pytest.raises(WeightsRejected, match=f"^model-00002-of-00003.safetensors: .*{words}"):
        read_header(io.BytesIO(blob), len(blob), "model-00002-of-00003.safetensors")


# --- what the files are -------------------------------------------------------------------------------------------


def test_layouts_from_file_names():
    single = layout_of(["config.json", "model.safetensors"])
    assert (single.format, single.config, single.weights) == ("safetensors", "config.json", ("model.safetensors",))
    shards = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    sharded = layout_of(["model.safetensors.index.json", *shards, "config.json"])
    assert (sharded.format, sharded.index, sharded.weights) == (
        "sharded",
        "model.safetensors.index.json",
        tuple(shards),
    )
    assert layout_of(["vae.pt2"]).archive == "vae.pt2" and layout_of(["config.json"]).format == "config"


@pytest.mark.parametrize(
    "names, words",
    [
        ([], "files: 0 files"),
        (["config.json", "model.ckpt"], "files[1].name: model.ckpt is a pickled checkpoint"),
        (["config.json", "model.safetensors", "model.safetensors"], "files[2].name: model.safetensors is sent twice"),
        (["config.json", "tokenizer.json"], "files[1].name: tokenizer.json is none of"),
        (["config.json", ".hidden.safetensors"], "not a plain file name"),
        (["a.pt2", "b.pt2"], "sent alone"),
        (["model.safetensors"], "config.json is missing"),
        (["config.json", "a.safetensors", "b.safetensors"], "without an index"),
        (["config.json", "model.safetensors.index.json"], "names shards, and none is sent"),
        (["config.json", "a.safetensors.index.json", "b.safetensors.index.json", "x.safetensors"], "2 index files"),
    ],
)
def test_file_sets_that_make_no_model_are_refused(names, words):
    with pytest.raises(CheckpointRejected, match=words.replace("[", r"\[").replace(".", r"\.")):
        layout_of(names)


HEADERS = {
    "s1.safetensors": {"a": ["F32", [2]], "b": ["F32", [3]]},
    "s2.safetensors": {"c": ["BF16", [4]]},
}
MAP = {"a": "s1.safetensors", "b": "s1.safetensors", "c": "s2.safetensors"}


def test_agreeing_shards_merge_into_the_whole_checkpoint():
    assert merge_shards("i.json", MAP, HEADERS) == {"a": ["F32", [2]], "b": ["F32", [3]], "c": ["BF16", [4]]}


@pytest.mark.parametrize(
    "mapping, headers, words",
    [
        ({**MAP, "d": "s3.safetensors"}, HEADERS, "files: s3.safetensors, which i.json names, is missing"),
        (MAP, {**HEADERS, "s3.safetensors": {"d": ["F32", [1]]}}, "s3.safetensors: i.json names no tensor in it"),
        (
            MAP,
            {**HEADERS, "s2.safetensors": {"c": ["BF16", [4]], "a": ["F32", [2]]}},
            "s2.safetensors: tensor a is also in s1.safetensors",
        ),
        ({**MAP, "d": "s2.safetensors"}, HEADERS, "s2.safetensors: i.json puts tensor d in it, and the shard lacks it"),
        ({**MAP, "b": "s2.safetensors"}, HEADERS, "s1.safetensors: holds tensor b, which i.json puts in s2"),
        ({"a": "s1.safetensors", "c": "s2.safetensors"}, HEADERS, "s1.safetensors: tensor b is not in i.json"),
    ],
)
def test_shards_and_an_index_that_disagree_are_refused_naming_the_shard(mapping, headers, words):
    with pytest.raises(CheckpointRejected, match=f"^{words}"):
        merge_shards("i.json", mapping, headers)


@pytest.mark.parametrize(
    "raw, words",
    [
        (b'{"weight_map": {}}', "expected"),
        (b'{"weight_map": {"a": 3}}', "not a file name"),
        (b"[]", "expected"),
        (b'{"weight_map": ' + b"{" * 10 + b"}" * 10 + b"}", "nested 11 deep"),
    ],
)
def test_an_index_without_a_weight_map_of_file_names_is_refused(raw, words):
    with pytest.raises(CheckpointRejected, match=words):
        weight_map(raw, "model.safetensors.index.json")


# --- loading ------------------------------------------------------------------------------------------------------


def _shards(tmp_path, dtype: torch.dtype) -> tuple[list, dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    tensors = {n: torch.randn(p.shape, generator=gen).to(dtype) for n, p in hf_model(TINY_LLAMA).state_dict().items()}
    names = sorted(tensors)
    files = []
    for i in range(3):
        path = tmp_path / f"model-{i + 1:05d}-of-00003.safetensors"
        save_file({n: tensors[n] for n in names[i::3]}, str(path))
        files.append(path)
    return files, tensors


@pytest.mark.parametrize("run", ["float32", "bfloat16"])
def test_bfloat16_shards_load_as_stored_into_either_run_dtype(run, tmp_path):
    files, tensors = _shards(tmp_path, torch.bfloat16)
    built = build(SPEC.validate_python({"source": "hf_config", "config": TINY_LLAMA, "dtype": run}), weights=files)
    state = built.module.state_dict()
    assert {t.dtype for t in built.module.parameters()} == {getattr(torch, run)}
    for name, stored in tensors.items():
        assert torch.equal(state[name], stored.to(state[name].dtype)), name  # bf16 -> float32 is exact
    ids = torch.randint(0, 512, (2, 8))
    assert built.logits(ids).dtype == getattr(torch, run)


def test_a_mismatch_is_refused_before_any_weight_changes(tmp_path):
    files, tensors = _shards(tmp_path, torch.float32)
    spec = SPEC.validate_python({"source": "hf_config", "config": {**TINY_LLAMA, "intermediate_size": 96}})
    with pytest.raises(ValueError, match="has shape"):
        build(spec, weights=files)
    save_file({"model.norm.weight": tensors["model.norm.weight"]}, str(tmp_path / "extra.safetensors"))
    plain = build(SPEC.validate_python({"source": "hf_config", "config": TINY_LLAMA}))
    before = {n: t.clone() for n, t in plain.module.state_dict().items()}
    from core.networks.weights import load_weights

    with pytest.raises(ValueError, match="model.norm.weight is in"):
        load_weights(plain.module, [*files, tmp_path / "extra.safetensors"])
    with pytest.raises(ValueError, match="tensors missing"):
        load_weights(plain.module, files[:2])
    assert all(torch.equal(t, before[n]) for n, t in plain.module.state_dict().items())


def test_weights_load_one_tensor_at_a_time_from_the_mapped_file(tmp_path):
    """96 MB of weights in 24 tensors: the process's anonymous memory grows by about one tensor while they load
    (the file's pages are mapped, not copied), where reading the file and then its tensors took twice the file."""
    script = textwrap.dedent(
        f"""
        import threading, time, torch
        from torch import nn
        from safetensors.torch import save_file
        from core.networks.weights import load_weights

        def anon():
            for line in open("/proc/self/status"):
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024

        module = nn.Sequential(*(nn.Linear(1024, 1024, bias=False) for _ in range(24)))
        save_file({{n: torch.randn_like(p) for n, p in module.state_dict().items()}}, "{tmp_path}/w.safetensors")
        base, peak, done = anon(), [0], threading.Event()

        def sample():
            while not done.is_set():
                peak[0] = max(peak[0], anon() - base)
                time.sleep(0.001)

        sampler = threading.Thread(target=sample)
        sampler.start()
        load_weights(module, ["{tmp_path}/w.safetensors"])
        done.set()
        sampler.join()
        print(peak[0])
        """
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, check=True, capture_output=True, text=True)
    grew, file_bytes = int(out.stdout.split()[-1]), 24 * 1024 * 1024 * 4
    assert grew < 0.25 * file_bytes, (
        f"anonymous memory grew {grew / 2**20:.1f} MiB for a {file_bytes / 2**20:.0f} MiB file"
    )
