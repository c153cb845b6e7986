"""Model sources: spec checks, builds of every built-in and tiny HF family, safetensors, the n > c·ln N checks on a
model's sizes, init tables and variance ratios, and accumulation memory (docs/techniques.md: embedding_dim,
momentum_accumulation, init_averaging)."""

from __future__ import annotations

import io
import itertools
import json
import math
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch
from pydantic import TypeAdapter, ValidationError

from core.averaged_init import averaged_variance
from core.networks.analysis import (
    accumulation_memory,
    layer_table,
    reinit_nonsquare_,
    variance_ratios,
)
from core.networks.build import BuiltModel, build
from core.networks.checks import embedding_sizes, model_checks
from core.networks.safetensors_header import WeightsRejected, read_header
from core.networks.spec import ModelSpec
from tests.model_configs import TINY, TINY_BERT, TINY_GPT2, hf_model
from tests.stack import ROOT

SPEC = TypeAdapter(ModelSpec)


def spec(**fields):
    return SPEC.validate_python(fields)


def test_the_spec_side_imports_neither_torch_nor_transformers():
    code = (
        "import sys; import core.networks.spec, core.networks.checks, core.networks.budget, core.networks.inspector, "
        "core.networks.safetensors_header, core.networks.intake, core.jobs.admission; "
        "bad = {'torch', 'transformers'} & set(sys.modules); "
        "sys.exit(f'imported {bad}' if bad else 0)"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


@pytest.mark.parametrize(
    "config, field, words",
    [
        ({**TINY_GPT2, "auto_map": {"AutoModel": "x.Y"}}, "config.auto_map", "remote code"),
        ({**TINY_GPT2, "trust_remote_code": True}, "config.trust_remote_code", "never executed"),
        ({k: v for k, v in TINY_GPT2.items() if k != "model_type"}, "config.model_type", "required"),
        ({**TINY_GPT2, "n_embd": float("nan")}, "config.n_embd", "not a finite number"),
    ],
)
def test_unsafe_configs_are_refused_by_the_spec_naming_the_field(config, field, words):
    with pytest.raises(ValidationError) as exc:
        spec(source="hf_config", config=config)
    message = exc.value.errors()[0]["msg"]
    assert f"{field}:" in message and words in message


def test_builtin_transformer_heads_must_divide_hidden():
    with pytest.raises(ValidationError, match="heads"):
        spec(source="builtin", arch="causal_lm", hidden=64, heads=5)


@pytest.mark.parametrize("arch", ["mlp", "cnn", "resnet", "transformer_encoder", "causal_lm"])
def test_every_builtin_trains_and_counts_the_same_parameters_on_meta(arch):
    s = spec(source="builtin", arch=arch, hidden=32, depth=2, channels=4, heads=4, vocab_size=64, context=16)
    meta = build(s, features=64, classes=10, device="meta")
    real = build(s, features=64, classes=10)
    assert sum(p.numel() for p in meta.module.parameters()) == sum(p.numel() for p in real.module.parameters())
    inputs, targets = real.sample_inputs(5, 12, 64, 10, "cpu", torch.Generator().manual_seed(0))
    loss = real.loss(inputs, targets)
    loss.backward()
    classes = 64 if real.tokens else 10
    value = float(loss.detach())
    assert math.isfinite(value) and abs(value - math.log(classes)) < 1.5
    assert all(p.grad is not None for p in real.module.parameters())


def test_causal_lm_loss_ignores_the_future():
    built = build(spec(source="builtin", arch="causal_lm", hidden=32, heads=4, vocab_size=64, context=16))
    ids = torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(1))
    changed = ids.clone()
    changed[:, -1] = (changed[:, -1] + 1) % 64
    first = built.logits(ids)[:, :-1]
    assert torch.allclose(first, built.logits(changed)[:, :-1], atol=1e-5)


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama"])
def test_safetensors_weights_round_trip(family, tmp_path):
    source = hf_model(TINY[family])
    source.save_pretrained(tmp_path, safe_serialization=True)
    blob = (tmp_path / "model.safetensors").read_bytes()
    header, _ = read_header(io.BytesIO(blob), len(blob))
    assert set(header) <= set(source.state_dict())
    built = build(spec(source="hf_config", config=TINY[family]), weights=[tmp_path / "model.safetensors"])
    ids = torch.randint(0, 512, (2, 12), generator=torch.Generator().manual_seed(0))
    source.eval(), built.module.eval()
    assert torch.equal(built.logits(ids), source(input_ids=ids).logits)


