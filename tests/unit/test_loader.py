"""The loader's views over converted datasets (values read back equal the source's), the refusal of a dataset of
the wrong kind at run time, and kinds training on text and pairs datasets through them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from core.data import load_dataset
from core.data.formats import convert
from core.data.loader import ArraysView, PairsView, TextView, as_view, open_dataset
from core.data.windows import TextWindows
from core.techniques import get_kind
from core.techniques.local import LocalContext
from core.techniques.momentum_accumulation.data import Rows

DS = "00000000-0000-4000-8000-00000000000a"


def _converted(tmp_path: Path, name: str, content: bytes, **kw):
    raw = tmp_path / name
    raw.write_bytes(content)
    out = tmp_path / f"out-{name}"
    out.mkdir()
    ins = convert(raw, filename=name, out_dir=out, max_stored_bytes=1 << 26, **kw)
    return open_dataset(ins.files, ins.meta()), ins


def _jsonl(records) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def test_arrays_view_is_dict_like_and_memory_mapped(tmp_path):
    x, y = np.arange(24.0).reshape(8, 3), np.arange(8) % 2
    raw = tmp_path / "a.npz"
    np.savez(raw, x=x, y=y)
    view, ins = _converted(tmp_path, "a.npz", raw.read_bytes())
    assert isinstance(view, ArraysView) and view.kind == "arrays"
    assert isinstance(view["x"], np.memmap) and "y" in view and view.files == ["x", "y"]
    assert (view.rows, view.columns) == (8, 3) and ins.meta()["files"] == ["x.npy", "y.npy"]
    np.testing.assert_array_equal(view["x"], x)
    np.testing.assert_array_equal(view["y"], y)
    assert as_view({"x": x}).files == ["x"] and as_view(view) is view


def test_text_view_rows_windows_and_batches(tmp_path):
    texts = ["hello", "wide world", "é"]
    view, _ = _converted(tmp_path, "t.jsonl", _jsonl({"text": t} for t in texts))
    assert isinstance(view, TextView) and len(view) == 3 and view.vocab_size == 256
    stream = b"".join(t.encode() for t in texts)
    assert [view[i].tolist() for i in range(3)] == [list(t.encode()) for t in texts]
    assert view[-1].tolist() == list("é".encode())
    with pytest.raises(IndexError):
        view[3]
    np.testing.assert_array_equal(view.lengths(), [5, 10, 2])
    assert view.tiled(np.array([2, 0]), 5).tolist() == [[0xC3, 0xA9, 0xC3, 0xA9, 0xC3], [*b"hello"]]
    assert view.windows(np.array([3, 0]), 5).tolist() == [list(stream[3:8]), list(stream[0:5])]
    with pytest.raises(ValueError, match="17 tokens are fewer than one window of 18"):
        view.windows(np.array([0]), 18)
    assert [len(b) for b in view.batches(2)] == [2, 1]


def test_pairs_view(tmp_path):
    records = [{"query": "q1", "document": "doc one"}, {"query": "q2", "document": "doc two"}]
    view, _ = _converted(tmp_path, "p.jsonl", _jsonl(records))
    assert isinstance(view, PairsView) and len(view) == 2
    assert bytes(view.document[1].astype(np.uint8)) == b"doc two" and bytes(view.query[0].astype(np.uint8)) == b"q1"


def test_open_dataset_refuses_missing_files_and_unknown_kinds(tmp_path):
    with pytest.raises(ValueError, match="dataset: a text dataset needs tokens.npy"):
        open_dataset({}, {"kind": "text"})
    with pytest.raises(ValueError, match="dataset: unknown dataset kind 'images'"):
        open_dataset({}, {"kind": "images"})
    bad = tmp_path / "offsets.npy"
    np.save(bad, np.array([0, 5], dtype=np.int64))
    np.save(tmp_path / "tokens.npy", np.arange(4, dtype=np.int32))
    with pytest.raises(ValueError, match="offsets do not span its 4 tokens"):
        open_dataset({"tokens.npy": tmp_path / "tokens.npy", "offsets.npy": bad}, {"kind": "text"})


def test_a_job_refuses_a_dataset_of_the_wrong_kind(tmp_path):
    view, _ = _converted(tmp_path, "t.jsonl", _jsonl({"text": t} for t in ["ab", "cd"]))
    ctx = LocalContext(datasets={DS: view})
    with pytest.raises(ValueError, match=f"dataset: {DS} is a text dataset; this job needs arrays"):
        load_dataset(DS, ctx)
    assert load_dataset(DS, ctx, ("arrays", "text")) is view
    assert load_dataset("clusters", ctx).rows == 2000  # built-ins come through the same loader


def test_rows_read_standardised_batches_equal_to_the_whole_array_computation():
    rng = np.random.default_rng(1)
    x, y = rng.normal(3.0, 2.0, size=(500, 6)).astype(np.float32), rng.integers(0, 4, 500)
    rows = Rows(x, y, 0.2, 5, torch.float64, torch.device("cpu"), standardize=True, eval_rows=8192, probe_rows=512)
    split = np.random.default_rng(5).permutation(500)
    hold, train = split[:100], split[100:]
    xt = x[train].astype(np.float64)
    centre, scale = xt.mean(), xt.std() + 1e-8
    idx = np.array([7, 3, 399, 3])
    bx, by = rows.batch(idx)
    np.testing.assert_allclose(bx.numpy(), (x[train[idx]] - centre) / scale, rtol=1e-12)
    np.testing.assert_array_equal(by.numpy(), y[train[idx]])
    np.testing.assert_allclose(rows.hold_x.numpy(), (x[hold] - centre) / scale, rtol=1e-12)
    assert rows.n_train == 400


def test_text_windows_split_the_stream_at_a_row_boundary(tmp_path):
    texts = ["abcdefgh"] * 10  # 80 tokens; held out: the last 2 rows (16 tokens)
    view, _ = _converted(tmp_path, "t.jsonl", _jsonl({"text": t} for t in texts))
    cpu = torch.device("cpu")
    windows = TextWindows(view, 8, vocab=300, holdout=0.2, device=cpu, eval_rows=8192, probe_rows=512)
    assert windows.n_train == 8 and windows.hold_x.shape == (2, 8) and windows.probe_x.shape == (8, 8)
    assert windows.batch(np.array([5]))[0].tolist() == [list(b"abcdefgh")]
    capped = TextWindows(view, 8, vocab=300, holdout=0.2, device=cpu, eval_rows=1, probe_rows=3)
    assert capped.hold_x.tolist() == windows.hold_x[:1].tolist() and capped.probe_x.shape == (3, 8)
    with pytest.raises(ValueError, match=r"token ids reach 104; the model takes ids in \[0, 100\)"):
        TextWindows(view, 8, vocab=100, holdout=0.2, device=cpu, eval_rows=8192, probe_rows=512)


def test_momentum_accumulation_trains_a_token_model_on_a_text_dataset(tmp_path):
    """A periodic text is learnable: the causal LM's held-out loss falls well below the uniform 256-way loss."""
    view, _ = _converted(tmp_path, "t.jsonl", _jsonl({"text": "abcd" * 40} for _ in range(20)))
    kind = get_kind("momentum_accumulation")
    model = {
        "source": "builtin",
        "arch": "causal_lm",
        "hidden": 32,
        "heads": 2,
        "depth": 1,
        "vocab_size": 260,
        "context": 16,
    }
    params = kind.params(
        dataset=DS,
        model=model,
        optimizer="adam",
        lr=0.01,
        accum_steps=2,
        micro_batch=8,
        steps=60,
        seeds=1,
        eval_every=30,
        arms=["explicit_buffer", "chi_exact"],
    )
    result = kind.run(params, LocalContext(datasets={DS: view}))
    assert result["task"] == "causal_lm"
    loss = result["arms"]["chi_exact"]["heldout_loss"]
    assert loss[0] > math.log(100) and loss[-1] < 1.0


