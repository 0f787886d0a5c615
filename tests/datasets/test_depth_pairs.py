"""Depth + pose pairs (MegaDepth, D2-Net layout) on exactly rendered synthetic scenes: the item
contract, flow = the plane homography, photometric agreement, occlusion and depth inconsistency,
pair selection, determinism, bad files."""

from __future__ import annotations

import shutil
import warnings

import h5py
import numpy as np
import pytest
import torch

from delfi.datasets.depth_pairs import DepthPosePairs, read_scene_info
from delfi.datasets.synthetic_depth import make_synthetic_depth_scene
from delfi.train.losses import warp_by_flow

C = 128  # crop size


@pytest.fixture(scope="module")
def plane(tmp_path_factory):
    root = tmp_path_factory.mktemp("plane")
    return make_synthetic_depth_scene(root, num_cameras=4, occluder=False, seed=0, image_ext=".png")


@pytest.fixture(scope="module")
def occluded(tmp_path_factory):
    root = tmp_path_factory.mktemp("occluded")
    return make_synthetic_depth_scene(root, num_cameras=4, occluder=True, seed=1, image_ext=".png")


def copy_scene(scene, tmp_path, **changes):
    """A copy of a scene's files (to break them), or a fresh scene written with ``changes``."""
    root = tmp_path / "copy"
    if changes:
        return make_synthetic_depth_scene(root, **changes)
    shutil.copytree(scene.root, root)
    return root


def crop_grid():
    v, u = np.mgrid[0:C, 0:C].astype(np.float64)
    return np.stack([u, v], -1)


def apply(H, points):
    q = points @ H[:, :2].T + H[:, 2]
    return q[..., :2] / q[..., 2:]


def shifted(H, corner1, corner2):
    """Full-image homography -> crop 1 -> crop 2."""
    t1 = np.array([[1, 0, corner1[0]], [0, 1, corner1[1]], [0, 0, 1]], np.float64)
    t2 = np.array([[1, 0, -corner2[0]], [0, 1, -corner2[1]], [0, 0, 1]], np.float64)
    return t2 @ H @ t1


def homography_from_first_principles(scene, i, j):
    """COLMAP-convention plane homography K2 (R + t n1^T / d1) K1^-1, moved to delfi's pixel
    centres (x_colmap = x_delfi + 0.5); the background plane is z = d in the world frame."""
    rel = scene.poses[j] @ np.linalg.inv(scene.poses[i])
    R, t = rel[:3, :3], rel[:3, 3]
    rect = scene.rectangles[0]
    n1 = scene.poses[i][:3, :3] @ rect.normal
    d1 = rect.offset + n1 @ scene.poses[i][:3, 3]
    H = scene.intrinsics[j] @ (R + np.outer(t, n1) / d1) @ np.linalg.inv(scene.intrinsics[i])
    half = np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1]])
    return np.linalg.inv(half) @ H @ half


def test_items_follow_the_pair_contract(plane):
    data = DepthPosePairs(plane.root, crop_size=C, pairs_per_scene=5, seed=1)
    assert len(data) == 5 and data.skipped == [] and data.empty_scenes == []
    item = data[0]
    assert set(item) == {"image1", "image2", "flow", "mask", "homography", "index"}
    assert item["image1"].shape == item["image2"].shape == (3, C, C) and item["image1"].dtype == torch.float32
    assert item["flow"].shape == (2, C, C) and item["flow"].dtype == torch.float32
    assert item["mask"].shape == (C, C) and item["mask"].dtype == torch.bool
    assert item["homography"].shape == (3, 3) and item["homography"].dtype == torch.float64
    assert torch.isnan(item["homography"]).all()
    assert item["index"].dtype == torch.int64 and int(item["index"]) == 0
    assert torch.isfinite(item["flow"]).all()
    for key in ("image1", "image2"):
        assert 0 <= item[key].min() and item[key].max() <= 1
    batch = torch.utils.data.default_collate([data[0], data[1]])
    assert batch["flow"].shape == (2, 2, C, C)
    with pytest.raises(IndexError):
        data[5]
    # crops larger than the 320 x 240 views: centred, zero-padded, never valid outside the image
    big = DepthPosePairs(plane.root, crop_size=256, pairs_per_scene=2, seed=1)
    item, info = big.sample(0)
    assert info.corner1[1] == info.corner2[1] == -8
    assert item["image1"][:, :8].abs().sum() == 0 and not item["mask"][:8].any() and not item["mask"][-8:].any()
    assert item["mask"].float().mean() > 0.3


