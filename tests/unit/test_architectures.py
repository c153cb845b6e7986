"""Any native transformers architecture through the inspector's real child process: the head each config is built
with, parameters counted on the meta build (equal to a model built here independently), sizes read from the config
class, refusals naming the field; the inspector's recycling by memory, its cache and its bounded queue; and the
token ids a model takes, against the range a dataset's validation records."""

from __future__ import annotations

import json
import math
import threading
import time

import numpy as np
import pytest

from core.data import ingest
from core.networks import inspector
from core.networks.architectures import accepted_types
from core.networks.build import build
from core.networks.checks import model_checks
from core.networks.meta_summary import answer
from core.networks.spec import MAX_PARAMS, HFConfigModel
from core.networks.tokens import token_rows
from tests.model_configs import FAMILIES, LLAMA_3_70B, TINY_BERT, TINY_GPT2, TINY_LLAMA, hf_model

SHAPE = {"batch": 2, "seq_len": 16, "features": None, "classes": None}


def hf(config: dict, **extra) -> dict:
    return {"source": "hf_config", "config": config, **extra}


@pytest.fixture(scope="module")
def summaries() -> dict[str, dict]:
    """Every family inspected once by the real child, with one micro-batch's activations."""
    return {name: inspector.inspect_model(hf(cfg), input=SHAPE) for name, (cfg, _) in FAMILIES.items()}


def test_at_least_twenty_families_build_with_their_head(summaries):
    assert len(FAMILIES) >= 20
    for name, (cfg, task) in FAMILIES.items():
        out = summaries[name]
        model = hf_model(cfg, task)
        assert out["task"] == task, name
        assert out["n_params"] == sum(p.numel() for p in model.parameters()), name
        assert out["activation_bytes"] > 0, name


def test_sizes_come_from_the_config_class(summaries):
    gpt2 = {"hidden": 64, "layers": 2, "heads": 2, "kv_heads": 2, "head_dim": 32, "vocab": 512, "context": 64}
    assert summaries["gpt2"]["sizes"] == {
        **gpt2,
        "labels": None,
        "ffn": 4 * 64,
        "experts_per_token": 1,
    }  # n_inner: None
    mixtral = summaries["mixtral"]["sizes"]
    assert (mixtral["ffn"], mixtral["experts_per_token"]) == (128, 2)
    qwen3 = summaries["qwen3"]["sizes"]
    assert (qwen3["heads"], qwen3["kv_heads"], qwen3["head_dim"]) == (4, 2, 32)  # explicit, not 64 / 4
    q_proj = next(
        layer for layer in summaries["qwen3"]["layers"] if layer["name"].endswith("0.self_attn.q_proj.weight")
    )
    assert q_proj["shape"] == [4 * 32, 64]
    assert summaries["distilbert"]["sizes"]["hidden"] == 64  # DistilBERT's "dim"
    mamba = summaries["mamba"]["sizes"]
    assert (mamba["heads"], mamba["head_dim"], mamba["context"]) == (None, None, None)


def test_a_model_without_attention_gets_the_checks_that_apply():
    checks = model_checks({"hidden": 64, "vocab": 512, "head_dim": None, "context": None}, 8.33)
    token, head = checks["rows"]
    assert token["applies"] and token["ok"] and token["bound"] == pytest.approx(8.33 * math.log(512))
    assert head["applies"] is False and head["ok"] is None and "no attention heads" in head["why"]
    assert checks["all_ok"] is True and "ln_N_max" not in head


def test_a_sequence_classification_config_is_not_built_as_a_masked_lm():
    cls_cfg = {**TINY_BERT, "architectures": ["BertForSequenceClassification"], "num_labels": 3}
    out = inspector.inspect_model(hf(cls_cfg))
    assert out["task"] == "sequence_classification" and out["labels"] == 3
    assert any(layer["name"] == "classifier.weight" and layer["shape"] == [3, 64] for layer in out["layers"])
    assert inspector.inspect_model(hf(TINY_BERT))["task"] == "masked_lm"
    explicit = inspector.inspect_model(hf({**TINY_GPT2, "num_labels": 5}, task="sequence_classification"))
    assert explicit["task"] == "sequence_classification" and explicit["n_params"] == sum(
        p.numel() for p in hf_model({**TINY_GPT2, "num_labels": 5}, "sequence_classification").parameters()
    )


def refusal(model: dict) -> str:
    reply = answer(json.dumps({"model": model}))
    assert "error" in reply, reply
    return reply["error"]


@pytest.mark.parametrize(
    "model, start, words",
    [
        (hf({**TINY_GPT2, "model_type": "custom"}), "config.model_type:", "no native"),
        (hf({**TINY_GPT2, "model_type": "t5"}), "config.model_type:", "no native causal or masked"),
        (hf({**TINY_GPT2, "n_head": 3}), "config.n_head:", "not a multiple"),
        (hf({**TINY_GPT2, "n_head": 0}), "config.n_head:", "a positive integer"),
        (hf({**TINY_BERT, "num_hidden_layers": -2}), "config.num_hidden_layers:", "a positive integer"),
        (hf({**TINY_GPT2, "vocab_size": 10**9}), "config.vocab_size:", "outside"),
        (hf({**TINY_LLAMA, "num_hidden_layers": 100_000}), "config.num_hidden_layers:", "outside"),
        (hf(TINY_GPT2, task="masked_lm"), "task:", "no native masked_lm class"),
        (hf({**TINY_BERT, "architectures": ["BertForTokenClassification"]}), "config.architectures:", "does not"),
        (hf({**TINY_LLAMA, "num_local_experts": 10**6, "model_type": "mixtral"}), "config.num_local_experts:", ""),
    ],
)
def test_configs_the_inspector_refuses_name_the_field(model, start, words):
    message = refusal(model)
    assert message.startswith(start) and words in message, message


