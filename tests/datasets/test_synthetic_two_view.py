"""The synthetic two-view scene: exact geometry, visibility, outlier share, descriptors that
recover the matches, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from delfi.datasets.synthetic_two_view import make_two_view_scene
from delfi.eval.pose import essential_from_pose, normalise_points, rotation_error_deg


def project(K, X):
    x = X @ K.T
    return x[:, :2] / x[:, 2:]


def test_noise_free_scene_is_exact():
    s = make_two_view_scene(400, noise_px=0.0, outlier_ratio=0.2, seed=3)
    inl = s.matches[~s.is_outlier]
    assert s.points3d.shape == (400, 3) and len(inl) == 400
    X1 = s.points3d @ s.R.T + s.t
    np.testing.assert_allclose(s.keypoints0[inl[:, 0]], project(s.K0, s.points3d), atol=1e-9)
    np.testing.assert_allclose(s.keypoints1[inl[:, 1]], project(s.K1, X1), atol=1e-9)
    # y1^T E y0 = 0 with E from T_0to1 (X1 = R X0 + t)
    y0 = normalise_points(s.keypoints0[inl[:, 0]], s.K0)
    y1 = normalise_points(s.keypoints1[inl[:, 1]], s.K1)
    E = essential_from_pose(s.T_0to1)
    residual = np.sum(np.c_[y1, np.ones(len(y1))] * (np.c_[y0, np.ones(len(y0))] @ E.T), axis=1)
    assert np.abs(residual).max() < 1e-9
    np.testing.assert_array_equal(s.T_0to1[:3, :3], s.R)
    np.testing.assert_array_equal(s.T_0to1[:3, 3], s.t)
    np.testing.assert_array_equal(s.T_0to1[3], [0, 0, 0, 1])


def test_pose_matches_its_parameters():
    s = make_two_view_scene(50, baseline=2.5, rotation_deg=17.0, seed=8)
    np.testing.assert_allclose(s.R.T @ s.R, np.eye(3), atol=1e-12)
    assert np.linalg.det(s.R) == pytest.approx(1.0)
    assert rotation_error_deg(np.eye(3), s.R) == pytest.approx(17.0, abs=1e-6)
    centre1 = -s.R.T @ s.t  # camera 1's centre in camera 0's frame
    assert np.linalg.norm(centre1) == pytest.approx(2.5)
    assert centre1[0] > 0.9 * 2.5  # mostly sideways


def test_points_are_visible_in_both_images():
    w, h = 320, 200
    s = make_two_view_scene(300, noise_px=0.0, image_size=(w, h), focal=250.0, focal1=300.0, seed=5)
    assert s.image_size == (w, h)
    assert s.K1[0, 0] == 300.0 and s.K0[0, 0] == 250.0
    np.testing.assert_allclose(s.K0[:2, 2], [(w - 1) / 2, (h - 1) / 2])
    X1 = s.points3d @ s.R.T + s.t
    assert s.points3d[:, 2].min() > 0 and X1[:, 2].min() > 0
    assert 4.0 <= s.points3d[:, 2].min() and s.points3d[:, 2].max() <= 12.0  # the default depth range
    inl = s.matches[~s.is_outlier]
    for kp in (s.keypoints0[inl[:, 0]], s.keypoints1[inl[:, 1]]):
        assert kp.min() >= 0 and kp[:, 0].max() <= w - 1 and kp[:, 1].max() <= h - 1
    for kp in (s.keypoints0, s.keypoints1):  # outliers too, and noisy keypoints stay in the image
        assert kp.min() >= -0.5 and kp[:, 0].max() <= w - 0.5 and kp[:, 1].max() <= h - 0.5


@pytest.mark.parametrize("ratio", [0.0, 0.2, 0.5, 0.9])
def test_outlier_share(ratio):
    s = make_two_view_scene(200, outlier_ratio=ratio, seed=1)
    k = len(s.matches)
    assert s.is_outlier.shape == (k,) and s.is_outlier.dtype == bool
    assert abs(s.is_outlier.mean() - ratio) <= 1 / k
    assert (~s.is_outlier).sum() == 200


def test_outliers_are_off_the_epipolar_lines():
    s = make_two_view_scene(200, noise_px=0.0, outlier_ratio=0.5, seed=2)
    out = s.matches[s.is_outlier]
    y0 = normalise_points(s.keypoints0[out[:, 0]], s.K0)
    y1 = normalise_points(s.keypoints1[out[:, 1]], s.K1)
    residual = np.sum(np.c_[y1, np.ones(len(y1))] * (np.c_[y0, np.ones(len(y0))] @ essential_from_pose(s.T_0to1).T), 1)
    assert np.median(np.abs(residual)) > 1e-2


def test_matches_are_a_shuffled_one_to_one_pairing():
    s = make_two_view_scene(100, seed=6)
    m = len(s.keypoints0)
    assert s.keypoints1.shape == (m, 2) and s.matches.shape == (m, 2) and s.matches.dtype == np.int64
    assert sorted(s.matches[:, 0]) == list(range(m)) and sorted(s.matches[:, 1]) == list(range(m))
    assert np.all(np.diff(s.matches[:, 0]) > 0)  # sorted by the index in image 0
    assert not np.array_equal(s.matches[:, 1], s.matches[:, 0])  # not the identity


def test_noise_level():
    clean = make_two_view_scene(2000, noise_px=0.0, seed=9)
    noisy = make_two_view_scene(2000, noise_px=0.5, seed=9)  # same scene apart from the noise
    np.testing.assert_array_equal(clean.points3d, noisy.points3d)
    np.testing.assert_array_equal(clean.matches, noisy.matches)
    inl = noisy.matches[~noisy.is_outlier]
    offsets = noisy.keypoints0[inl[:, 0]] - clean.keypoints0[inl[:, 0]]
    assert np.std(offsets) == pytest.approx(0.5, rel=0.1)


def test_mutual_nearest_neighbours_of_the_descriptors_recover_the_matches():
    s = make_two_view_scene(500, outlier_ratio=0.2, seed=0)
    assert s.descriptors0.dtype == np.float32 and s.descriptors0.shape == (len(s.keypoints0), 128)
    np.testing.assert_allclose(np.linalg.norm(s.descriptors1, axis=1), 1.0, atol=1e-6)
    sim = s.descriptors0 @ s.descriptors1.T
    nn01, nn10 = sim.argmax(1), sim.argmax(0)
    mutual = np.flatnonzero(nn10[nn01] == np.arange(len(nn01)))
    found = np.stack([mutual, nn01[mutual]], axis=1)
    np.testing.assert_array_equal(found, s.matches)


def test_deterministic_for_a_seed():
    a, b, c = make_two_view_scene(120, seed=11), make_two_view_scene(120, seed=11), make_two_view_scene(120, seed=12)
    for field in ("points3d", "keypoints0", "keypoints1", "matches", "is_outlier", "descriptors0", "descriptors1",
                  "K0", "K1", "R", "t", "T_0to1"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.keypoints0, c.keypoints0) and not np.array_equal(a.R, c.R)


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_points"):
        make_two_view_scene(0)
    with pytest.raises(ValueError, match="outlier_ratio"):
        make_two_view_scene(10, outlier_ratio=1.0)
    with pytest.raises(ValueError, match="depth_range"):
        make_two_view_scene(10, depth_range=(0.0, 3.0))
    with pytest.raises(ValueError, match="sees too little"):  # camera 1 looks away
        make_two_view_scene(10, rotation_deg=180.0)
