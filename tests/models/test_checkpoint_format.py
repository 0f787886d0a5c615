"""The one checkpoint format: save / load for every family, provenance, Lightning files, the official
R2D2 files and the first DELF / DELG files; the checkpoint's config builds the right network."""

from __future__ import annotations

import os

import pytest
import torch

import delfi
from delfi.models.checkpoints import (
    FORMAT_VERSION,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)
from delfi.models.delf import save_delfi_checkpoint
from delfi.models.l2net import R2D2Net
from delfi.models.networks import DELFNet, DELGNet
from delfi.models.r2d2 import R2D2, R2D2Config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROVENANCE = {"data": {"pairs": "hpatches/v_wormhole", "n": 6}, "seed": 7, "steps": 1200, "command": ["delfi", "train", "r2d2"]}
SMALL_R2D2 = dict(min_size=24, max_size=64, reliability_threshold=0.0, repeatability_threshold=0.0, top_k=0)
OPEN_DELF = dict(score_threshold=0.0, max_image_size=0, scales=[1.0], top_k=0)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def image(width=64, height=48):
    return torch.rand(3, height, width, generator=torch.Generator().manual_seed(1))


def randomise_batch_norm(net):
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 2.0)
    return net


@pytest.mark.parametrize(
    "family, network, normalisation",
    [
        ("r2d2", lambda: R2D2Net("fast_quad_l2net", mchan=1, dim=32), "imagenet"),
        ("delf", lambda: DELFNet(50, stride_in="1x1", attention_batch_norm=False), "tf-delf"),
        ("delg", lambda: DELGNet(50, local_dim=16, global_dim=32), "unit"),
    ],
)
def test_round_trip_of_each_family_with_provenance(tmp_path, family, network, normalisation):
    net = network()
    path = save_checkpoint(tmp_path / "run" / "best.ckpt", net, family=family, config={"note": "x"},
                           normalisation=normalisation, provenance=PROVENANCE)  # fmt: skip
    assert sorted(os.listdir(path.parent)) == ["best.ckpt"]  # no temporary left
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"delfi", "state_dict"}
    meta = raw["delfi"]
    assert set(meta) == {"format", "format_version", "family", "config", "normalisation", "provenance"}
    assert (meta["format"], meta["format_version"], meta["family"]) == ("delfi-checkpoint", 1, family)
    assert meta["config"] == {"note": "x", **net.architecture()}
    assert meta["provenance"] == {**PROVENANCE, "delfi_version": delfi.__version__}
    assert all(v.device.type == "cpu" and v.is_contiguous() for v in raw["state_dict"].values())

    info = load_checkpoint(path)
    assert (info.kind, info.family, info.normalisation, info.format_version) == ("delfi", family, normalisation, FORMAT_VERSION)
    assert info.provenance == meta["provenance"] and info.config == meta["config"]
    own = net.state_dict()
    assert list(info.state_dict) == list(own) and all(torch.equal(info.state_dict[k], own[k]) for k in own)
    rebuilt = delfi.models.networks.build_network(family, info.config)
    assert rebuilt.architecture() == net.architecture()
    rebuilt.load_state_dict(info.state_dict)


def test_an_extractor_saves_its_network(tmp_path):
    model = delfi.models.create("r2d2", load=False, mchan=1)
    path = save_checkpoint(tmp_path / "m.ckpt", model, family="r2d2", provenance={"seed": 1})
    info = load_checkpoint(path)
    assert info.provenance == {"data": None, "seed": 1, "steps": None, "delfi_version": delfi.__version__, "command": None}
    assert "ops.0.weight" in info.state_dict