@pytest.mark.parametrize(
    "config, expected",
    [
        (LLAMA_3_70B, 70_553_706_496),
        # the analytic estimate missed these two (issue 27.6): 8192·4e6 token types; 64 heads of 8192 dims
        ({**TINY_BERT, "hidden_size": 8192, "num_attention_heads": 64, "type_vocab_size": 4_000_000}, None),
        ({**TINY_LLAMA, "hidden_size": 4096, "num_attention_heads": 64, "head_dim": 65_536}, None),
    ],
)
def test_the_parameter_cap_counts_the_built_model(config, expected):
    message = refusal(hf(config))
    assert message.startswith("config:") and "exceed the limit" in message, message
    counted = int(message.split()[1].replace(",", ""))
    assert counted > MAX_PARAMS
    if expected is not None:
        assert counted == expected


def test_accepted_types_cover_the_families_under_test():
    accepted = accepted_types()
    for name, (cfg, task) in FAMILIES.items():
        assert cfg["model_type"] in accepted[task], name  # type: ignore[index]
    assert len(accepted["causal_lm"]) > 100 and len(accepted["masked_lm"]) > 30


def test_the_child_is_recycled_by_its_memory(monkeypatch):
    inspector.inspect_model(hf({**TINY_LLAMA, "vocab_size": 1001}))
    first = inspector._CHILD.pid
    assert first is not None and inspector.rss_bytes(first) > 50 * 2**20  # torch and transformers are loaded
    monkeypatch.setattr(inspector, "RECYCLE_RSS_BYTES", inspector.rss_bytes(first) // 2)
    inspector.inspect_model(hf({**TINY_LLAMA, "vocab_size": 1002}))
    assert inspector._CHILD.pid != first
    monkeypatch.undo()
    second = inspector._CHILD.pid
    inspector.inspect_model(hf({**TINY_LLAMA, "vocab_size": 1003}))
    assert inspector._CHILD.pid == second  # under the limit: kept


def test_answers_are_cached_by_the_requests_hash():
    config = {**TINY_LLAMA, "vocab_size": 1004}
    first = inspector.inspect_model(hf(config))
    inspector._CHILD.stop()  # a cached answer needs no child
    assert inspector.inspect_model(hf(dict(reversed(list(config.items()))))) == first  # key order is no difference
    assert inspector._CHILD.pid is None
    with pytest.raises(inspector.ModelRejected):
        inspector.inspect_model(hf({**config, "num_hidden_layers": 0}))
    pid = inspector._CHILD.pid
    inspector._CHILD.stop()
    with pytest.raises(inspector.ModelRejected):  # refusals are remembered too
        inspector.inspect_model(hf({**config, "num_hidden_layers": 0}))
    assert inspector._CHILD.pid is None and pid is not None


def test_a_full_queue_is_turned_away_with_a_retry_time():
    slow = hf({**LLAMA_3_70B, "num_hidden_layers": 512, "vocab_size": 1005})
    outcome: list = []

    def ask() -> None:
        try:
            inspector.inspect_model(slow, max_waiting=0)
            outcome.append("answered")
        except inspector.ModelRejected:
            outcome.append("refused")  # 512 layers of 70B-sized ones exceed the parameter cap

    inspector.inspect_model(hf({**TINY_LLAMA, "vocab_size": 1006}))  # a warm child
    first = threading.Thread(target=ask)
    first.start()
    deadline = time.monotonic() + 10
    while inspector._waiting == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(inspector.InspectorBusy) as exc:
        inspector.inspect_model(hf({**TINY_LLAMA, "vocab_size": 1007}), max_waiting=0)
    assert exc.value.retry_after >= 1
    first.join()
    assert outcome == ["refused"] and inspector._waiting == 0
    assert inspector.inspect_model(hf({**TINY_LLAMA, "vocab_size": 1007}), max_waiting=0)["n_params"] > 0


def test_a_causal_lm_takes_its_last_id_and_a_masked_lm_keeps_it_for_its_mask():
    gpt2 = build(HFConfigModel(source="hf_config", config=TINY_GPT2), device="meta")
    bert = build(HFConfigModel(source="hf_config", config=TINY_BERT), device="meta")
    assert (gpt2.usable_ids, bert.usable_ids) == (512, 511)
    rows = np.array([[0, 5, 511], [1, 2, 3]])
    assert token_rows(rows, gpt2.usable_ids, 64).max() == 511
    with pytest.raises(ValueError, match=r"token ids in \[0, 511\)"):
        token_rows(rows, bert.usable_ids, 64)


def test_the_token_id_range_is_scanned_block_by_block(tmp_path, monkeypatch):
    monkeypatch.setattr(ingest, "SCAN_VALUES", 7)  # many blocks, the extremes in the last ones
    x = np.full((10, 5), 3.0, dtype=np.float32)
    x[9, 4], x[8, 0] = 700.0, 1.0
    np.save(tmp_path / "x.npy", x)
    assert ingest.token_id_range({"x.npy": tmp_path / "x.npy"}, "arrays") == {"min": 1, "max": 700}
    x[9, 3] = 2.5
    np.save(tmp_path / "x.npy", x)
    assert ingest.token_id_range({"x.npy": tmp_path / "x.npy"}, "arrays") is None
    np.save(tmp_path / "q.npy", np.arange(5, 40, dtype=np.int32))
    np.save(tmp_path / "d.npy", np.arange(2, 30, dtype=np.int32))
    files = {"query_tokens.npy": tmp_path / "q.npy", "document_tokens.npy": tmp_path / "d.npy"}
    assert ingest.token_id_range(files, "pairs") == {"min": 2, "max": 39}
