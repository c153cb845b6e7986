"""The checks of a model's files at and around each limit: JSON integers of 20 and 21 digits, nesting at the limit
and one past it; a safetensors header whose length fills the file exactly or by one byte too many, tensors that
tile the data or leave a gap, overlap or fall one byte short, each dtype's width; 1024 files and 1025; names of
255 characters and 256; weight maps and shards that disagree; and weights loaded by name with tied aliases."""

from __future__ import annotations

import io
import json
import struct

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from core.errors import TooLarge
from core.networks.checkpoint import MAX_FILES, CheckpointRejected, layout_of, merge_shards, weight_map
from core.networks.safetensors_header import (
    DTYPE_BYTES,
    MAX_HEADER_BYTES,
    MAX_RANK,
    WeightsRejected,
    header_length,
    read_header,
)
from core.networks.strict_json import MAX_INT_DIGITS, JsonRefused, parse
from core.networks.uploads import start_upload
from core.networks.weights import load_weights
from core.settings import Settings


# --- strict JSON -------------------------------------------------------------------------------------------------
def test_integers_of_up_to_twenty_figures_either_sign():
    assert MAX_INT_DIGITS == 20
    assert parse(b"[" + b"9" * 20 + b", -" + b"9" * 20 + b"]", "f", 1) == [10**20 - 1, -(10**20 - 1)]
    with pytest.raises(JsonRefused, match="^f: an integer of 21 digits; at most 20$"):
        parse(b"1" + b"0" * 20, "f", 1)
    with pytest.raises(JsonRefused, match="an integer of 21 digits"):
        parse(b"-1" + b"0" * 20, "f", 1)


def test_nesting_at_the_limit_and_one_past():
    assert parse(b'{"a": [[1]]}', "f", 3) == {"a": [[1]]}
    with pytest.raises(JsonRefused, match="^f: JSON nested 4 deep, more than 3$"):
        parse(b'{"a": [[[1]]]}', "f", 3)
    assert parse(b"1.5e300", "f", 0) == 1.5e300 and parse(b"-0.25", "f", 0) == -0.25
    with pytest.raises(JsonRefused, match=r"^f: -1e400 is beyond the range"):
        parse(b"-1e400", "f", 0)
    long = b"1." + b"0" * 60 + b"e999"  # a refusal quotes the number's first 40 characters
    with pytest.raises(JsonRefused, match=r"^f: 1\.0{38} is beyond the range of a finite number$"):
        parse(long, "f", 0)
    with pytest.raises(JsonRefused, match="^f: Infinity is not a JSON number"):
        parse(b"Infinity", "f", 0)


# --- safetensors headers -----------------------------------------------------------------------------------------
def _blob(entries: dict, data_bytes: int, pad_header: int = 0) -> bytes:
    header = json.dumps(entries).encode() + b" " * pad_header
    return struct.pack("<Q", len(header)) + header + b"\0" * data_bytes


def _read(blob: bytes, total: int | None = None):
    return read_header(io.BytesIO(blob), len(blob) if total is None else total, "w.safetensors")


def _entry(dtype: str, shape: list, begin: int, end: int) -> dict:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def test_tensors_tiling_the_data_are_read_with_the_header_length():
    entries = {
        "b": _entry("F16", [3], 8, 14),
        "a": _entry("F64", [1], 0, 8),
        "c": _entry("BOOL", [2, 1], 14, 16),
        "__metadata__": {"format": "pt"},
    }
    blob = _blob(entries, 16)
    tensors, length = _read(blob)
    assert tensors == {"b": ["F16", [3]], "a": ["F64", [1]], "c": ["BOOL", [2, 1]]}
    assert length == len(blob) - 16  # 8 bytes of length, then the header


