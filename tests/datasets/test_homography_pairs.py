"""Homography pairs from single photos and real flow pairs: determinism, flow / homography
consistency, coverage, bad-input reporting."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from delfi.datasets.homography_pairs import FlowPairs, HomographyPairs, PairConfig
from delfi.datasets.pair_geometry import flow_from_homography, tilt_homography
from delfi.datasets.synthetic import textured_image
from delfi.train.losses import warp_by_flow

SMALL = PairConfig(crop_size=64, min_size=96, max_size=160, crop_trials=20)


def save(image: torch.Tensor, path) -> None:
    Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(path)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    for i, (w, h) in enumerate([(200, 150), (120, 180), (160, 160)]):
        save(textured_image(w, h, seed=i), root / f"photo{i}.png")
    return root


def test_items_have_the_documented_shapes(folder):
    data = HomographyPairs(folder, SMALL, seed=1)
    assert len(data) == 3 and data.skipped == []
    item = data[0]
    assert item["image1"].shape == item["image2"].shape == (3, 64, 64)
    assert item["flow"].shape == (2, 64, 64) and item["flow"].dtype == torch.float32
    assert item["mask"].shape == (64, 64) and item["mask"].dtype == torch.bool
    assert item["homography"].shape == (3, 3) and item["homography"].dtype == torch.float64
    for key in ("image1", "image2"):
        assert 0 <= item[key].min() and item[key].max() <= 1
    assert torch.isfinite(item["flow"]).all()


def test_deterministic_per_seed_epoch_index(folder):
    a, b = HomographyPairs(folder, SMALL, seed=3), HomographyPairs(folder, SMALL, seed=3)
    first = a[1]
    _ = a[0], a[2]  # order does not matter
    for key, value in b[1].items():
        assert torch.equal(value, first[key]), key
    assert not torch.equal(HomographyPairs(folder, SMALL, seed=4)[1]["homography"], first["homography"])
    b.set_epoch(1)
    assert not torch.equal(b[1]["homography"], first["homography"])


def test_same_items_through_a_two_worker_loader(folder):
    data = HomographyPairs(folder, SMALL, seed=5)
    loader = torch.utils.data.DataLoader(data, batch_size=1, num_workers=2)
    for batch in loader:
        i = int(batch["index"])
        assert torch.equal(batch["image2"][0], data[i]["image2"]) and torch.equal(batch["flow"][0], data[i]["flow"])


def test_flow_matches_the_homography_and_the_pixels(folder):
    config = PairConfig(crop_size=64, min_size=96, max_size=160, crop_trials=20, noise=0.0, jitter=None)
    data = HomographyPairs(folder, config, seed=7)
    for index in range(len(data)):
        item = data[index]
        flow, mask = item["flow"], item["mask"]
        assert mask.float().mean() > 0.5
        # the flow is the homography applied to every pixel centre of crop 1
        expected, _ = flow_from_homography(item["homography"].numpy(), 64)
        torch.testing.assert_close(flow, expected)
        v, u = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
        h = item["homography"]
        p = torch.stack([u, v, torch.ones_like(u)]).double().reshape(3, -1)
        q = h @ p
        torch.testing.assert_close(flow.reshape(2, -1).double(), q[:2] / q[2], atol=1e-3, rtol=0)
        # warping image 2 by the flow reproduces image 1 on valid pixels (within resampling blur)
        back = warp_by_flow(item["image2"][None], flow[None])[0]
        error = (back - item["image1"]).abs().mean(0)[mask].mean()
        misaligned = (torch.roll(back, 3, dims=2) - item["image1"]).abs().mean(0)[mask].mean()
        assert error < 0.03 and error < 0.6 * misaligned, (index, float(error), float(misaligned))


def test_mask_fraction_is_high_at_the_official_settings(tmp_path):
    save(textured_image(640, 480, seed=9), tmp_path / "big.png")
    data = HomographyPairs(tmp_path, PairConfig(crop_trials=30), seed=0)
    fractions = []
    for epoch in range(4):
        data.set_epoch(epoch)
        item = data[0]
        assert item["image1"].shape == (3, 192, 192)
        fractions.append(item["mask"].float().mean().item())
    assert min(fractions) > 0.5, fractions


def test_broken_images_are_reported_and_skipped(folder, tmp_path):
    for src in folder.iterdir():
        (tmp_path / src.name).write_bytes(src.read_bytes())
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.warns(UserWarning) as caught:
        data = HomographyPairs(tmp_path, SMALL)
    assert sorted(str(w.message).split(":")[0].rsplit("/", 1)[-1] for w in caught) == ["broken.jpg", "empty.png"]
    assert len(data) == 3
    names = {p.rsplit("/", 1)[-1]: reason for p, reason in data.skipped}
    assert set(names) == {"broken.jpg", "empty.png"} and "empty" in names["empty.png"]


def test_too_few_images_refused(folder, tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"garbage")
    with pytest.warns(UserWarning), pytest.raises(ValueError, match=r"at least 1 usable image.*broken.jpg"):
        HomographyPairs(tmp_path, SMALL)
    with pytest.raises(ValueError, match="at least 5 usable image"):
        HomographyPairs(folder, SMALL, min_images=5)


def test_tilt_shrinks_one_edge():
    h = tilt_homography(101, 51, direction=0, skew=25)  # left edge: 50 / (50 + 50) of its length
    corners = np.array([[0, 0, 1], [0, 50, 1], [100, 0, 1]], float) @ h.T
    corners = corners[:, :2] / corners[:, 2:]
    assert corners[1, 1] - corners[0, 1] == pytest.approx(25, abs=1e-6)
    np.testing.assert_allclose(corners[2], [100, 0], atol=1e-6)


def test_flow_pairs_from_npy_and_npz(tmp_path):
    image = textured_image(120, 100, seed=11)
    shifted = torch.roll(image, shifts=(4, -6), dims=(1, 2))  # image 2 = image 1 moved by (-6, +4)
    save(image, tmp_path / "a.png")
    save(shifted, tmp_path / "b.png")
    v, u = np.mgrid[0:100, 0:120].astype(np.float32)
    flow = np.stack([u - 6, v + 4], -1)
    flow[:10] = np.nan  # no correspondence in the top rows
    np.save(tmp_path / "ab.npy", flow)
    np.savez(tmp_path / "ab.npz", flow=flow - np.stack([u, v], -1), mask=np.ones((100, 120), bool))
    (tmp_path / "pairs.txt").write_text("# image1 image2 flow\na.png b.png ab.npy\na.png b.png missing.npy\n")
    config = PairConfig(crop_size=64, noise=0.0, jitter=None, crop_trials=10)
    with pytest.warns(UserWarning, match="missing.npy"):
        data = FlowPairs(tmp_path / "pairs.txt", config)
    assert len(data) == 1 and len(data.skipped) == 1
    item = data[0]
    assert set(item) == {"image1", "image2", "flow", "mask", "homography", "index"}
    assert torch.isnan(item["homography"]).all() and torch.isfinite(item["flow"]).all()
    mask = item["mask"]
    assert mask.float().mean() > 0.5
    back = warp_by_flow(item["image2"][None], item["flow"][None])[0]
    assert (back - item["image1"]).abs().amax(0)[mask].max() < 1e-5  # integer shift: exact
    relative = FlowPairs([(tmp_path / "a.png", tmp_path / "b.png", tmp_path / "ab.npz")], config, relative=True)[0]
    assert torch.equal(relative["mask"], mask) and torch.allclose(relative["flow"], item["flow"])
