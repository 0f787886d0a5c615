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
    with pytest.raises(CheckpointError, match="weights-only"):
        load_r2d2_checkpoint(path)
    assert not (in_tmp_cwd / "pwned").exists()


def test_defaultdict_training_logs_load(tmp_path):
    # the official faster2d2 checkpoint pickles its training logs as collections.defaultdict(list)
    logs = collections.defaultdict(list)
    logs["loss"] += [1.5, 1.25]
    logs["ap"].append(0.5)
    path = tmp_path / "faster2d2.pt"
    torch.save(official_style_checkpoint("Fast_Quad_L2Net_ConfCFS()", "fast_quad_l2net", logs=logs, epoch=25), path)
    raw = load_checkpoint(path)
    assert raw["logs"] == {"loss": [1.5, 1.25], "ap": [0.5]}
    assert raw["epoch"] == 25
    args, state = load_r2d2_checkpoint(path)
    assert args == {"arch": "fast_quad_l2net"}
    R2D2Net("fast_quad_l2net").load_state_dict(state, strict=True)


def test_load_checkpoint_maps_to_cpu_and_keeps_tensors(tmp_path):
    path = tmp_path / "t.pt"
    torch.save({"a": torch.arange(3), "b": [1, 2.5, "x"], "c": (None, True)}, path)
    data = load_checkpoint(path)
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