@pytest.mark.parametrize(("dtype", "width"), sorted(DTYPE_BYTES.items()))
def test_each_dtypes_width(dtype, width):
    assert _read(_blob({"t": _entry(dtype, [2, 3], 0, 6 * width)}, 6 * width))[0] == {"t": [dtype, [2, 3]]}
    with pytest.raises(WeightsRejected, match=f"t: {6 * width + 1} bytes for shape \\[2, 3\\] of {dtype}"):
        _read(_blob({"t": _entry(dtype, [2, 3], 0, 6 * width + 1)}, 6 * width + 1))


def test_dtype_widths_are_torchs_element_sizes():
    torch_dtypes = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                    "BOOL": torch.bool}  # fmt: skip
    assert DTYPE_BYTES == {name: dtype.itemsize for name, dtype in torch_dtypes.items()}


@pytest.mark.parametrize(
    ("entries", "data", "words"),
    [
        ({"a": _entry("F32", [1], 0, 4), "b": _entry("F32", [1], 8, 12)}, 12, "overlaps or leaves gaps"),
        ({"a": _entry("F32", [2], 0, 8), "b": _entry("F32", [1], 4, 8)}, 8, "overlaps or leaves gaps"),
        ({"a": _entry("F32", [1], 4, 8)}, 8, "overlaps or leaves gaps"),  # data before the first tensor
        ({"a": _entry("F32", [1], 0, 4)}, 5, "the tensors cover 4 of 5 data bytes"),
        ({"a": _entry("F32", [2], 0, 8)}, 7, "data_offsets outside the file's data"),
        ({"a": _entry("F32", [1], 4, 0)}, 4, "data_offsets outside"),
        ({"a": _entry("F32", [1], -4, 0)}, 4, "data_offsets outside"),
        ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4, 8]}}, 8, "data_offsets outside"),
        ({"a": {"dtype": "F32", "shape": [0], "data_offsets": [0]}}, 0, "data_offsets outside"),  # one offset
        ({"a": {"dtype": "F32", "shape": [0], "data_offsets": []}}, 0, "data_offsets outside"),
        ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4.0]}}, 4, "data_offsets outside"),
        ({"a": {"dtype": "F32", "shape": [1]}}, 4, "expected dtype, shape and data_offsets"),
        ({"a": _entry("F8", [1], 0, 1)}, 1, "dtype 'F8' is not one of"),
        ({"a": _entry("F32", [-1], 0, 0)}, 0, "non-negative integers"),
        ({"a": _entry("F32", [1] * (MAX_RANK + 1), 0, 4)}, 4, f"at most {MAX_RANK}"),
        ({"__metadata__": {"n": 1}}, 0, "__metadata__ must map names to strings"),
    ],
)
def test_headers_that_do_not_describe_the_data_are_refused(entries, data, words):
    with pytest.raises(WeightsRejected, match=words.replace("[", r"\[")):
        _read(_blob(entries, data))


def test_rank_at_the_limit_and_an_empty_tensor_are_read():
    shape = [1] * MAX_RANK
    assert _read(_blob({"a": _entry("F32", shape, 0, 4), "e": _entry("F32", [0, 3], 4, 4)}, 4))[0]["a"] == [
        "F32",
        shape,
    ]


def test_header_length_fills_the_file_exactly_or_is_refused():
    blob = _blob({}, 0)
    assert _read(blob) == ({}, len(blob))
    assert header_length(struct.pack("<Q", 10), 18) == 10
    with pytest.raises(WeightsRejected, match="header length 11 is larger than the file"):
        header_length(struct.pack("<Q", 11), 18)
    assert header_length(struct.pack("<Q", MAX_HEADER_BYTES), MAX_HEADER_BYTES + 8) == MAX_HEADER_BYTES
    with pytest.raises(WeightsRejected, match=f"header length {MAX_HEADER_BYTES + 1} is larger"):
        header_length(struct.pack("<Q", MAX_HEADER_BYTES + 1), 2 * MAX_HEADER_BYTES)
    with pytest.raises(WeightsRejected, match="shorter than a safetensors length prefix"):
        header_length(b"\x01" * 7, 100)
    for pickled in (b"\x80\x02" + b"\0" * 6, b"PK\x03\x04" + b"\0" * 4):
        with pytest.raises(WeightsRejected, match="a pickle or torch.save file"):
            header_length(pickled, 100)
    assert header_length(b"P" + b"\0" * 7, 100) == ord("P")  # a 'P' alone is not a zip's magic
    with pytest.raises(WeightsRejected, match="not a JSON object"):
        _read(struct.pack("<Q", 2) + b"[]")


