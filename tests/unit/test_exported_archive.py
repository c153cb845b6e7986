"""The checked reader of torch.export archives and the module built from their graphs.

Archives are exported here from small modules with ``torch.export.export`` + ``torch.export.save``; the hostile
ones are made by editing a real archive's zip. Each security test first shows what a plain ``torch.export.load``
(or ``ExportedProgram.module()``) does with the same file, then that ``read_archive`` refuses it.
"""

from __future__ import annotations

import copy
import io
import json
import pickle
import random
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from core.networks.exported import ops
from core.networks.exported.archive import Limits, read_archive
from core.networks.exported.chain import find_chain
from core.networks.exported.describe import describe
from core.networks.exported.errors import ArchiveRejected
from core.networks.exported.graph import SYMBOLIC, ExportedModule, build_module

Batch = torch.export.Dim("batch", min=2, max=4096)


class Touch:
    """Unpickling this creates ``path``: what a hostile pickle in an archive could do to a worker."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def mlp(act: nn.Module) -> nn.Sequential:
    return nn.Sequential(nn.Linear(5, 16), act, nn.Linear(16, 16), act, nn.Linear(16, 3))


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 6, 3, padding=1),
            nn.AdaptiveAvgPool2d(2),
        )  # fmt: skip
        self.head = nn.Linear(24, 3)

    def forward(self, x):
        return self.head(torch.flatten(self.features(x), 1))


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 16), nn.SiLU())
        self.mean, self.logvar = nn.Linear(16, 2), nn.Linear(16, 2)

    def forward(self, x):
        h = self.body(x)
        return self.mean(h), self.logvar(h)


def critic() -> nn.Sequential:
    return nn.Sequential(nn.Linear(4, 32), nn.LeakyReLU(0.2), nn.Linear(32, 32), nn.LeakyReLU(0.2), nn.Linear(32, 1))


def export(model: nn.Module, args: tuple, path: Path, dynamic: bool = True, decompose: bool = False) -> Path:
    shapes = tuple({0: Batch} for _ in args) if dynamic else None
    program = torch.export.export(model, args, dynamic_shapes=shapes)
    torch.export.save(program.run_decompositions() if decompose else program, path)
    return path


def load(path: Path) -> ExportedModule:
    with read_archive(path) as archive:
        return build_module(archive)


def rewrite(src: Path, dst: Path, edit: Callable[[str, bytes], bytes | None], add: dict[str, bytes] | None = None):
    """Copy the archive, passing each member (path under the root folder, bytes) through ``edit``."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        root = zin.namelist()[0].split("/")[0]
        for info in zin.infolist():
            data = edit(info.filename[len(root) + 1 :], zin.read(info))
            if data is not None:
                zout.writestr(info.filename, data)
        for name, data in (add or {}).items():
            zout.writestr(f"{root}/{name}", data)
    return dst


def edit_json(member: str, change: Callable[[dict], None]) -> Callable[[str, bytes], bytes]:
    def edit(name: str, data: bytes) -> bytes:
        if name != member:
            return data
        doc = json.loads(data)
        change(doc)
        return json.dumps(doc).encode()

    return edit


@pytest.fixture(scope="module")
def tanh_mlp(tmp_path_factory) -> tuple[nn.Module, Path]:
    torch.manual_seed(0)
    model = mlp(nn.Tanh())
    return model, export(model, (torch.randn(6, 5),), tmp_path_factory.mktemp("tanh") / "mlp.pt2")


# --- the module reproduces the original ---------------------------------------------------------------------------


@pytest.mark.parametrize("act", [nn.Tanh(), nn.GELU(), nn.SiLU(), nn.ReLU()], ids=lambda a: type(a).__name__)
def test_mlp_forward_and_gradients_match_the_original(act, tmp_path):
    torch.manual_seed(1)
    model = mlp(act)
    loaded = load(export(model, (torch.randn(6, 5),), tmp_path / "m.pt2"))
    x = torch.randn(11, 5)  # another batch size than exported: the batch dimension is dynamic
    assert torch.equal(loaded(x), model(x))
    assert [n for n, _ in loaded.named_parameters()] == [n for n, _ in model.named_parameters()]
    loaded(x).square().sum().backward()
    model(x).square().sum().backward()
    _assert_same_grads(loaded, model)