def test_saving_refuses_what_would_not_load_back(tmp_path):
    net = R2D2Net(mchan=1)
    path = tmp_path / "best.ckpt"
    save_checkpoint(path, net, family="r2d2")
    before = path.read_bytes()
    with pytest.raises(ValueError, match="provenance.data"):
        save_checkpoint(path, net, family="r2d2", provenance={"data": object()})
    with pytest.raises(ValueError, match="mchan=4"):
        save_checkpoint(path, net, family="r2d2", config={"mchan": 4})
    with pytest.raises(TypeError):
        save_checkpoint(path, net, family="delf")
    with pytest.raises(ValueError, match="normalisation"):
        save_checkpoint(path, net, family="r2d2", normalisation="nope")
    with torch.no_grad():
        net.clf.bias.fill_(float("nan"))
    with pytest.raises(ValueError, match="non-finite"):
        save_checkpoint(path, net, family="r2d2")
    assert path.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["best.ckpt"]


def test_newer_or_unknown_formats_are_refused(tmp_path):
    state = R2D2Net(mchan=1).state_dict()
    for name, meta, message in [
        ("newer.ckpt", {"format": "delfi-checkpoint", "format_version": 2, "family": "r2d2"}, "newer delfi"),
        ("other.ckpt", {"format": "something-else", "format_version": 1, "family": "r2d2"}, "unknown checkpoint format"),
        ("family.ckpt", {"format": "delfi-checkpoint", "format_version": 1, "family": "sift"}, "unknown model family"),
    ]:
        torch.save({"delfi": meta, "state_dict": state}, tmp_path / name)
        with pytest.raises(CheckpointError, match=rf"{name}: .*{message}"):
            load_checkpoint(tmp_path / name)
    torch.save({"w": torch.zeros(2)}, tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="plain.pt: not a delfi, Lightning or official R2D2 checkpoint"):
        load_checkpoint(tmp_path / "plain.pt")


def test_non_finite_tensors_and_pickled_code_are_refused(tmp_path):
    net = R2D2Net(mchan=1)
    path = save_checkpoint(tmp_path / "ok.ckpt", net, family="r2d2")
    data = torch.load(path, weights_only=True)
    data["state_dict"]["sal.weight"].view(-1)[0] = float("inf")
    torch.save(data, tmp_path / "inf.ckpt")
    with pytest.raises(CheckpointError, match=r"inf.ckpt: tensor 'state_dict/sal.weight' has non-finite"):
        load_checkpoint(tmp_path / "inf.ckpt")

    class Payload:
        def __reduce__(self):
            return (os.system, ("touch pwned",))

    data = torch.load(path, weights_only=True)
    data["delfi"]["provenance"]["data"] = Payload()
    torch.save(data, tmp_path / "evil.ckpt")
    with pytest.raises(CheckpointError, match="evil.ckpt") as caught:
        load_checkpoint(tmp_path / "evil.ckpt")
    assert "weights_only" not in str(caught.value) and "not executed" in str(caught.value)
    assert not os.path.exists("pwned")


# ---------------------------------------------------------------- the config builds the network


def test_create_builds_the_checkpoint_architecture(tmp_path):
    net = randomise_batch_norm(R2D2Net(mchan=1, dim=32))
    path = save_checkpoint(tmp_path / "best.ckpt", net, family="r2d2", provenance=PROVENANCE)
    model = delfi.models.create("r2d2", weights=path, **SMALL_R2D2)  # the preset says mchan 4, dim 128
    assert (model.config.mchan, model.config.dim, model.network.mchan) == (1, 32, 1)
    assert not model.untrained and model.weights_sha256 == delfi.models.weights.sha256_file(path)
    expected = R2D2(R2D2Config(mchan=1, dim=32, **SMALL_R2D2), network=net.eval()).extract(image())
    found = model.extract(image())
    assert torch.equal(found.descriptors, expected.descriptors) and found.descriptors.shape[1] == 32
    assert delfi.models.create("r2d2", weights=path, mchan=1, **SMALL_R2D2).config.mchan == 1  # agreeing is fine
    with pytest.raises(CheckpointError, match=r"best.ckpt: .*mchan=2 \(the checkpoint has 1\)"):
        delfi.models.create("r2d2", weights=path, mchan=2)