# --- file layouts and sharded checkpoints ------------------------------------------------------------------------
def test_file_count_and_name_length_at_their_limits():
    assert MAX_FILES == 1024
    shards = [f"m-{i:05d}.safetensors" for i in range(1022)]  # with the config and the index: 1024 files
    assert layout_of(["config.json", "m.safetensors.index.json", *shards]).format == "sharded"
    with pytest.raises(CheckpointRejected, match="files: 1025 files; between 1 and 1024"):
        layout_of(["config.json", "m.safetensors.index.json", *shards, "extra.safetensors"])
    longest = "w" * (255 - len(".safetensors")) + ".safetensors"
    assert layout_of(["config.json", longest]).weights == (longest,)
    with pytest.raises(CheckpointRejected, match=r"files\[1\].name: .* is not a plain file name"):
        layout_of(["config.json", "w" + longest])


def test_suffixes_are_read_whatever_their_case_and_config_json_exactly():
    assert layout_of(["CONFIG.JSON.pt2"]).format == "exported"
    assert layout_of(["config.json", "W.SafeTensors"]).weights == ("W.SafeTensors",)
    with pytest.raises(CheckpointRejected, match="is a pickled checkpoint"):
        layout_of(["config.json", "model.BIN"])
    with pytest.raises(CheckpointRejected, match="Config.json is none of"):
        layout_of(["Config.json", "w.safetensors"])
    with pytest.raises(CheckpointRejected, match="sent alone"):
        layout_of(["config.json", "a.PT2"])


def test_weight_map_parsing():
    assert weight_map(b'{"weight_map": {"a": "s1", "b": "s2"}, "metadata": {"total_size": 8}}', "i") == {
        "a": "s1",
        "b": "s2",
    }
    for raw in (b'{"weight_map": {}}', b'{"weight_map": ["a"]}', b"[1]", b'{"other": {"a": "s"}}'):
        with pytest.raises(CheckpointRejected, match=r"^i: expected \{'weight_map'"):
            weight_map(raw, "i")
    with pytest.raises(CheckpointRejected, match=r"^i: weight_map\['a'\] is not a file name"):
        weight_map(b'{"weight_map": {"a": 3}}', "i")
    long = "t" * 80 + "u"  # the name is quoted to its first 80 characters
    with pytest.raises(CheckpointRejected, match=rf"^i: weight_map\['{'t' * 80}'\] is not a file name"):
        weight_map(json.dumps({"weight_map": {long: 3}}).encode(), "i")
    with pytest.raises(CheckpointRejected, match="^i: JSON nested 4 deep"):
        weight_map(b'{"weight_map": {"a": [["s"]]}}', "i")


@pytest.mark.parametrize(
    ("mapping", "headers", "words"),
    [
        ({"a": "s1", "b": "s2"}, {"s1": {"a": 1}}, "files: s2, which i.json names, is missing"),
        ({"a": "s1"}, {"s1": {"a": 1}, "s2": {"b": 1}}, "s2: i.json names no tensor in it"),
        ({"a": "s1", "b": "s2"}, {"s1": {"a": 1}, "s2": {"a": 1, "b": 1}}, "s2: tensor a is also in s1"),
        ({"a": "s1", "b": "s1"}, {"s1": {"a": 1}}, "s1: i.json puts tensor b in it, and the shard lacks it"),
        ({"a": "s1", "b": "s2"}, {"s1": {"a": 1, "b": 1}, "s2": {}}, "s1: holds tensor b, which i.json puts in s2"),
        ({"a": "s1"}, {"s1": {"a": 1, "z": 1}}, "s1: tensor z is not in i.json's weight_map"),
        # several at fault: the first in sorted order is named
        ({"a": "s3", "b": "s2", "c": "s1"}, {"s1": {"c": 1}}, "files: s2, which i.json names, is missing"),
        ({"a": "s1"}, {"s1": {"a": 1, "y": 1, "x": 1, "z": 1}}, "s1: tensor x is not in i.json's weight_map"),
    ],
)
def test_an_index_and_shards_that_disagree_are_refused_at_the_first_disagreement(mapping, headers, words):
    with pytest.raises(CheckpointRejected, match=f"^{words}"):
        merge_shards("i.json", mapping, headers)