def _assert_same_grads(loaded: nn.Module, original: nn.Module, atol: float = 1e-6) -> None:
    theirs = dict(original.named_parameters())
    assert [name for name, _ in loaded.named_parameters()] == list(theirs)
    for name, p in loaded.named_parameters():
        assert isinstance(p, nn.Parameter) and p.grad is not None, name
        assert torch.allclose(p.grad, theirs[name].grad, atol=atol), name


def test_conv_net_in_eval_mode_matches(tmp_path):
    torch.manual_seed(2)
    model = ConvNet().eval()
    with torch.no_grad():  # running statistics that differ from the defaults, so batch_norm does something
        model.features[1].running_mean.uniform_(-1, 1)
        model.features[1].running_var.uniform_(0.5, 2)
    loaded = load(export(model, (torch.randn(2, 1, 12, 12),), tmp_path / "c.pt2"))
    x = torch.randn(5, 1, 12, 12)
    assert torch.allclose(loaded(x), model(x), atol=1e-6)
    assert dict(loaded.named_buffers())["features.1.running_var"].equal(model.features[1].running_var)
    loaded(x).square().sum().backward()
    model(x).square().sum().backward()
    _assert_same_grads(loaded, model, atol=1e-5)


def test_vae_encoder_returns_mean_and_logvar_and_decoder_matches(tmp_path):
    torch.manual_seed(3)
    encoder, decoder = Encoder(), nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 8))
    enc = load(export(encoder, (torch.randn(4, 8),), tmp_path / "enc.pt2"))
    dec = load(export(decoder, (torch.randn(4, 2),), tmp_path / "dec.pt2"))
    x, z = torch.randn(7, 8), torch.randn(7, 2)
    mean, logvar = enc(x)
    assert isinstance(enc(x), tuple)
    assert torch.equal(mean, encoder(x)[0]) and torch.equal(logvar, encoder(x)[1])
    assert torch.equal(dec(z), decoder(z))
    for ours, theirs, data in ((enc, encoder, x), (dec, decoder, z)):
        for net in (ours, theirs):
            out = net(data)
            (sum(o.square().sum() for o in out) if isinstance(out, tuple) else out.sum()).backward()
        _assert_same_grads(ours, theirs)


def test_training_steps_lower_the_loss(tanh_mlp):
    model, path = tanh_mlp
    loaded = load(path)
    x, y = torch.randn(64, 5), torch.randn(64, 3)
    optimizer = torch.optim.SGD(loaded.parameters(), lr=0.05)
    before = {n: p.detach().clone() for n, p in loaded.named_parameters()}
    losses = []
    for _ in range(5):
        optimizer.zero_grad()
        loss = (loaded(x) - y).square().mean()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert all(not torch.equal(p, before[n]) for n, p in loaded.named_parameters())
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), load(path).parameters()))  # the file is intact