def test_create_builds_a_delg_of_the_checkpoint_and_adopts_its_normalisation(tmp_path):
    net = DELGNet(50, local_dim=16, global_dim=32)
    path = save_checkpoint(tmp_path / "delg.ckpt", net, family="delg", normalisation="unit")
    model = delfi.models.create("delg", weights=path, **OPEN_DELF, global_scales=[1.0])
    assert (model.config.global_dim, model.config.local_dim, model.normalisation_name) == (32, 16, "unit")
    found = model.extract(image())
    assert found.global_descriptor.shape == (32,) and found.descriptors.shape[1] == 16
    with pytest.raises(CheckpointError, match="expected 'delf'"):
        delfi.models.create("delf", weights=path)


def test_first_delf_delg_checkpoints_still_load(tmp_path):
    """The files `save_delfi_checkpoint` wrote before the format had a version: extractor state dicts."""
    model = delfi.models.create("delf", load=False, **OPEN_DELF)
    old = tmp_path / "old_delf.pt"
    meta = {"family": "delf", "config": delfi.config.config_to_dict(model.config), "normalisation": "unit"}
    torch.save({"delfi": meta, "state_dict": {k[len("network."):]: v for k, v in model.state_dict().items()}}, old)
    info = load_checkpoint(old)
    assert (info.kind, info.format_version, info.family, info.normalisation) == ("delfi", 0, "delf", "unit")
    loaded = delfi.models.create("delf", weights=old, **OPEN_DELF)
    assert loaded.normalisation_name == "unit"
    model.normalisation_name = "unit"
    assert torch.equal(loaded.extract(image()).descriptors, model.extract(image()).descriptors)
    new = tmp_path / "new_delf.pt"
    save_delfi_checkpoint(model, new, provenance={"steps": 3})
    assert load_checkpoint(new).provenance["steps"] == 3


def test_official_style_files_without_net_string_need_a_delfi_file_for_delf(tmp_path):
    path = tmp_path / "r2d2.pt"
    torch.save({"net": "Quad_L2Net_ConfCFS()", "state_dict": R2D2Net().state_dict()}, path)
    assert load_checkpoint(path).kind == "official-r2d2"
    with pytest.raises(CheckpointError, match="r2d2.pt: not a delfi delf checkpoint"):
        delfi.models.create("delf", weights=path)


# ------------------------------------------------------------------------------------- Lightning