def _safetensors(entries: dict, data: bytes) -> bytes:
    header = json.dumps(entries).encode()
    return struct.pack("<Q", len(header)) + header + data


@pytest.mark.parametrize(
    "blob, words",
    [
        (b"\x80\x04\x95" + b"\0" * 20, "pickle"),
        (b"PK\x03\x04" + b"\0" * 20, "pickle"),
        (struct.pack("<Q", 10**9) + b"{}", "header length"),
        (_safetensors({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}, b"\0" * 8), "outside"),
        (
            _safetensors({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 12]}}, b"\0" * 12),
            "bytes for shape",
        ),
        (
            _safetensors(
                {
                    "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                    "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
                },
                b"\0" * 12,
            ),
            "overlaps",
        ),
        (_safetensors({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 8), "cover"),
        (_safetensors({"w": {"dtype": "O", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4), "dtype"),
    ],
)
def test_malformed_safetensors_headers_are_refused_before_the_data(blob, words):
    with pytest.raises(WeightsRejected, match=words):
        read_header(io.BytesIO(blob), len(blob))


def test_model_checks_on_gpt2_small_sizes():
    gpt2_small = {
        "model_type": "gpt2",
        "n_embd": 768,
        "n_layer": 12,
        "n_head": 12,
        "vocab_size": 50257,
        "n_positions": 1024,
    }
    checks = model_checks(embedding_sizes(spec(source="hf_config", config=gpt2_small)), 8.33)
    token, head = checks["rows"]
    assert (token["n"], token["N"]) == (768, 50257) and token["bound"] == pytest.approx(8.33 * math.log(50257))
    assert (head["n"], head["N"]) == (64, 1024) and head["bound"] == pytest.approx(8.33 * math.log(1024))
    assert token["ok"] and head["ok"] and checks["all_ok"]
    assert head["ln_N_max"] == pytest.approx(64 / 8.33) and head["N_max"] == pytest.approx(math.exp(64 / 8.33))
    narrow = model_checks({"hidden": 64, "vocab": 50257, "head_dim": 16, "context": 4096}, 8.33)
    assert [r["ok"] for r in narrow["rows"]] == [False, False]


def test_layer_table_lists_every_nonsquare_weight_with_its_init_variance():
    built = build(spec(source="hf_config", config=TINY_BERT))
    rows = layer_table(built.module, ["arithmetic", "geometric"])
    shapes = {r["name"]: tuple(r["shape"]) for r in rows}
    expected = {
        n: tuple(p.shape) for n, p in built.module.named_parameters() if p.dim() == 2 and p.shape[0] != p.shape[1]
    }
    assert shapes == expected and any("intermediate" in n for n in shapes)
    for r in rows:
        assert r["variance"]["arithmetic"] == pytest.approx(2 / (r["fan_in"] + r["fan_out"]))
        if "embeddings" not in r["name"]:  # BERT draws dense weights from N(0, initializer_range²)
            assert r["current_variance"] == pytest.approx(0.02**2, rel=0.2)


@pytest.mark.parametrize("mean", ["arithmetic", "geometric", "harmonic"])
def test_variance_ratios_of_a_linear_chain_match_the_product_formula(mean):
    widths = [64, 512, 128, 16]
    chain = torch.nn.Sequential(*[torch.nn.Linear(m, n, bias=False) for m, n in itertools.pairwise(widths)])
    built = BuiltModel(chain, "classify")
    gen = torch.Generator().manual_seed(0)
    fwd = bwd = 0.0
    trials = 8
    for _ in range(trials):
        reinit_nonsquare_(chain, mean, "normal", gen)
        r = variance_ratios(built, torch.randn(1024, widths[0], generator=gen), gen)
        fwd, bwd = fwd + r["forward_ratio"] / trials, bwd + r["backward_ratio"] / trials
    pred_fwd = math.prod(m * averaged_variance(m, n, mean) for m, n in itertools.pairwise(widths))
    pred_bwd = math.prod(n * averaged_variance(m, n, mean) for m, n in itertools.pairwise(widths))
    assert fwd == pytest.approx(pred_fwd, rel=0.15) and bwd == pytest.approx(pred_bwd, rel=0.15)


def test_variance_ratios_run_through_a_token_model():
    built = build(spec(source="hf_config", config=TINY_GPT2))
    gen = torch.Generator().manual_seed(0)
    ids, _ = built.sample_inputs(4, 16, None, None, "cpu", gen)
    own = variance_ratios(built, ids, gen)
    reinit_nonsquare_(built.module, "geometric", "normal", gen)
    averaged = variance_ratios(built, ids, gen)
    assert all(math.isfinite(v) and v > 0 for v in (*own.values(), *averaged.values()))
    assert own != averaged


@pytest.mark.parametrize("optimizer, states", [("adam", 2), ("sgdm", 1)])
def test_accumulating_in_the_momentum_saves_exactly_one_parameter_sized_tensor(optimizer, states):
    built = build(spec(source="hf_config", config=TINY_GPT2))
    gen = torch.Generator().manual_seed(0)
    batches = [built.sample_inputs(2, 16, None, None, "cpu", gen) for _ in range(4)]
    mem = accumulation_memory(built, batches, optimizer)
    n_params = sum(p.numel() for p in built.module.parameters())
    assert mem.param_bytes == 4 * n_params
    assert mem.chi_exact_bytes == states * 4 * n_params
    assert mem.saving == 4 * n_params and mem.as_dict()["saving_is_one_parameter_sized_tensor"]


def test_eg_stepsize_trains_a_builtin_causal_lm_on_digits_as_tokens():
    from core.techniques import get_kind
    from core.techniques.local import LocalContext

    kind = get_kind("eg_stepsize")
    params = kind.params(
        model={
            "source": "builtin",
            "arch": "causal_lm",
            "hidden": 16,
            "heads": 2,
            "depth": 1,
            "vocab_size": 24,
            "context": 64,
        },
        optimizers=[{"name": "adam", "lr": 0.01}, {"name": "eg_stepsize", "lr": 0.01}],
        lr_scales=[1.0],
        steps=10,
        batch_size=8,
        eval_every=10,
        eval_size=32,
    )
    result = kind.run(params, LocalContext())
    assert result["classes"] == 24 and result["input_dim"] == 64  # a 64-token sequence of pixel levels per image
    first, last = (result["curves"]["adam"]["x1"]["test_loss"][i] for i in (0, -1))
    assert first == pytest.approx(math.log(24), abs=0.5) and last < first


def test_token_models_refuse_input_rotations_and_chain_bounds_refuse_non_chains():
    from core.techniques import specs

    causal = {"source": "builtin", "arch": "causal_lm"}
    with pytest.raises(ValidationError, match="shift_every: shifts rotate continuous input rows"):
        specs()["eg_stepsize"].params(model=causal, shift_every=10, eval_every=10)
    bound = specs()["gradient_penalty_bound"].params
    with pytest.raises(ValidationError, match="per-layer factors of the bound are undefined"):
        bound(model={"source": "hf_config", "config": TINY_GPT2})
    chain = bound(model={"source": "builtin", "arch": "mlp", "hidden": 16, "depth": 3})
    assert chain.widths == [16, 16, 16] and chain.activation == "relu"
    assert bound.model_validate(chain.model_dump(mode="json")).widths == [16, 16, 16]


def test_contrastive_towers_pooled_from_a_transformer_give_the_exact_full_batch_gradient():
    from core.techniques import get_kind
    from core.techniques.local import LocalContext

    rng = np.random.default_rng(0)
    ctx = LocalContext(
        datasets={
            "00000000-0000-0000-0000-00000000000a": {
                "x": rng.integers(0, 30, size=(40, 12)).astype(np.float32),
                "y": rng.integers(0, 2, size=40),
            }
        }
    )
    kind = get_kind("contrastive_accumulation")
    params = kind.params(
        dataset="00000000-0000-0000-0000-00000000000a",
        towers="two_tower",
        batch_size=8,
        chunk_size=2,
        steps=1,
        model={
            "source": "builtin",
            "arch": "transformer_encoder",
            "hidden": 16,
            "heads": 2,
            "depth": 1,
            "vocab_size": 32,
            "context": 16,
        },
        pooling="cls",
    )
    check = kind.run(params, ctx)["grad_check"]
    assert check["rel_diff_accumulated"] < 1e-4 and check["rel_diff_naive"] > 1e-2
