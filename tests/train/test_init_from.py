"""``net.init_from`` / ``net.reinit_heads``: a run starts from trained weights, with chosen heads reset."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("lightning")

from delfi.config import ConfigError  # noqa: E402
from delfi.models.checkpoints import save_checkpoint  # noqa: E402
from delfi.models.l2net import R2D2Net  # noqa: E402
from delfi.train.config import resolve_train_config  # noqa: E402
from delfi.train.module import R2D2Module  # noqa: E402
from delfi.train.trainer import check_trainer_settings  # noqa: E402

ARCH = ["net.mchan=1", "net.dim=16"]


@pytest.fixture()
def trained(tmp_path):
    torch.manual_seed(5)
    net = R2D2Net("quad_l2net", 1, 16)
    for p in net.parameters():
        p.data.normal_()
    return net, save_checkpoint(tmp_path / "stage1.pt", net, family="r2d2")


def test_init_from_loads_every_weight_and_reinit_resets_only_the_named_head(trained):
    net, path = trained
    loaded = R2D2Module(resolve_train_config("r2d2", [*ARCH, f"net.init_from={path}"])).net
    for key, value in net.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    reset = R2D2Module(resolve_train_config("r2d2", [*ARCH, f"net.init_from={path}", "net.reinit_heads=[clf]"])).net
    for key, value in net.state_dict().items():
        same = torch.equal(reset.state_dict()[key], value)
        assert same != key.startswith("clf."), key
    random = R2D2Net("quad_l2net", 1, 16).clf.weight
    assert reset.clf.weight.abs().max() <= random.abs().max() * 2  # a fresh initialisation, not the trained values
    assert reset.clf.weight.abs().max() < net.clf.weight.abs().max()


def test_init_from_refusals_name_the_key(trained, tmp_path):
    _, path = trained
    with pytest.raises(ConfigError, match="net.init_from: no such checkpoint file"):
        resolve_train_config("r2d2", [*ARCH, f"net.init_from={tmp_path / 'missing.pt'}"])
    with pytest.raises(ConfigError, match="net.reinit_heads: unknown head"):
        resolve_train_config("r2d2", [*ARCH, f"net.init_from={path}", "net.reinit_heads=[head]"])
    alone = resolve_train_config("delfi-lite-reliability", [])  # a second-stage preset resolves (and lists) alone
    with pytest.raises(ValueError, match="give net.init_from=CHECKPOINT"):
        check_trainer_settings(alone)
    with pytest.raises(ValueError, match="give net.init_from=CHECKPOINT"):
        R2D2Module(alone)
    with pytest.raises(ValueError, match="holds a .*mchan': 1.* the run trains .*mchan': 2"):
        R2D2Module(resolve_train_config("r2d2", ["net.mchan=2", "net.dim=16", f"net.init_from={path}"]))


def test_the_second_stage_preset_without_init_from_is_refused_before_any_file(tmp_path):
    from tests.train.test_train_cli import delfi, make_photos

    photos = make_photos(tmp_path / "photos", 3)
    out = tmp_path / "run"
    result = delfi("train", "r2d2", "--preset", "delfi-lite-reliability", "--images", photos, "--out", out)
    assert result.exit_code == 2 and "give net.init_from=CHECKPOINT" in result.output and "Traceback" not in result.output
    assert not out.exists()