def test_flow_is_the_plane_homography_and_the_pixels_agree(plane):
    data = DepthPosePairs(plane.root, crop_size=C, pairs_per_scene=6, seed=2)
    points = crop_grid()
    for index in range(len(data)):
        item, info = data.sample(index)
        mask, flow = item["mask"].numpy(), item["flow"].permute(1, 2, 0).double().numpy()
        assert info.consistent and mask.mean() > 0.3, (info, mask.mean())
        H = shifted(homography_from_first_principles(plane, info.i, info.j), info.corner1, info.corner2)
        expected = apply(H, points)
        np.testing.assert_allclose(flow[mask], expected[mask], atol=1e-3, rtol=0)
        same = shifted(plane.homography(info.i, info.j), info.corner1, info.corner2)
        np.testing.assert_allclose(same / same[2, 2], H / H[2, 2], atol=1e-9)
        # every pixel of crop 1 that sees the plane and lands well inside crop 2 is valid
        inside = (expected >= 1).all(-1) & (expected <= C - 2).all(-1)
        assert mask[inside].mean() > 0.97
        assert not mask[~((expected >= 0).all(-1) & (expected <= C - 1).all(-1))].any()
        # photometric check: image 2 sampled at the flow reproduces image 1 on valid pixels
        back = warp_by_flow(item["image2"][None], item["flow"][None])[0]
        error = (back - item["image1"]).abs().mean(0)[item["mask"]].mean()
        off = warp_by_flow(item["image2"][None], item["flow"][None] + 6.0)[0]
        baseline = (off - item["image1"]).abs().mean(0)[item["mask"]].mean()
        assert error < 0.01 and error < baseline / 5, (error, baseline)


def first_hit(scene, camera, points):
    """Depth along camera ``camera``'s rays through world ``points`` (N, 3) of the nearest
    rectangle (exact ray casting; inf = none)."""
    pose = scene.poses[camera]
    R, t = pose[:3, :3], pose[:3, 3]
    centre = -R.T @ t
    rays = points - centre
    z = rays @ R[2]  # camera z of the points
    best = np.full(len(points), np.inf)
    for rect in scene.rectangles:
        s = (rect.offset - rect.normal @ centre) / (rays @ rect.normal)
        hit = centre + s[:, None] * rays
        a, b = (hit - rect.origin) @ rect.axes[0], (hit - rect.origin) @ rect.axes[1]
        ok = (s > 0) & (np.abs(a) <= rect.half[0]) & (np.abs(b) <= rect.half[1])
        best = np.where(ok, np.minimum(best, s * z), best)
    return best, z


def test_occluded_pixels_are_invalid(occluded):
    data = DepthPosePairs(occluded.root, crop_size=C, pairs_per_scene=10, seed=3)
    total_occluded = total_visible = recalled = false_valid = 0
    for index in range(len(data)):
        item, info = data.sample(index)
        depth1 = h5py.File(occluded.depth_paths[info.i], "r")["depth"][()].astype(np.float64)
        v, u = np.mgrid[0:C, 0:C]
        rows, cols = v + info.corner1[1], u + info.corner1[0]
        inimage = (rows >= 0) & (cols >= 0) & (rows < depth1.shape[0]) & (cols < depth1.shape[1])
        z1 = np.where(inimage, depth1[np.clip(rows, 0, depth1.shape[0] - 1), np.clip(cols, 0, depth1.shape[1] - 1)], 0)
        # the world point each crop-1 pixel sees (camera i: X_cam = z K^-1 [x + 0.5, y + 0.5, 1])
        pix = np.stack([cols + 0.5, rows + 0.5, np.ones_like(z1)], -1).reshape(-1, 3)
        X_cam = (pix @ np.linalg.inv(occluded.intrinsics[info.i]).T) * z1.reshape(-1, 1)
        pose = occluded.poses[info.i]
        X = (X_cam - pose[:3, 3]) @ pose[:3, :3]
        nearest, z = first_hit(occluded, info.j, X)
        visible = (np.abs(nearest - z) <= 1e-6 * z).reshape(C, C)
        flow = item["flow"].permute(1, 2, 0).numpy()
        inside = (z1 > 0) & (flow >= 1).all(-1) & (flow <= C - 2).all(-1)
        mask = item["mask"].numpy()
        occluded_here = inside & ~visible
        total_occluded += occluded_here.sum()
        false_valid += (mask & occluded_here).sum()
        total_visible += (inside & visible).sum()
        recalled += (mask & inside & visible).sum()
    assert total_occluded > 500  # the scene does occlude
    assert false_valid <= 0.002 * total_occluded + 2  # at most a few sub-pixel silhouette edges
    assert recalled > 0.9 * total_visible  # and the rest stays valid


