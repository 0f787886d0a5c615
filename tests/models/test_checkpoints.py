"""Loading official R2D2 checkpoints safely: tensors only, the 'net' string parsed, never executed."""

from __future__ import annotations

import collections
import os

import pytest
import torch

from delfi.models.checkpoints import (
    CheckpointError,
    load_checkpoint,
    load_r2d2_checkpoint,
    load_torch_file,
    parse_r2d2_net_string,
    strip_prefix,
)
from delfi.models.l2net import R2D2Net


def official_style_checkpoint(net_string: str, arch: str = "quad_l2net", mchan: int = 4, **extra) -> dict:
    """What the official training script saves: {'net': ..., 'state_dict': DataParallel keys, ...}."""
    torch.manual_seed(0)
    state = R2D2Net(arch, mchan).state_dict()
    return {"net": net_string, "state_dict": {f"module.{k}": v for k, v in state.items()}, **extra}


@pytest.fixture
def in_tmp_cwd(tmp_path, monkeypatch):
    """Run in an empty folder, so a 'touch pwned' would land here."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


# --------------------------------------------------------------------------------------------------
# parse_r2d2_net_string
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "net, expected",
    [
        ("Quad_L2Net_ConfCFS()", {"arch": "quad_l2net"}),
        ("Quad_L2Net_ConfCFS(mchan=6)", {"arch": "quad_l2net", "mchan": 6}),
        ("  Quad_L2Net_ConfCFS( mchan = 6 , dim=128 )\n", {"arch": "quad_l2net", "mchan": 6, "dim": 128}),
        ("Fast_Quad_L2Net_ConfCFS()", {"arch": "fast_quad_l2net"}),
    ],
)
def test_parse_official_net_strings(net, expected):
    assert parse_r2d2_net_string(net) == expected


@pytest.mark.parametrize(
    "net, message",
    [
        ("Quad_L2Net_ConfCFS(", "cannot parse"),
        ("Quad_L2Net_ConfCFS", "unsupported"),
        ("Quad_L2Net_ConfCFS(6)", "unsupported"),  # positional arguments
        ("Quad_L2Net(mchan=4)", "unknown R2D2 architecture"),
        ("models.Quad_L2Net_ConfCFS()", "unsupported"),
        ("Quad_L2Net_ConfCFS(relu22=True)", "unsupported argument"),
        ("Quad_L2Net_ConfCFS(mchan=2+2)", "unsupported argument"),
        ("Quad_L2Net_ConfCFS(mchan='4')", "unsupported argument"),
        ("Quad_L2Net_ConfCFS(mchan=True)", "unsupported argument"),
        ("Quad_L2Net_ConfCFS(mchan=4.5)", "unsupported argument"),
        ("Quad_L2Net_ConfCFS(mchan=0)", "unsupported argument"),
        ("Quad_L2Net_ConfCFS(mchan=6, mchan=4)", "unsupported argument"),  # a SyntaxError for eval()
        ("Quad_L2Net_ConfCFS(**{'mchan': 6})", "unsupported argument"),
        ("Quad_L2Net_ConfCFS(mchan=__import__('os').getpid())", "unsupported argument"),
        ("__import__('os').system('touch pwned')", "unsupported"),
        ("(lambda: 0)()", "unsupported"),
        ("Quad_L2Net_ConfCFS(); import os", "cannot parse"),
    ],
)
def test_parse_rejects_anything_else(net, message, in_tmp_cwd):
    with pytest.raises(CheckpointError, match=message):
        parse_r2d2_net_string(net, source="ck.pt")
    assert not (in_tmp_cwd / "pwned").exists()


def test_parse_error_names_the_source():
    with pytest.raises(CheckpointError, match="my_file.pt"):
        parse_r2d2_net_string("Nope()", source="my_file.pt")


def test_strip_prefix():
    a, b = torch.zeros(1), torch.ones(1)
    assert strip_prefix({"module.ops.0.weight": a, "clf.bias": b}) == {"ops.0.weight": a, "clf.bias": b}
    assert list(strip_prefix({"module.module.x": a})) == ["module.x"]  # only one prefix is removed
    assert list(strip_prefix({"net.x": a}, prefix="net.")) == ["x"]
    assert strip_prefix({}) == {}


# --------------------------------------------------------------------------------------------------
# load_checkpoint / load_r2d2_checkpoint
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "net_string, arch, mchan, expected_args",
    [
        ("Quad_L2Net_ConfCFS()", "quad_l2net", 4, {"arch": "quad_l2net"}),
        ("Quad_L2Net_ConfCFS(mchan=6)", "quad_l2net", 6, {"arch": "quad_l2net", "mchan": 6}),
        ("Fast_Quad_L2Net_ConfCFS()", "fast_quad_l2net", 4, {"arch": "fast_quad_l2net"}),
    ],
)
def test_load_official_style_checkpoint(tmp_path, net_string, arch, mchan, expected_args):
    path = tmp_path / "model.pt"
    checkpoint = official_style_checkpoint(net_string, arch, mchan)
    torch.save(checkpoint, path)
    args, state = load_r2d2_checkpoint(path)
    assert args == expected_args
    assert not any(k.startswith("module.") for k in state)
    assert "ops.0.weight" in state and "clf.weight" in state and "sal.weight" in state
    for key, value in checkpoint["state_dict"].items():
        assert torch.equal(state[key[len("module.") :]], value)
    # the state dict loads into a fresh network of the same architecture, strictly
    net = R2D2Net(arch, mchan)
    net.load_state_dict(state, strict=True)
    assert torch.equal(net.ops[0].weight, checkpoint["state_dict"]["module.ops.0.weight"])


def test_missing_net_string_defaults_to_quad(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"state_dict": {"ops.0.weight": torch.zeros(1)}}, path)
    args, state = load_r2d2_checkpoint(path)
    assert args == {"arch": "quad_l2net"}
    assert list(state) == ["ops.0.weight"]


def test_malicious_net_string_is_rejected_without_executing(in_tmp_cwd):
    path = in_tmp_cwd / "evil.pt"
    torch.save(official_style_checkpoint("__import__('os').system('touch pwned')"), path)
    with pytest.raises(CheckpointError, match="evil.pt"):
        load_r2d2_checkpoint(path)
    assert not (in_tmp_cwd / "pwned").exists()
    assert os.listdir(in_tmp_cwd) == ["evil.pt"]


def test_malicious_net_string_in_keyword_is_rejected(in_tmp_cwd):
    path = in_tmp_cwd / "evil.pt"
    torch.save(official_style_checkpoint("Quad_L2Net_ConfCFS(mchan=__import__('os').system('touch pwned'))"), path)
    with pytest.raises(CheckpointError):
        load_r2d2_checkpoint(path)
    assert not (in_tmp_cwd / "pwned").exists()


class _Exploit:
    """A pickle payload that runs a shell command when unpickled by a permissive loader."""

    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_malicious_pickle_is_refused(in_tmp_cwd):
    path = in_tmp_cwd / "evil.pt"
    torch.save({"net": "Quad_L2Net_ConfCFS()", "state_dict": {}, "payload": _Exploit()}, path)
    with pytest.raises(CheckpointError, match="evil.pt") as caught:
        load_r2d2_checkpoint(path)
    message = str(caught.value)
    assert "system" in message and "not executed" in message
    # never the advice (PyTorch's) to retry with a loader that would run the payload
    assert "weights_only" not in message and "weights only" not in message.lower()
    assert not (in_tmp_cwd / "pwned").exists()


class _Harmless:
    """A pickled custom class (no code on load, but not tensors either)."""


@pytest.mark.parametrize("payload", [_Exploit(), _Harmless(), collections.OrderedDict(a=_Exploit())])
def test_no_refusal_message_suggests_loading_unsafely(in_tmp_cwd, payload):
    path = in_tmp_cwd / "odd.pt"
    torch.save({"state_dict": {}, "payload": payload}, path)
    with pytest.raises(CheckpointError, match="odd.pt") as caught:
        load_checkpoint(path)
    assert "weights_only" not in str(caught.value)
    assert "weights only" not in str(caught.value).lower()
    assert not (in_tmp_cwd / "pwned").exists()


def _saved(tmp_path, name="good.pt", **tensors):
    path = tmp_path / name
    torch.save({"state_dict": tensors or {"w": torch.zeros(1000)}}, path)
    return path


def test_truncated_and_empty_files_are_named(tmp_path):
    whole = _saved(tmp_path).read_bytes()
    for name, data in (("half.pt", whole[: len(whole) // 2]), ("tail.pt", whole[:-30]), ("empty.pt", b"")):
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(CheckpointError, match=rf"{name}: (truncated or corrupted|the file is empty)"):
            load_checkpoint(path)
    legacy = tmp_path / "legacy.pt"
    torch.save({"w": torch.zeros(3)}, legacy, _use_new_zipfile_serialization=False)
    legacy.write_bytes(legacy.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match="legacy.pt: truncated or corrupted"):
        load_checkpoint(legacy)


def test_folder_and_other_formats_are_named(tmp_path):
    with pytest.raises(CheckpointError, match="is a folder"):
        load_checkpoint(tmp_path)
    import pickle

    import numpy as np

    (tmp_path / "plain.pkl").write_bytes(pickle.dumps({"x": 1}, protocol=4))
    np.save(tmp_path / "array.npy", np.zeros(3))
    for name in ("plain.pkl", "array.npy"):
        with pytest.raises(CheckpointError, match=rf"{name}: not a") as caught:
            load_checkpoint(tmp_path / name)
        assert "weights_only" not in str(caught.value)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_parameters_are_refused_naming_the_tensor(tmp_path, bad):
    checkpoint = official_style_checkpoint("Quad_L2Net_ConfCFS()")
    checkpoint["state_dict"]["module.ops.3.weight"].view(-1)[7] = bad
    path = tmp_path / "nan.pt"
    torch.save(checkpoint, path)
    with pytest.raises(CheckpointError, match=r"nan.pt: tensor 'state_dict/module.ops.3.weight' has non-finite"):
        load_r2d2_checkpoint(path)


def test_create_refuses_non_finite_weights(tmp_path):
    import delfi.models

    checkpoint = official_style_checkpoint("Quad_L2Net_ConfCFS()")
    checkpoint["state_dict"]["module.ops.3.weight"].view(-1)[7] = float("nan")
    path = tmp_path / "nan.pt"
    torch.save(checkpoint, path)
    with pytest.raises(CheckpointError, match=r"nan.pt: tensor 'state_dict/module.ops.3.weight' has non-finite"):
        delfi.models.create("r2d2", weights=path)


def test_integer_tensors_and_finite_weights_pass_the_finite_check(tmp_path):
    path = tmp_path / "ok.pt"
    torch.save({"steps": torch.arange(3), "w": torch.ones(2), "logs": [1.0, float("nan")]}, path)
    assert load_torch_file(path)["steps"].tolist() == [0, 1, 2]  # plain floats (logs) are not weights


def _mismatch_message(tmp_path, edit) -> str:
    checkpoint = official_style_checkpoint("Quad_L2Net_ConfCFS()")
    edit(checkpoint["state_dict"])
    path = tmp_path / "odd.pt"
    torch.save(checkpoint, path)
    _, state = load_r2d2_checkpoint(path)
    net = R2D2Net("quad_l2net")
    with pytest.raises(CheckpointError) as caught:
        net.load_state_dict(state, strict=False)  # what R2D2.load_weights does: files must fit anyway
    return str(caught.value)


def test_wrong_shapes_are_listed_with_expected_and_found(tmp_path):
    def edit(sd):
        sd["module.ops.0.weight"] = torch.zeros(8, 3, 3, 3)
        sd["module.clf.weight"] = torch.zeros(2, 64, 1, 1)

    message = _mismatch_message(tmp_path, edit)
    assert message.startswith(f"{tmp_path / 'odd.pt'}: ")
    assert "2 tensor(s) of the wrong shape" in message
    assert "ops.0.weight: expected (32, 3, 3, 3), found (8, 3, 3, 3)" in message
    assert "clf.weight: expected (2, 128, 1, 1), found (2, 64, 1, 1)" in message


def test_missing_and_unexpected_keys_are_listed_briefly(tmp_path):
    def edit(sd):
        for key in [k for k in sd if k.startswith("module.ops.")]:
            del sd[key]
        for i in range(9):
            sd[f"module.extra.{i}"] = torch.zeros(1)

    message = _mismatch_message(tmp_path, edit)
    assert "odd.pt" in message and "missing: ops.0.weight" in message
    assert "9 unexpected: extra.0" in message and "(+4 more)" in message
    assert "extra.8" not in message  # brief: the first few only


def test_a_plain_state_dict_with_wrong_shapes_is_a_checkpoint_error():
    net = R2D2Net("quad_l2net")
    state = net.state_dict()
    state["sal.weight"] = torch.zeros(1, 64, 1, 1)
    with pytest.raises(CheckpointError, match=r"sal.weight: expected \(1, 128, 1, 1\), found \(1, 64, 1, 1\)"):
        net.load_state_dict(state)
    partial = {"sal.weight": torch.zeros(1, 64, 1, 1)}
    with pytest.raises(CheckpointError, match="wrong shape"):
        net.load_state_dict(partial, strict=False)
    net.load_state_dict({"sal.bias": torch.ones(1)}, strict=False)  # a fitting partial dict still loads
    assert net.sal.bias.item() == 1.0


def test_defaultdict_training_logs_load(tmp_path):
    # the official faster2d2 checkpoint pickles its training logs as collections.defaultdict(list)
    logs = collections.defaultdict(list)
    logs["loss"] += [1.5, 1.25]
    logs["ap"].append(0.5)
    path = tmp_path / "faster2d2.pt"
    torch.save(official_style_checkpoint("Fast_Quad_L2Net_ConfCFS()", "fast_quad_l2net", logs=logs, epoch=25), path)
    raw = load_torch_file(path)
    assert raw["logs"] == {"loss": [1.5, 1.25], "ap": [0.5]}
    assert raw["epoch"] == 25
    args, state = load_r2d2_checkpoint(path)
    assert args == {"arch": "fast_quad_l2net"}
    R2D2Net("fast_quad_l2net").load_state_dict(state, strict=True)


def test_load_checkpoint_maps_to_cpu_and_keeps_tensors(tmp_path):
    path = tmp_path / "t.pt"
    torch.save({"a": torch.arange(3), "b": [1, 2.5, "x"], "c": (None, True)}, path)
    data = load_torch_file(path)
    assert data["a"].device.type == "cpu" and data["a"].tolist() == [0, 1, 2]
    assert data["b"] == [1, 2.5, "x"] and data["c"] == (None, True)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nothing.pt")
    with pytest.raises(CheckpointError, match="not found"):
        load_r2d2_checkpoint(tmp_path / "nothing.pt")


def test_not_a_checkpoint(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a torch file")
    with pytest.raises(CheckpointError, match="garbage.pt"):
        load_checkpoint(garbage)
    no_state = tmp_path / "no_state.pt"
    torch.save({"net": "Quad_L2Net_ConfCFS()", "weights": {}}, no_state)
    with pytest.raises(CheckpointError, match="state_dict"):
        load_r2d2_checkpoint(no_state)
    a_list = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], a_list)
    with pytest.raises(CheckpointError, match="state_dict"):
        load_r2d2_checkpoint(a_list)
    bad_state = tmp_path / "bad_state.pt"
    torch.save({"net": "Quad_L2Net_ConfCFS()", "state_dict": [torch.zeros(1)]}, bad_state)
    with pytest.raises(CheckpointError, match="bad_state.pt"):
        load_r2d2_checkpoint(bad_state)
    int_keys = tmp_path / "int_keys.pt"
    torch.save({"state_dict": {0: torch.zeros(1)}}, int_keys)
    with pytest.raises(CheckpointError, match="state_dict"):
        load_r2d2_checkpoint(int_keys)
