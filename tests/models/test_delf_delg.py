"""DELF and DELG extractors end to end with random weights: geometry, heads, checkpoints, crops, PCA."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import delfi
from delfi.config import ConfigError
from delfi.extract.delf import aggregate_global
from delfi.extract.pca import fit_pca_streaming, save_pca
from delfi.models.checkpoints import CheckpointError
from delfi.models.delf import save_delfi_checkpoint

# attention >= 0 keeps every cell; sizes small so ResNet-50 runs fast
OPEN = {"score_threshold": 0.0, "max_image_size": 0}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def image(width=128, height=96):
    return torch.rand(3, height, width, generator=torch.Generator().manual_seed(1))


def test_presets_carry_the_reference_settings():
    delf = delfi.models.resolve_config("delf")
    assert (delf.score_threshold, delf.iou_threshold, delf.top_k, delf.pca_dims, delf.normalisation) == (100.0, 1.0, 1000, 40, "tf-delf")
    seed = delfi.models.resolve_config("delf-seed")
    assert (seed.score_threshold, seed.iou_threshold, seed.attention_batch_norm, seed.halve_threshold_if_empty) == (0.31, 0.92, False, True)
    assert (seed.pca_whiten, seed.pca_renormalise, seed.normalisation) == (True, False, "unit")
    delg = delfi.models.resolve_config("delg")
    assert (delg.local_dim, delg.global_dim, delg.gem_learnable, delg.score_threshold) == (128, 2048, False, 175.0)
    assert delg.global_scales == [0.7071, 1.0, 1.4142]
    delg_seed = delfi.models.resolve_config("delg-seed")
    assert (delg_seed.global_dim, delg_seed.local_dim, delg_seed.autoencoder, delg_seed.gem_learnable) == (512, 512, False, True)
    with pytest.raises(ConfigError, match="normalisation"):
        delfi.models.resolve_config("delf", {"normalisation": "nope"})


def test_delf_keypoints_sit_on_receptive_field_centres_at_every_scale():
    model = delfi.models.create("delf", load=False, scales=[1.0], top_k=0, **OPEN)
    found = model.extract(image())
    assert len(found) == 8 * 6  # every layer3 cell of a 128x96 image (stride 16)
    assert torch.equal(found.keypoints % 16, torch.zeros_like(found.keypoints))  # centre of cell (i, j) = (16j, 16i)
    assert torch.allclose(found.scales, torch.full_like(found.scales, 267.0))
    half = delfi.models.create("delf", load=False, scales=[0.5], top_k=0, **OPEN).extract(image())
    assert len(half) == 4 * 3
    # level 64x48 -> original 128x96: x -> (x + 0.5) * 2 - 0.5, with level centres at 16j
    expected = {(32.0 * j + 0.5, 32.0 * i + 0.5) for i in range(3) for j in range(4)}
    assert {tuple(p) for p in half.keypoints.tolist()} == expected
    assert torch.allclose(half.scales, torch.full_like(half.scales, 534.0))


def test_delf_selection_threshold_top_k_and_descriptors():
    model = delfi.models.create("delf", load=False, top_k=20, **OPEN)
    found = model.extract(image())
    assert len(found) == 20 and found.descriptors.shape == (20, 1024)
    assert torch.all(found.scores[:-1] >= found.scores[1:])
    assert torch.allclose(found.descriptors.norm(dim=1), torch.ones(20), atol=1e-5)
    threshold = float(found.scores[5])
    strict = delfi.models.create("delf", load=False, top_k=1000, score_threshold=threshold, max_image_size=0).extract(image())
    assert len(strict) >= 6 and bool((strict.scores >= threshold).all())


def test_checkpoint_round_trip_and_family_check(tmp_path):
    model = delfi.models.create("delg", load=False, **OPEN, scales=[1.0], global_scales=[1.0])
    model.normalisation_name = "unit"
    path = tmp_path / "delg.pt"
    save_delfi_checkpoint(model, path)
    loaded = delfi.models.create("delg", weights=path, **OPEN, scales=[1.0], global_scales=[1.0])
    assert loaded.normalisation_name == "unit"  # the checkpoint's metadata wins
    a, b = model.extract(image()), loaded.extract(image())
    assert torch.allclose(a.descriptors, b.descriptors) and torch.allclose(a.global_descriptor, b.global_descriptor)
    with pytest.raises(CheckpointError, match="expected 'delf'"):
        delfi.models.create("delf", weights=path)


def test_delg_global_descriptor_is_the_multiscale_aggregate():
    model = delfi.models.create("delg", load=False, **OPEN, scales=[1.0], top_k=10)
    found = model.extract(image())
    assert found.global_descriptor.shape == (2048,)
    assert float(found.global_descriptor.norm()) == pytest.approx(1.0, abs=1e-5)
    assert found.descriptors.shape == (10, 128)
    per_scale = []
    with torch.no_grad():
        for _, _, out in model.levels(image(), [0.7071, 1.0, 1.4142], ("layer4",)):
            per_scale.append(model.global_descriptor(out["layer4"])[0])
    assert torch.allclose(found.global_descriptor, aggregate_global(per_scale), atol=1e-5)
    local_only = delfi.models.create("delg", load=False, **OPEN, extract_global=False).extract(image())
    assert local_only.global_descriptor is None


def test_query_crop_keeps_full_image_coordinates():
    model = delfi.models.create("delg", load=False, score_threshold=0.0, top_k=0, scales=[1.0], max_image_size=1024)
    box = (32.0, 16.0, 96.0, 80.0)
    found = model.extract(image(), bbox=box)
    assert found.image_size == (128, 96)
    assert len(found) == 4 * 4  # a 64x64 crop has 4x4 layer3 cells
    xs, ys = found.keypoints[:, 0], found.keypoints[:, 1]
    assert float(xs.min()) == 32.0 and float(ys.min()) == 16.0 and float(xs.max()) == 32.0 + 48 and float(ys.max()) == 16.0 + 48


def test_pca_is_applied_from_the_config(tmp_path):
    rng = np.random.default_rng(0)
    pca = fit_pca_streaming([rng.standard_normal((600, 1024))])
    path = save_pca(pca, tmp_path / "pca.h5")
    found = delfi.models.create("delf", load=False, **OPEN, top_k=30, pca=str(path), pca_dims=40).extract(image())
    assert found.descriptors.shape == (30, 40)
    assert torch.allclose(found.descriptors.norm(dim=1), torch.ones(30), atol=1e-5)


def test_bfloat16_stays_close_to_float32():
    common = dict(load=False, **OPEN, scales=[1.0], global_scales=[1.0], top_k=0)
    full = delfi.models.create("delg", **common)
    half = delfi.models.create("delg", **common, precision="bfloat16")
    half.load_state_dict(full.state_dict())
    a, b = full.extract(image()), half.extract(image())
    assert b.descriptors.dtype == torch.float32 and len(a) == len(b) == 8 * 6  # every cell kept at threshold 0
    assert float(torch.dot(a.global_descriptor, b.global_descriptor)) > 0.99
    order_a, order_b = torch.argsort(a.keypoints[:, 0] * 1000 + a.keypoints[:, 1]), torch.argsort(b.keypoints[:, 0] * 1000 + b.keypoints[:, 1])
    cosine = (a.descriptors[order_a] * b.descriptors[order_b]).sum(1)
    assert float(cosine.mean()) > 0.98
    with pytest.raises(ConfigError, match="precision"):
        delfi.models.resolve_config("delf", {"precision": "float16"})