def test_half_precision_weights_integer_inputs_and_bool_buffers_round_trip(tmp_path):
    class Tokens(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(10, 4)
            self.register_buffer("mask", torch.tensor([True, False, True, True]))

        def forward(self, ids):
            return self.embed(ids) * self.mask

    ids = torch.tensor([[1, 2], [3, 9]])
    model = Tokens()
    assert torch.equal(load(export(model, (ids,), tmp_path / "t.pt2", dynamic=False))(ids), model(ids))
    half = mlp(nn.SiLU()).to(torch.bfloat16)
    x = torch.randn(6, 5, dtype=torch.bfloat16)
    assert torch.equal(load(export(half, (x,), tmp_path / "h.pt2"))(x), half(x))


def test_a_frozen_layer_stays_frozen(tmp_path):
    model = mlp(nn.ReLU())
    model[0].requires_grad_(False)
    path = export(model, (torch.randn(6, 5),), tmp_path / "frozen.pt2")
    loaded = load(path)
    assert [p.requires_grad for p in loaded.parameters()] == [p.requires_grad for p in model.parameters()]
    with read_archive(path) as archive:
        summary = describe(archive)
    assert summary["n_trainable"] == summary["n_params"] - model[0].weight.numel() - model[0].bias.numel()


def test_gradient_penalty_double_backward_matches_the_original(tmp_path):
    torch.manual_seed(4)
    model = critic()
    loaded = load(export(model, (torch.randn(8, 4),), tmp_path / "critic.pt2"))

    def penalty_grads(net: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
        x = x.clone().requires_grad_(True)
        (grad_x,) = torch.autograd.grad(net(x).sum(), x, create_graph=True)
        penalty = (grad_x.norm(dim=1) - 1).square().mean()
        weights = [p for name, p in net.named_parameters() if name.endswith("weight")]  # ∇ₓ has no output bias
        return list(torch.autograd.grad(penalty, weights))

    x = torch.randn(16, 4)
    for ours, theirs in zip(penalty_grads(loaded, x), penalty_grads(model, x), strict=True):
        assert ours.abs().sum() > 0 and torch.allclose(ours, theirs, atol=1e-6)


def test_meta_build_reads_no_tensor_bytes(tanh_mlp):
    model, path = tanh_mlp
    with read_archive(path) as archive:
        archive.member_bytes = lambda member: pytest.fail(f"read {member}")  # type: ignore[method-assign]
        meta = build_module(archive, device="meta")
    out = meta(torch.empty(32, 5, device="meta"))
    assert out.device.type == "meta" and out.shape == (32, 3)
    assert sum(p.numel() for p in meta.parameters()) == sum(p.numel() for p in model.parameters())


def test_buffers_constants_and_keyword_inputs(tmp_path):
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 3)
            self.register_buffer("shift", torch.tensor([0.5, -1.0, 2.0]))
            self.register_buffer("scratch", torch.ones(3), persistent=False)
            self.scale = torch.tensor([3.0])  # a plain attribute: a lifted constant

        def forward(self, x, *, gate):
            return {"y": self.lin(x) * self.scale + self.shift + self.scratch, "g": torch.sigmoid(gate)}

    model = Scaled()
    path = tmp_path / "s.pt2"
    torch.export.save(torch.export.export(model, (torch.randn(2, 3),), {"gate": torch.randn(2)}), path)
    loaded = load(path)
    x, gate = torch.randn(2, 3), torch.randn(2)
    out, expected = loaded(x, gate=gate), model(x, gate=gate)
    assert set(out) == {"y", "g"} and all(torch.equal(out[k], expected[k]) for k in out)
    assert "shift" in loaded.state_dict() and "scratch" not in loaded.state_dict()
    with pytest.raises(TypeError, match="keywords"):
        loaded(x)


# --- describe and chain ------------------------------------------------------------------------------------------


def test_describe_lists_inputs_outputs_parameters_and_operators(tmp_path):
    model = ConvNet().eval()
    with read_archive(export(model, (torch.randn(2, 1, 12, 12),), tmp_path / "c.pt2")) as archive:
        summary = describe(archive)
    assert summary["n_params"] == summary["n_trainable"] == sum(p.numel() for p in model.parameters())
    assert [p["name"] for p in summary["parameters"]] == [n for n, _ in model.named_parameters()]
    assert summary["inputs"][0]["dtype"] == "float32" and summary["inputs"][0]["shape"][1:] == [1, 12, 12]
    assert isinstance(summary["inputs"][0]["shape"][0], str)  # the dynamic batch, by its symbol
    assert summary["outputs"]["shape"][1:] == [3]
    assert summary["operators"]["aten.conv2d"] == 2 and summary["operators"]["aten.batch_norm"] == 1
    with read_archive(export(Encoder(), (torch.randn(4, 8),), tmp_path / "e.pt2")) as archive:
        assert [o["shape"][1:] for o in describe(archive)["outputs"]] == [[2], [2]]


@pytest.mark.parametrize("decompose", [False, True], ids=["linear", "addmm"])
def test_an_mlp_is_a_chain_with_its_weight_names(decompose, tmp_path):
    path = export(mlp(nn.GELU()), (torch.randn(6, 5),), tmp_path / "m.pt2", decompose=decompose)
    with read_archive(path) as archive:
        chain = find_chain(archive.program)
    assert chain.is_chain, chain
    assert [(layer.weight, layer.bias) for layer in chain.layers] == [(f"{i}.weight", f"{i}.bias") for i in (0, 2, 4)]
    assert [layer.activations for layer in chain.layers] == [("gelu",), ("gelu",), ()]


def test_convolutions_count_as_affine_layers_and_mm_plus_add_as_one(tmp_path):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)
            self.w, self.b = nn.Parameter(torch.randn(18, 3)), nn.Parameter(torch.randn(3))

        def forward(self, x):
            return torch.nn.functional.softplus(torch.flatten(torch.relu(self.conv(x)), 1) @ self.w + self.b)

    with read_archive(export(Net(), (torch.randn(2, 1, 5, 5),), tmp_path / "n.pt2")) as archive:
        chain = find_chain(archive.program)
    assert chain.is_chain, chain
    assert [(layer.op, layer.weight, layer.bias, layer.activations) for layer in chain.layers] == [
        ("aten.conv2d", "conv.weight", "conv.bias", ("relu",)),
        ("aten.matmul", "w", "b", ("softplus",)),
    ]


