"""The multi-level attention network and extractor: geometry, outputs, frozen backbone, extraction
contract, checkpoints."""

from __future__ import annotations

import warnings

import pytest
import torch

import delfi.models
from delfi.extract.receptive import ReceptiveField, rf_centres
from delfi.models.multilevel import MultiLevel, MultiLevelConfig
from delfi.models.multilevel_net import LEVELS, MultiLevelNet, resample_to_grid


@pytest.fixture(scope="module")
def model() -> MultiLevel:
    torch.manual_seed(0)
    return MultiLevel(MultiLevelConfig(channels_last=False))


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.rand(3, 96, 128, generator=g)


def test_receptive_fields_come_from_the_network():
    net = MultiLevelNet()
    fields = net.receptive_fields()
    assert [fields[n].stride for n in LEVELS] == [8, 16, 32]
    assert (fields["layer3"].size, fields["layer3"].padding) == (267, 133)  # the DELF reference value
    fine = MultiLevelNet(first_stride1=True).receptive_fields()
    assert [fine[n].stride for n in LEVELS] == [4, 8, 16]
    assert fine["layer2"].size < fields["layer2"].size


def test_resampling_matches_receptive_field_centres():
    source, target = ReceptiveField(267, 16, 133), ReceptiveField(91, 8, 45)
    # a map whose value is the pixel x of each cell's centre is linear: resampling must give the
    # target grid's centres wherever the source covers them
    centres = rf_centres(source, 5, 6)[:, 0].view(1, 1, 5, 6)
    out = resample_to_grid(centres, source, target, (10, 12))
    expected = rf_centres(target, 10, 12)[:, 0].view(10, 12)
    inside = expected <= centres.max()
    assert torch.allclose(out[0, 0][inside], expected[inside])


def test_forward_outputs_and_the_frozen_backbone(image):
    net = MultiLevelNet().train()
    assert not net.backbone.training and all(not p.requires_grad for p in net.backbone.parameters())
    out = net(image[None].repeat(2, 1, 1, 1))
    assert [tuple(e.shape) for e in out["encoded"]] == [(2, 64, 12, 16)] * 3
    assert [tuple(a.shape) for a in out["attention"]] == [(2, 1, 12, 16)] * 3
    assert all((a >= 0).all() for a in out["attention"])
    assert [tuple(f.shape[1:2]) for f in out["features"]] == [(512,), (1024,), (2048,)]
    assert [r.shape for r in out["reconstruction"]] == [f.shape for f in out["features"]]
    total = sum(e.sum() for e in out["encoded"]) + sum(a.sum() for a in out["attention"])
    total.backward()
    assert net.encoders[0].encoder.weight.grad is not None and net.attentions[2].conv2.weight.grad is not None
    assert all(p.grad is None for p in net.backbone.parameters())


def test_encoding_then_resampling_equals_resampling_then_encoding(image):
    net = MultiLevelNet().eval()
    features = net.backbone_features(image[None])
    grid, deep = net.grid_field, net.receptive_fields()["layer4"]
    upsampled = resample_to_grid(features[2], deep, grid, tuple(features[0].shape[-2:]))
    direct = net.encoders[2].encode(upsampled)
    assert torch.allclose(net.encode(features, tuple(features[0].shape[-2:]))[2], direct, atol=1e-4, rtol=1e-4)


def test_keypoints_sit_at_receptive_field_centres_without_refinement(image):
    torch.manual_seed(0)
    model = MultiLevel(MultiLevelConfig(channels_last=False, nms=False, refine=False, score_threshold=-1.0, levels=["layer2"]))
    features = model.extract(image)
    grid = model.network.grid_field
    expected = rf_centres(grid, 12, 16)
    got = {tuple(p) for p in features.keypoints.round().long().tolist()}
    assert got == {tuple(p) for p in expected.round().long().tolist()}  # every cell, in image pixels
    assert torch.allclose(features.scales, torch.full((12 * 16,), float(grid.size)))


def test_extract_contract(model, image):
    f = model.extract(image)
    assert f.descriptors.shape[1] == 64 and len(f.keypoints) == len(f.scores) == len(f.scales) > 0
    assert torch.allclose(f.descriptors.norm(dim=1), torch.ones(len(f.keypoints)), atol=1e-5)
    assert (f.scores >= 0.3).all() and (f.scores[:-1] >= f.scores[1:]).all()
    x, y = f.keypoints[:, 0], f.keypoints[:, 1]
    assert (x >= -0.5).all() and (x <= 127.5).all() and (y >= -0.5).all() and (y <= 95.5).all()
    fields = model.network.receptive_fields()
    assert set(f.scales.tolist()) <= {float(fields[n].size) for n in LEVELS}
    assert f.image_size == (128, 96) and f.global_descriptor is None


def test_top_k_levels_and_summed_descriptors(model, image):
    full = model.extract(image)
    model.config.top_k = 10
    try:
        top = model.extract(image)
    finally:
        model.config.top_k = 0
    assert torch.equal(top.scores, full.scores[:10])
    only = MultiLevel(MultiLevelConfig(channels_last=False, levels=["layer3"]), network=model.network).extract(image)
    assert set(only.scales.tolist()) == {267.0}
    summed = MultiLevel(MultiLevelConfig(channels_last=False, combine="sum"), network=model.network).extract(image)
    assert torch.equal(summed.keypoints, full.keypoints)
    assert torch.allclose(summed.descriptors.norm(dim=1), torch.ones(len(summed.keypoints)), atol=1e-5)
    assert not torch.allclose(summed.descriptors, full.descriptors)


def test_attention_maps_one_per_level(model, image):
    maps = model.attention_maps(image)
    assert [label for label, _ in maps] == list(LEVELS)
    assert all(tuple(m.shape) == (12, 16) for _, m in maps)


def test_checkpoint_round_trip_and_registry(model, image, tmp_path):
    from delfi.models.delf import save_delfi_checkpoint

    path = tmp_path / "ml.pt"
    save_delfi_checkpoint(model, path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # trained weights: no RandomWeightsWarning
        loaded = delfi.models.create("multilevel", weights=path, channels_last=False)
    assert isinstance(loaded, MultiLevel) and not loaded.untrained
    a, b = model.extract(image), loaded.extract(image)
    assert torch.allclose(a.keypoints, b.keypoints) and torch.allclose(a.descriptors, b.descriptors, atol=1e-6)
    assert "multilevel" in delfi.models.list()


@pytest.mark.parametrize("key, value", [("levels", ["layer5"]), ("combine", "max"), ("code_dim", 0), ("top_k", -1)])
def test_invalid_settings_are_refused(key, value):
    from delfi.config import ConfigError

    with pytest.raises(ConfigError, match=key):
        delfi.models.resolve_config("multilevel", {key: value})