@pytest.mark.parametrize("towers", ["shared", "two_tower"])
def test_contrastive_accumulation_trains_on_query_document_pairs(tmp_path, towers):
    """Pairs are the positives; the chunked gradient still equals the full-batch one on them."""
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta", "omega", "sigma"]
    records = [
        {"query": w, "document": f"about {w} {int(n)}"} for w, n in zip(rng.choice(words, 40), rng.integers(0, 9, 40))
    ]
    view, _ = _converted(tmp_path, "p.jsonl", _jsonl(records))
    kind = get_kind("contrastive_accumulation")
    model = {
        "source": "builtin",
        "arch": "transformer_encoder",
        "hidden": 16,
        "heads": 2,
        "depth": 1,
        "vocab_size": 260,
        "context": 12,
    }
    params = kind.params(dataset=DS, model=model, towers=towers, batch_size=16, chunk_size=4, steps=3)
    result = kind.run(params, LocalContext(datasets={DS: view}))
    assert result["grad_check"]["rel_diff_accumulated"] < 1e-4
    assert result["linear_probe_accuracy"]["chunked"] is None  # pairs carry no labels to probe
    assert all(math.isfinite(v) for v in result["loss_curve"])


def test_eg_stepsize_trains_a_token_model_on_a_text_dataset_as_momentum_does(tmp_path):
    """The same periodic text through eg_stepsize: its windows are momentum_accumulation's (``TextWindows``), the
    held-out set is the last fifth of the rows capped at eval_size windows, and the loss falls below uniform."""
    view, _ = _converted(tmp_path, "t.jsonl", _jsonl({"text": "abcd" * 40} for _ in range(20)))
    kind = get_kind("eg_stepsize")
    model = {"source": "builtin", "arch": "causal_lm", "hidden": 32, "heads": 2, "depth": 1}
    model |= {"vocab_size": 260, "context": 16}
    params = kind.params(
        dataset=DS,
        model=model,
        optimizers=[{"name": "adam", "lr": 0.01}],
        lr_scales=[1.0],
        steps=60,
        batch_size=8,
        eval_every=30,
        eval_size=3,
    )
    result = kind.run(params, LocalContext(datasets={DS: view}))
    assert (result["classes"], result["input_dim"]) == (260, 16)  # vocabulary, window = the model's context
    loss = result["curves"]["adam"]["x1"]["test_loss"]
    assert loss[0] > math.log(100) and loss[-1] < 1.0
    assert kind.spec.dataset_needs(params).kinds == ("arrays", "text")
    from core.networks.build import build
    from core.techniques.eg_stepsize.run import _Data

    probe = build(params.model, device="meta")
    data = _Data(params, LocalContext(datasets={DS: view}), probe)
    # 20 rows of 160 tokens: the last 4 rows (640 tokens, 40 windows of 16) are held out, 3 of them scored
    assert data.n_train == 16 * 160 // 16 and data.x_eval.shape == (3, 16)
    assert data.x_eval[0].tolist() == list(b"abcd" * 4)