def test_flatten_and_dropout_in_eval_mode_keep_a_chain(tmp_path):
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 4), nn.Dropout(0.1), nn.ELU(), nn.Linear(4, 2), nn.Sigmoid())
    with read_archive(export(model.eval(), (torch.randn(3, 2, 3),), tmp_path / "e.pt2")) as archive:
        chain = find_chain(archive.program)
    assert chain.is_chain and [layer.activations for layer in chain.layers] == [("elu",), ("sigmoid",)]
    with read_archive(export(model.train(), (torch.randn(3, 2, 3),), tmp_path / "t.pt2")) as archive:
        chain = find_chain(archive.program)
    assert chain.breaks_at == "dropout" and "training mode" in chain.reason


def test_what_breaks_a_chain_is_named(tmp_path):
    with read_archive(export(ConvNet().eval(), (torch.randn(2, 1, 12, 12),), tmp_path / "c.pt2")) as archive:
        chain = find_chain(archive.program)
    assert not chain.is_chain and chain.breaks_at == "batch_norm" and "neither" in chain.reason
    assert [layer.weight for layer in chain.layers] == ["features.0.weight"]

    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x):
            h = self.a(x)
            return self.b(torch.tanh(h)) + h

    with read_archive(export(Residual(), (torch.randn(3, 4),), tmp_path / "r.pt2")) as archive:
        chain = find_chain(archive.program)
    assert chain.breaks_at == "add" and "feeds 2 nodes" in chain.reason
    with read_archive(export(Encoder(), (torch.randn(4, 8),), tmp_path / "e.pt2")) as archive:
        assert "exactly one tensor" in find_chain(archive.program).reason


# --- the allowlist -----------------------------------------------------------------------------------------------


def test_every_allowlisted_operator_exists_and_dangerous_ones_are_absent():
    for namespace, names in ops.NAMESPACES.items():
        for name in names:
            assert getattr(getattr(torch.ops, namespace), name).overloads(), f"{namespace}.{name}"
    assert set(SYMBOLIC) == ops.SYMBOLIC
    assert not {"from_file", "empty", "empty_like", "empty_strided", "set_", "as_strided", "_print"} & ops.ATEN
    assert ops.accept("n", "torch.ops.aten.linear.default").qualified == "aten.linear"
    for target in ("torch.ops.aten.add.out", "torch.ops.aten.from_file.default", "builtins.exec", "torch.save"):
        with pytest.raises(ArchiveRejected, match="'n' calls"):
            ops.accept("n", target)


# --- refusals ------------------------------------------------------------------------------------------------------