def test_an_index_over_16_mib_is_refused_from_its_declared_size():
    files = [("config.json", 10), ("model.safetensors.index.json", 16 * 2**20 + 1), ("a.safetensors", 8)]
    with pytest.raises(TooLarge, match=r"^files\[1\].size: .* of 16777217 bytes exceeds the limit of 16777216$"):
        start_upload(None, Settings(), "t", files)  # refused from the sizes, before any database is touched


# --- weights into a module ---------------------------------------------------------------------------------------
class Tied(nn.Module):
    """An embedding and an output layer sharing one weight, as tied language models do."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(5, 3)
        self.out = nn.Linear(3, 5, bias=False)
        self.tie_weights()

    def tie_weights(self):
        self.out.weight = self.embed.weight


def test_tied_aliases_may_be_missing_and_are_tied_after_loading(tmp_path):
    module = Tied()
    weight = torch.arange(15, dtype=torch.float32).reshape(5, 3)
    save_file({"embed.weight": weight.to(torch.bfloat16)}, str(tmp_path / "w.safetensors"))
    load_weights(module, [tmp_path / "w.safetensors"])
    assert torch.equal(module.embed.weight, weight) and module.out.weight is module.embed.weight
    assert module.embed.weight.dtype == torch.float32  # converted to the module's dtype as it loads


def test_weights_split_over_files_load_and_a_missing_or_unknown_tensor_is_named(tmp_path):
    module = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    save_file({"0.weight": torch.ones(2, 2), "0.bias": torch.zeros(2)}, str(tmp_path / "a.safetensors"))
    save_file({"1.weight": torch.full((1, 2), 2.0), "1.bias": torch.ones(1)}, str(tmp_path / "b.safetensors"))
    load_weights(module, [tmp_path / "a.safetensors", tmp_path / "b.safetensors"])
    assert module(torch.tensor([[1.0, 1.0]])).item() == 2.0 * 2 + 2.0 * 2 + 1.0  # hidden (2, 2), out 2·2 + 2·2 + 1
    with pytest.raises(ValueError, match=r"tensors missing for \['1.bias', '1.weight'\]"):
        load_weights(module, [tmp_path / "a.safetensors"])
    save_file({"2.weight": torch.ones(1)}, str(tmp_path / "c.safetensors"))
    with pytest.raises(ValueError, match="c.safetensors: the model has no tensor 2.weight"):
        load_weights(module, [tmp_path / "c.safetensors"])
    save_file({"1.bias": torch.ones(2)}, str(tmp_path / "d.safetensors"))
    with pytest.raises(ValueError, match=r"1.bias has shape \(2,\), the model \(1,\)"):
        load_weights(module, [tmp_path / "a.safetensors", tmp_path / "d.safetensors"])


def test_a_refusal_names_the_first_five_missing_tensors(tmp_path):
    module = nn.Sequential(*(nn.Linear(2, 2) for _ in range(4)))  # 8 tensors; the file holds one
    save_file({"0.weight": torch.ones(2, 2)}, str(tmp_path / "w.safetensors"))
    with pytest.raises(ValueError, match=r"^weights: tensors missing for \['0.bias', '1.bias', '1.weight', '2.bias', "
                       r"'2.weight'\]$"):  # fmt: skip
        load_weights(module, [tmp_path / "w.safetensors"])