def _lightning_checkpoint(tmp_path, metadata="delfi"):
    """A real Lightning checkpoint: a LightningModule with ``self.net = R2D2Net(mchan=1)``, 2 steps."""
    pl = pytest.importorskip("lightning.pytorch")
    import warnings

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            if metadata == "hyper_parameters":
                self.save_hyperparameters({"family": "r2d2", "config": {"mchan": 1}, "lr": 0.01})
            self.net = R2D2Net(mchan=1)
            self.classifier = torch.nn.Linear(4, 2)  # other trained modules stay out of the network

        def training_step(self, batch, index):
            out = self.net(batch[0])
            return out["descriptors"][:, 0].mean() + out["reliability"].mean() + out["repeatability"].mean()

        def configure_optimizers(self):
            optimiser = torch.optim.Adam(self.net.parameters(), lr=0.01)
            return {"optimizer": optimiser, "lr_scheduler": torch.optim.lr_scheduler.StepLR(optimiser, 1)}

        def on_save_checkpoint(self, checkpoint):
            if metadata == "delfi":
                checkpoint["delfi"] = {
                    "format": "delfi-checkpoint", "format_version": 1, "family": "r2d2",
                    "config": {"model": "r2d2", "arch": "quad_l2net", "mchan": 1, "dim": 128},
                    "normalisation": "imagenet",
                    "provenance": {"data": {"kind": "random"}, "seed": 0, "steps": int(self.global_step),
                                   "delfi_version": delfi.__version__, "command": ["test"]},
                }  # fmt: skip

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(4, 3, 16, 16)), batch_size=2)
    module = Module()
    trainer = pl.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path,
                         callbacks=[pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpts")])  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, data)
    path = tmp_path / "best.ckpt"
    trainer.save_checkpoint(path)
    return path, module.net


def test_a_lightning_checkpoint_loads_and_extracts(tmp_path):
    path, net = _lightning_checkpoint(tmp_path)
    raw_keys = set(torch.load(path, weights_only=True))
    assert {"optimizer_states", "loops", "callbacks", "lr_schedulers", "delfi"} <= raw_keys
    info = load_checkpoint(path)
    assert (info.kind, info.family, info.config["mchan"], info.provenance["steps"]) == ("lightning", "r2d2", 1, 2)
    assert set(info.state_dict) == set(net.state_dict())  # only the network's keys, without "net."
    model = delfi.models.create("r2d2", weights=path, **SMALL_R2D2)
    assert model.config.mchan == 1
    expected = R2D2(R2D2Config(mchan=1, **SMALL_R2D2), network=net.eval()).extract(image())
    found = model.extract(image())
    assert len(found) > 0 and torch.equal(found.descriptors, expected.descriptors)


def test_a_lightning_checkpoint_with_hyper_parameters_only(tmp_path):
    path, _ = _lightning_checkpoint(tmp_path, metadata="hyper_parameters")
    info = load_checkpoint(path)
    assert (info.kind, info.family, info.config["mchan"], info.provenance["steps"]) == ("lightning", "r2d2", 1, 2)
    bare = torch.load(path, weights_only=True)
    del bare["hyper_parameters"]
    torch.save(bare, tmp_path / "bare.ckpt")
    with pytest.raises(CheckpointError, match="bare.ckpt: a Lightning checkpoint without delfi metadata"):
        load_checkpoint(tmp_path / "bare.ckpt")


def test_extract_cli_takes_a_trained_checkpoint(tmp_path):
    from PIL import Image
    from typer.testing import CliRunner

    from delfi.cli.app import app
    from delfi.io.features import FeatureStore

    path = save_checkpoint(tmp_path / "run" / "best.ckpt", randomise_batch_norm(R2D2Net(mchan=1)), family="r2d2")
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray((image(96, 72).permute(1, 2, 0).numpy() * 255).astype("uint8")).save(photos / "a.png")
    args = ["extract", photos, "--weights", path, "--out", tmp_path / "f.h5", "reliability_threshold=0.0",
            "repeatability_threshold=0.0", "top_k=50", "min_size=32", "tile_pixels=0"]  # fmt: skip
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    with FeatureStore(tmp_path / "f.h5") as store:
        assert len(store.get("a.png")) == 50
        assert store.attrs["weights_sha256"] == delfi.models.weights.sha256_file(path)


# ------------------------------------------------------------------------------ official R2D2 files


@pytest.mark.parametrize(
    "name, config",
    [
        ("r2d2_WASF_N16.pt", {"arch": "quad_l2net", "mchan": 4, "dim": 128}),
        ("r2d2_WASF_N8_big.pt", {"arch": "quad_l2net", "mchan": 6, "dim": 128}),
        ("faster2d2_WASF_N16.pt", {"arch": "fast_quad_l2net", "mchan": 4, "dim": 128}),
    ],
)
def test_official_files_load_as_official_r2d2(shared_data, name, config):
    path = shared_data / "r2d2" / "models" / name
    info = load_checkpoint(path)
    assert (info.kind, info.family, info.config, info.normalisation) == ("official-r2d2", "r2d2", config, "imagenet")
    assert not any(k.startswith("module.") for k in info.state_dict)
    model = delfi.models.create("r2d2", weights=path, load=True)  # the preset is mchan 4: the file decides
    assert model.network.architecture() == config