def test_a_pickled_weight_is_refused_and_never_unpickled(tanh_mlp, tmp_path):
    marker = tmp_path / "pwned"

    def change(doc):
        doc["config"]["0.weight"]["use_pickle"] = True

    def edit(name, data):
        if name == "data/weights/weight_0":
            return pickle.dumps(Touch(marker))
        return edit_json("data/weights/model_weights_config.json", change)(name, data)

    path = rewrite(tanh_mlp[1], tmp_path / "evil.pt2", edit)
    _plain_load_runs_pickle(path, marker)
    with pytest.raises(ArchiveRejected, match="'0.weight' is stored as a pickle"):
        read_archive(path)
    assert not marker.exists()


def test_a_pickled_constant_and_an_opaque_object_are_refused(tmp_path):
    class WithConstant(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = torch.tensor([2.0])

        def forward(self, x):
            return x * self.scale

    original = export(WithConstant(), (torch.randn(2, 3),), tmp_path / "k.pt2", dynamic=False)
    marker = tmp_path / "pwned"

    def pickled_constant(name, data):
        if name == "data/constants/tensor_0":
            return pickle.dumps(Touch(marker))
        change = edit_json(
            "data/constants/model_constants_config.json", lambda d: d["config"]["scale"].update(use_pickle=True)
        )
        return change(name, data)

    path = rewrite(original, tmp_path / "constant.pt2", pickled_constant)
    _plain_load_runs_pickle(path, marker)
    with pytest.raises(ArchiveRejected, match="'scale' is stored as a pickle"):
        read_archive(path)
    assert not marker.exists()

    def opaque_entry(doc):
        doc["config"]["hook"] = {
            "path_name": "opaque_obj_0",
            "is_param": False,
            "use_pickle": True,
            "tensor_meta": None,
        }

    opaque = rewrite(
        original,
        tmp_path / "opaque.pt2",
        edit_json("data/constants/model_constants_config.json", opaque_entry),
        add={"data/constants/opaque_obj_0": pickle.dumps(Touch(marker))},
    )
    _plain_load_runs_pickle(opaque, marker)
    with pytest.raises(ArchiveRejected, match="custom object"):
        read_archive(opaque)
    assert not marker.exists()


def test_sample_inputs_are_never_read(tanh_mlp, tmp_path):
    marker = tmp_path / "pwned"
    path = rewrite(
        tanh_mlp[1],
        tmp_path / "samples.pt2",
        lambda name, data: pickle.dumps(Touch(marker)) if name.startswith("data/sample_inputs/") else data,
    )
    _plain_load_runs_pickle(path, marker)  # torch retries the samples with weights_only=False
    loaded = load(path)
    assert not marker.exists()
    x = torch.randn(3, 5)
    assert torch.equal(loaded(x), tanh_mlp[0](x))


def test_guards_code_beyond_size_relations_is_refused_and_never_run(tanh_mlp, tmp_path):
    marker = tmp_path / "pwned"
    guard = f"__import__('pathlib').Path({str(marker)!r}).touch() is None"
    add_guard = edit_json("models/model.json", lambda d: d.update(guards_code=[guard]))
    path = rewrite(tanh_mlp[1], tmp_path / "guards.pt2", add_guard)
    torch.export.load(path).module()(torch.randn(6, 5))
    assert marker.exists()  # ExportedProgram.module() exec()s guards_code and runs it on each call
    marker.unlink()
    with pytest.raises(ArchiveRejected, match="guards_code .* is code, not a relation between input sizes"):
        read_archive(path)
    assert not marker.exists()
    for code in ("L['input'].size()[0].bit_length() > 0", "L['input'].size()[0] ** 99 > 0", "'a' == 'a'", "(" * 300):
        bad = rewrite(
            tanh_mlp[1], tmp_path / "g.pt2", edit_json("models/model.json", lambda d: d.update(guards_code=[code]))
        )
        with pytest.raises(ArchiveRejected, match="guards_code"):
            read_archive(bad)


def test_guards_relating_input_sizes_are_checked_on_each_call(tmp_path):
    class Reparametrise(nn.Module):
        def forward(self, mean, logvar):
            return mean + torch.exp(0.5 * logvar)

    path = export(Reparametrise(), (torch.randn(4, 2), torch.randn(4, 2)), tmp_path / "r.pt2")
    with read_archive(path) as archive:
        assert [g.text for g in archive.program.guards] == ["L['mean'].size()[0] == L['logvar'].size()[0]"]
        module = build_module(archive)
    mean, logvar = torch.randn(9, 2), torch.randn(9, 2)
    assert torch.equal(module(mean, logvar), Reparametrise()(mean, logvar))
    with pytest.raises(ValueError, match=r"break the exported model's guard L\['mean'\]"):
        module(mean, logvar[:1])  # would broadcast silently without the guard


def _plain_load_runs_pickle(path: Path, marker: Path) -> None:
    """A plain ``torch.export.load`` of ``path`` unpickles the payload (torch may fail afterwards: ignored)."""
    try:
        torch.export.load(path)
    except Exception:  # noqa: BLE001 - what torch raises after the pickle ran does not matter here
        pass
    assert marker.exists()
    marker.unlink()


def _retarget(node_name: str, target: str, inputs: list[dict]) -> Callable[[dict], None]:
    def change(doc):
        (node,) = [n for n in doc["graph_module"]["graph"]["nodes"] if n["name"] == node_name]
        node["target"], node["inputs"] = target, inputs

    return change


def test_an_operator_outside_aten_and_prims_is_refused(tanh_mlp, tmp_path):
    inputs = [
        {"name": "name", "arg": {"as_string": "x"}, "kind": 1},
        {"name": "size", "arg": {"as_ints": [6, 3]}, "kind": 1},
        {"name": "stride", "arg": {"as_ints": [3, 1]}, "kind": 1},
        {"name": "dtype", "arg": {"as_scalar_type": 7}, "kind": 2},
        {"name": "device", "arg": {"as_device": {"type": "cpu", "index": None}}, "kind": 2},
    ]
    change = _retarget("linear_2", "torch.ops.debugprims.load_tensor.default", inputs)
    path = rewrite(tanh_mlp[1], tmp_path / "foreign.pt2", edit_json("models/model.json", change))
    plain = torch.export.load(path)  # torch accepts an operator from any namespace the process has registered
    assert "debugprims.load_tensor" in str(plain.graph)
    assert plain.module()(torch.randn(6, 5)).shape == (6, 3)  # and runs it in place of the last layer
    with pytest.raises(ArchiveRejected, match="node 'linear_2' calls 'torch.ops.debugprims.load_tensor.default'"):
        read_archive(path)


_MARKER: dict[str, Path] = {}


@torch.library.custom_op("gradlab_test::touch", mutates_args=())
def _touch(x: torch.Tensor) -> torch.Tensor:
    """An operator registered in this process that creates a file when it runs: what a worker with extension
    libraries loaded (torchvision, a user's own) would offer a graph that names it."""
    _MARKER["path"].touch()
    return x.clone()


@_touch.register_fake
def _(x):
    return torch.empty_like(x)


def test_a_registered_non_aten_operator_that_creates_a_file_is_refused_and_never_run(tmp_path):
    class CallsIt(nn.Module):
        def forward(self, x):
            return torch.ops.gradlab_test.touch(x) * 2

    path = export(CallsIt(), (torch.randn(3, 2),), tmp_path / "custom.pt2", dynamic=False)
    _MARKER["path"] = tmp_path / "pwned"
    torch.export.load(path).module()(torch.randn(3, 2))
    assert _MARKER["path"].exists()  # the plain loader runs any operator the process has registered
    _MARKER["path"].unlink()
    with pytest.raises(ArchiveRejected, match="node 'touch' calls 'torch.ops.gradlab_test.touch.default', outside"):
        read_archive(path)
    assert not _MARKER["path"].exists()


def test_an_aten_operator_off_the_allowlist_is_refused(tanh_mlp, tmp_path):
    secret = tmp_path / "secret"
    secret.write_bytes(b"\x00\x00\x80\x3f" * 18)  # 18 float32 ones: a file on the worker
    inputs = [
        {"name": "filename", "arg": {"as_string": str(secret)}, "kind": 1},
        {"name": "shared", "arg": {"as_bool": False}, "kind": 1},
        {"name": "size", "arg": {"as_int": 18}, "kind": 1},
    ]
    change = _retarget("linear_2", "torch.ops.aten.from_file.default", inputs)
    path = rewrite(tanh_mlp[1], tmp_path / "from_file.pt2", edit_json("models/model.json", change))
    leaked = torch.export.load(path).module()(torch.randn(6, 5))
    assert torch.equal(leaked, torch.ones(18))  # the plain loader returned the worker's file as the output
    with pytest.raises(ArchiveRejected, match="node 'linear_2' calls 'torch.ops.aten.from_file.default'.*allowlist"):
        read_archive(path)


def test_json_nested_100k_deep_is_refused_before_parsing(tanh_mlp, tmp_path):
    deep = b"[" * 100_000 + b"]" * 100_000

    def edit(name, data):
        if name != "models/model.json":
            return data
        return b'{"padding": ' + deep + b", " + data[1:]

    path = rewrite(tanh_mlp[1], tmp_path / "deep.pt2", edit)
    with pytest.raises(RuntimeError, match="error when deserializing"):  # json.loads hit the recursion limit
        torch.export.load(path)
    with pytest.raises(ArchiveRejected, match="models/model.json: JSON nested 100001 deep"):
        read_archive(path)


def test_a_tensor_past_the_end_of_its_file_is_refused(tanh_mlp, tmp_path):
    def change(doc):
        meta = doc["config"]["0.weight"]["tensor_meta"]
        meta["sizes"] = [{"as_int": 1600}, {"as_int": 5}]

    path = rewrite(tanh_mlp[1], tmp_path / "long.pt2", edit_json("data/weights/model_weights_config.json", change))
    with pytest.raises(RuntimeError, match="error when deserializing"):  # as_strided's bounds check, unnamed
        torch.export.load(path)
    with pytest.raises(ArchiveRejected, match="'0.weight'.*reaches byte 32000, past the end of its 320-byte file"):
        read_archive(path)


def test_sizes_come_from_the_directory_before_any_read(tanh_mlp, monkeypatch):
    opened = []
    real_open = zipfile.ZipFile.open
    monkeypatch.setattr(
        zipfile.ZipFile, "open", lambda self, name, *a, **k: opened.append(name) or real_open(self, name, *a, **k)
    )
    with pytest.raises(ArchiveRejected, match=r"models/model.json: \d+ bytes, more than 1000"):
        read_archive(tanh_mlp[1], limits=Limits(json_bytes=1000))
    assert not [n for n in opened if str(getattr(n, "filename", n)).endswith("model.json")]
    with pytest.raises(ArchiveRejected, match="members take .* more than 2000"):
        read_archive(tanh_mlp[1], limits=Limits(archive_bytes=2000))
    assert not [n for n in opened if "/models/" in str(getattr(n, "filename", n))]


@pytest.mark.parametrize(
    ("member", "reason"),
    [
        ("data/aotinductor/model/model.so", "compiled code"),
        ("data/constants/custom_obj_0", "custom object"),
        ("data/weights/model.pt", "legacy pickled state dict"),
        ("payload.py", "not part of the torch.export layout"),
    ],
)
def test_members_outside_the_layout_are_refused(member, reason, tanh_mlp, tmp_path):
    path = rewrite(tanh_mlp[1], tmp_path / "extra.pt2", lambda name, data: data, add={member: b"x"})
    with pytest.raises(ArchiveRejected, match=reason):
        read_archive(path)


def test_malformed_archives_are_refused_with_a_reason(tanh_mlp, tmp_path):
    assert issubclass(ArchiveRejected, ValueError)
    (tmp_path / "junk.pt2").write_bytes(b"not a zip")
    with pytest.raises(ArchiveRejected, match="not a readable zip"):
        read_archive(tmp_path / "junk.pt2")
    cases = {
        "custom_obj": lambda d: d["graph_module"]["signature"]["input_specs"].__setitem__(
            0, {"custom_obj": {"arg": {"name": "p_0_weight", "class_fqn": "x"}, "custom_obj_name": "o"}}
        ),
        "before it is defined": lambda d: d["graph_module"]["graph"]["nodes"].reverse(),
        "schema version": lambda d: d["schema_version"].update(major=99),
        "subgraphs": lambda d: d["graph_module"]["graph"]["nodes"][0]["inputs"][0].update(
            arg={"as_graph": {"name": "g", "graph": {}}}
        ),
    }
    for reason, change in cases.items():
        path = rewrite(tanh_mlp[1], tmp_path / "bad.pt2", edit_json("models/model.json", change))
        with pytest.raises(ArchiveRejected, match=reason):
            read_archive(path)


class Doubling(nn.Module):
    def forward(self, x):
        return x.view(x.size(0) * 2, -1)


def test_size_arithmetic_runs_on_numbers_within_int64(tmp_path):
    path = export(Doubling(), (torch.randn(4, 6),), tmp_path / "d.pt2")
    x = torch.randn(9, 6)
    assert torch.equal(load(path)(x), x.view(18, 3))

    def factor(value: int) -> Callable[[dict], None]:
        def change(doc):
            (node,) = [n for n in doc["graph_module"]["graph"]["nodes"] if n["target"] == "_operator.mul"]
            node["inputs"][1]["arg"] = {"as_int": value}

        return change

    huge = load(rewrite(path, tmp_path / "huge.pt2", edit_json("models/model.json", factor(2**62))))
    with pytest.raises(OverflowError, match="outside int64"):
        huge(x)
    with pytest.raises(ArchiveRejected, match="outside int64"):
        read_archive(rewrite(path, tmp_path / "big.pt2", edit_json("models/model.json", factor(2**64))))
    with pytest.raises(TypeError, match="not numbers"):
        SYMBOLIC["_operator.mul"]([x], 2**40)  # a list repeated a trillion times would fill memory


def test_a_zip_directory_too_large_for_the_member_cap_is_refused_before_parsing(tanh_mlp, tmp_path):
    many = {f"extra/note_{i}": b"" for i in range(2_000)}
    path = rewrite(tanh_mlp[1], tmp_path / "many.pt2", lambda name, data: data, add=many)
    with pytest.raises(ArchiveRejected, match="zip directory; at most 100 members"):
        read_archive(path, limits=Limits(members=100))
    with read_archive(path, limits=Limits(members=3_000)) as archive:  # ignored members are fine within the cap
        assert archive.program.nodes


def test_mutated_json_gets_a_refusal_or_a_module_never_another_error(tanh_mlp):
    """300 seeded mutations of the program and configs (a value replaced by another JSON type or an odd number):
    reading, describing, following the chain and building either work or raise ArchiveRejected (a 422, never a
    500). Caught before: an unhashable dtype code raised TypeError."""
    with zipfile.ZipFile(tanh_mlp[1]) as zin:
        members = {info.filename: zin.read(info) for info in zin.infolist()}
    documents = [name for name in members if name.endswith(".json")]
    odd = [None, 0, -1, 7, 2**70, "x", [], {}, [1], {"a": 1}, True, 1.5, "Infinity", {"as_int": 3}, [{"as_int": 1}]]
    rng = random.Random(0)
    for _ in range(300):
        name = rng.choice(documents)
        doc = json.loads(members[name])
        holder, key = _random_slot(doc, rng)
        holder[key] = copy.deepcopy(rng.choice(odd))
        members_now = {**members, name: json.dumps(doc).encode()}
        stream = io.BytesIO()
        with zipfile.ZipFile(stream, "w") as zout:
            for member, data in members_now.items():
                zout.writestr(member, data)
        stream.seek(0)
        try:
            with read_archive(stream) as archive:
                describe(archive)
                find_chain(archive.program)
                build_module(archive)
        except ArchiveRejected:
            pass


def _random_slot(doc, rng: random.Random):
    """A random (container, key) inside ``doc``, found by a random walk down from the root."""
    holder = doc
    while True:
        key = rng.choice(list(holder) if isinstance(holder, dict) else range(len(holder)))
        child = holder[key]
        if not isinstance(child, dict | list) or not child or rng.random() < 0.2:
            return holder, key
        holder = child