def test_inconsistent_depth_is_invalid(plane, tmp_path):
    only01 = np.full((4, 4), -1.0)
    only01[0, 1] = 0.9
    scene = copy_scene(plane, tmp_path, num_cameras=4, seed=0, image_ext=".png", overlap_matrix=only01)
    width = scene.size[0]
    with h5py.File(scene.depth_paths[1], "r+") as f:  # image 2's depth is wrong on its left half
        depth = f["depth"][()]
        depth[:, : width // 2] *= 1.3
        f["depth"][...] = depth
    for relative in (True, False):  # 5 % of the depth, or D2-Net's absolute 0.05
        data = DepthPosePairs(scene.root, crop_size=C, pairs_per_scene=4, seed=4, relative_tolerance=relative)
        landed_wrong = 0
        for index in range(len(data)):
            item, info = data.sample(index)
            assert (info.i, info.j) == (0, 1) and info.consistent
            x2 = item["flow"][0].numpy() + info.corner2[0]
            mask = item["mask"].numpy()
            wrong = (x2 >= 0) & (x2 <= width // 2 - 1.5)
            landed_wrong += wrong.sum()
            assert not mask[wrong].any()
            assert mask[x2 >= width // 2 + 1].mean() > 0.5
        assert landed_wrong > 1000


def test_pair_selection_respects_the_thresholds(plane, tmp_path):
    overlap = np.array([[-1, 0.3, 0.6, 0.95], [0.3, -1, 0.5, 1.0], [0.6, 0.5, -1, 1.2], [0.95, 1.0, 1.2, -1]])
    scene = copy_scene(plane, tmp_path, num_cameras=4, seed=0, image_ext=".png", overlap_matrix=overlap)
    data = DepthPosePairs(scene.root, crop_size=C, pairs_per_scene=60, seed=5)
    expected = {(i, j) for i in range(4) for j in range(4) if i != j and 0.5 <= overlap[i, j] <= 1.0}
    assert {tuple(p) for p in data.scenes[0].pairs.tolist()} == expected
    drawn = {data.pair(k)[1:] for k in range(len(data))}
    assert drawn == expected  # 60 draws with replacement from 8 pairs reach them all

    tight = DepthPosePairs(scene.root, crop_size=C, min_overlap=0.9, max_overlap=1.0, pairs_per_scene=30, seed=5)
    assert {tight.pair(k)[1:] for k in range(len(tight))} == {(0, 3), (3, 0), (1, 3), (3, 1)}

    ratio = scene.scale_ratio_matrix
    limit = 1.05
    scaled = DepthPosePairs(scene.root, crop_size=C, max_scale_ratio=limit, pairs_per_scene=10, seed=5)
    for i, j in scaled.scenes[0].pairs.tolist():
        assert (i, j) in expected and 1 / limit <= ratio[i, j] <= limit
    assert len(scaled.scenes[0].pairs) == sum(1 / limit <= ratio[i, j] <= limit for i, j in expected)

    # no pair at all in the scene: no items, and a dataset of only such scenes is refused
    with pytest.raises(ValueError, match="at least 1 item"):
        DepthPosePairs(scene.root, min_overlap=2.0)
    second = make_synthetic_depth_scene(scene.root, scene_id="0001", num_cameras=3, seed=9, overlap_matrix=np.full((3, 3), -1.0))
    both = DepthPosePairs(scene.root, crop_size=C, pairs_per_scene=7)
    assert len(both) == 7 and both.empty_scenes == ["0001.0"] and second.scene_info.exists()
    assert len(DepthPosePairs(scene.root, scenes=["0000"], pairs_per_scene=7)) == 7


def test_same_seed_epoch_index_same_item_other_epoch_other_pairs(plane):
    a = DepthPosePairs(plane.root, crop_size=C, pairs_per_scene=20, seed=6)
    b = DepthPosePairs(plane.root, crop_size=C, pairs_per_scene=20, seed=6)
    first = a[3]
    _ = a[0], a[7]  # order does not matter
    for key, value in b[3].items():
        torch.testing.assert_close(value, first[key], rtol=0, atol=0, equal_nan=True, msg=key)
    pairs0 = [a.pair(k) for k in range(len(a))]
    b.set_epoch(1)
    assert [b.pair(k) for k in range(len(b))] != pairs0
    assert not torch.equal(b[3]["image1"], first["image1"]) or not torch.equal(b[3]["image2"], first["image2"])
    c = DepthPosePairs(plane.root, crop_size=C, pairs_per_scene=20, seed=7)
    assert [c.pair(k) for k in range(len(c))] != pairs0
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(a, [0, 1, 2, 3]), batch_size=1, num_workers=2)
    for batch in loader:
        i = int(batch["index"])
        assert torch.equal(batch["flow"][0], a[i]["flow"]) and torch.equal(batch["image2"][0], a[i]["image2"])


def test_missing_and_unreadable_files_are_reported_and_skipped(plane, tmp_path):
    root = copy_scene(plane, tmp_path)
    missing = root / plane.depth_paths[2].relative_to(plane.root)
    missing.unlink()
    with pytest.warns(UserWarning, match=str(missing)):
        data = DepthPosePairs(root, crop_size=C, pairs_per_scene=12, seed=8)
    assert (str(missing), "not found") in data.skipped
    assert all(2 not in pair for pair in data.scenes[0].pairs.tolist())
    assert len(data.scenes[0].pairs) == 6

    # an image broken after construction: named once, its pairs replaced by others of the epoch
    broken = root / plane.image_paths[0].relative_to(plane.root)
    broken.write_bytes(b"not an image")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        infos = [data.sample(k)[1] for k in range(len(data))]
    named = [w for w in caught if str(broken) in str(w.message)]
    assert len(named) == 1
    assert any(0 in data.pair(k)[1:] for k in range(len(data)))  # the draw did meet the broken image
    assert all(0 not in (info.i, info.j) for info in infos)

    # a depth file that is not HDF5 (image 0 repaired, a fresh dataset)
    shutil.copy(plane.image_paths[0], broken)
    bad_depth = root / plane.depth_paths[1].relative_to(plane.root)
    bad_depth.write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="not found"):
        data = DepthPosePairs(root, crop_size=C, pairs_per_scene=12, seed=8)
    with pytest.warns(UserWarning, match=str(bad_depth)):
        infos = [data.sample(k)[1] for k in range(len(data))]
    assert {(info.i, info.j) for info in infos} == {(0, 3), (3, 0)}

    # nothing readable any more: an error, not a loop or a crash elsewhere
    (root / plane.image_paths[3].relative_to(plane.root)).write_bytes(b"")
    with pytest.warns(UserWarning, match="not found"):
        data = DepthPosePairs(root, crop_size=C, pairs_per_scene=2, seed=8)
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="no depth pair"):
        data[0]


def test_d2net_array_layout_and_bad_roots(plane, tmp_path):
    root = copy_scene(plane, tmp_path)
    info = root / "scene_info" / "0000.0.npz"
    with np.load(info, allow_pickle=True) as data:
        arrays = dict(data)
    # as D2-Net's preprocess_scene.py writes it: None for a missing image, flattened poses
    image_paths = list(arrays["image_paths"])
    image_paths[1] = None
    intrinsics = list(arrays["intrinsics"])
    intrinsics[1] = None
    poses = [p.flatten() for p in arrays["poses"]]
    poses[1] = None
    np.savez(
        info,
        image_paths=np.array(image_paths, dtype=object),
        depth_paths=arrays["depth_paths"],
        intrinsics=np.array(intrinsics, dtype=object),
        poses=np.array(poses, dtype=object),
        overlap_matrix=arrays["overlap_matrix"],
        scale_ratio_matrix=arrays["scale_ratio_matrix"],
    )
    scene = read_scene_info(info, root)
    assert scene.image_paths[1] is None and len(scene.pairs) == 6 and all(1 not in p for p in scene.pairs.tolist())
    np.testing.assert_allclose(scene.poses[3], plane.poses[3])
    data = DepthPosePairs(root, crop_size=C, pairs_per_scene=2)
    assert data[0]["mask"].any()

    # an image larger than its depth map is resized to it (K belongs to the depth map's grid)
    from PIL import Image

    path = root / plane.image_paths[0].relative_to(plane.root)
    Image.open(path).resize((640, 480), Image.BICUBIC).save(path)
    data = DepthPosePairs(root, crop_size=C, pairs_per_scene=8, seed=3)
    item, info = next(s for s in map(data.sample, range(len(data))) if s[1].i == 0)
    back = warp_by_flow(item["image2"][None], item["flow"][None])[0]
    assert item["mask"].float().mean() > 0.3
    assert (back - item["image1"]).abs().mean(0)[item["mask"]].mean() < 0.02

    with pytest.raises(ValueError, match=r"scene_info.*npz"):
        DepthPosePairs(tmp_path / "nothing")
    (tmp_path / "empty" / "scene_info").mkdir(parents=True)
    with pytest.raises(ValueError, match="no scene info"):
        DepthPosePairs(tmp_path / "empty")
