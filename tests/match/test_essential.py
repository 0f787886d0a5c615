"""Essential-matrix verification on a synthetic calibrated scene with a known relative pose."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

pytest.importorskip("cv2")

from delfi.io.cameras import Camera  # noqa: E402
from delfi.match import estimate_geometry, verify  # noqa: E402
from delfi.match.essential import skew  # noqa: E402
from delfi.match.pipeline import MatchingConfig, match_features  # noqa: E402
from delfi.types import Features, Matches  # noqa: E402

K0 = np.array([[520.0, 0, 319.5], [0, 520.0, 239.5], [0, 0, 1]])
K1 = np.array([[610.0, 0, 300.0], [0, 600.0, 250.0], [0, 0, 1]])
BACKENDS = ["opencv"] + (["poselib"] if importlib.util.find_spec("poselib") else [])


def _rotation(axis_angle) -> np.ndarray:
    v = np.asarray(axis_angle, dtype=np.float64)
    th = np.linalg.norm(v)
    x = skew(v / th)
    return np.eye(3) + np.sin(th) * x + (1 - np.cos(th)) * x @ x


R_TRUE = _rotation([0.04, -0.15, 0.03])
T_TRUE = np.array([0.9, 0.15, 0.25]) / np.linalg.norm([0.9, 0.15, 0.25])


def _project(K, X):
    x = X @ K.T
    return x[:, :2] / x[:, 2:]


def scene(n=400, outliers=0.3, noise=0.5, seed=0, distort=None):
    """(p0, p1, inlier mask): points in front of both cameras, noise in pixels, uniform outliers."""
    rng = np.random.default_rng(seed)
    X = np.c_[rng.uniform(-3, 3, n), rng.uniform(-2, 2, n), rng.uniform(5, 12, n)]
    p0, p1 = _project(K0, X), _project(K1, X @ R_TRUE.T + T_TRUE)
    if distort is not None:  # SIMPLE_RADIAL distortion of image 1
        y = (p1 - K1[:2, 2]) / K1[0, 0]
        p1 = y * (1 + distort * (y**2).sum(1, keepdims=True)) * K1[0, 0] + K1[:2, 2]
    p0 = p0 + rng.normal(0, noise, p0.shape)
    p1 = p1 + rng.normal(0, noise, p1.shape)
    inlier = rng.random(n) >= outliers
    p1[~inlier] = rng.uniform([0, 0], [640, 480], ((~inlier).sum(), 2))
    return p0, p1, inlier


def _angle(R):
    return np.degrees(np.arccos(np.clip((np.trace(R) - 1) / 2, -1, 1)))


def _run(p0, p1, backend="opencv", intrinsics=(K0, K1), seed=0, threshold=1.0):
    k = len(p0)
    matches = Matches(indices=torch.arange(k).repeat(2, 1).T.contiguous(), scores=torch.ones(k))
    return verify(p0, p1, matches, "essential", intrinsics=intrinsics, backend=backend, seed=seed,
                  threshold=threshold)  # fmt: skip


@pytest.mark.parametrize("backend", BACKENDS)
def test_recovers_pose_and_inliers(backend):
    p0, p1, inlier = scene()
    v = _run(p0, p1, backend)
    assert v.kind == "essential" and v.meta["status"] == "ok"
    R, t = np.array(v.meta["rotation"]), np.array(v.meta["translation"])
    assert _angle(R.T @ R_TRUE) < 0.5  # 0.5 px noise; outliers that fall inside the band pull it too
    assert np.degrees(np.arccos(np.clip(t @ T_TRUE, -1, 1))) < 2.0  # the sign too: cheirality fixes it
    found = v.inliers.numpy()
    assert (found & inlier).sum() / found.sum() > 0.97 and (found & inlier).sum() / inlier.sum() > 0.8  # 1 px on 0.5 px noise in both
    E = v.model.numpy()
    assert abs(np.linalg.norm(E) - 1) < 1e-9
    e_true = skew(T_TRUE) @ R_TRUE
    assert min(np.abs(E - e_true / np.linalg.norm(e_true)).max(), np.abs(E + e_true / np.linalg.norm(e_true)).max()) < 0.02
    assert v.meta["intrinsics"] == [K0.tolist(), K1.tolist()]


@pytest.mark.parametrize("backend", BACKENDS)
def test_exact_points_give_the_exact_pose(backend):
    p0, p1, _ = scene(outliers=0.0, noise=0.0, seed=3)
    v = _run(p0, p1, backend)
    assert _angle(np.array(v.meta["rotation"]).T @ R_TRUE) < 1e-3  # OpenCV's own E: 0.15 degrees off here
    assert np.abs(np.array(v.meta["translation"]) - T_TRUE).max() < 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
def test_same_seed_same_result(backend):
    p0, p1, _ = scene(seed=3)
    a, b = _run(p0, p1, backend, seed=7), _run(p0, p1, backend, seed=7)
    assert torch.equal(a.inliers, b.inliers) and torch.equal(a.model, b.model)


@pytest.mark.parametrize("backend", BACKENDS)
def test_distortion_of_the_camera_is_removed(backend):
    p0, p1, inlier = scene(outliers=0.0, noise=0.2, distort=0.08)
    cam1 = Camera("SIMPLE_RADIAL", 640, 480, (K1[0, 0], K1[0, 2] + 0.5, K1[1, 2] + 0.5, 0.08))
    # poselib's SIMPLE_RADIAL has one focal length: K1 with fx != fy is not one of them
    cam1 = cam1 if backend == "opencv" else Camera("SIMPLE_RADIAL", 640, 480, (610.0, 300.5, 250.5, 0.08))
    if backend != "opencv":
        K1_used = np.array([[610.0, 0, 300.0], [0, 610.0, 250.0], [0, 0, 1]])
        p0, p1, _ = scene(outliers=0.0, noise=0.2)
        y = (_project(K1_used, np.c_[np.linalg.solve(K1, np.c_[p1, np.ones(len(p1))].T).T]) - K1_used[:2, 2]) / 610.0
        p1 = y * (1 + 0.08 * (y**2).sum(1, keepdims=True)) * 610.0 + K1_used[:2, 2]
    v = _run(p0, p1, backend, intrinsics=(K0, cam1))
    assert _angle(np.array(v.meta["rotation"]).T @ R_TRUE) < 0.2
    assert v.num_inliers > 0.95 * len(p0)


def test_without_intrinsics_is_a_usage_error():
    p0, p1, _ = scene(n=50)
    with pytest.raises(ValueError, match="intrinsics"):
        estimate_geometry(p0, p1, "essential")


def test_pydegensac_has_no_essential_solver():
    p0, p1, _ = scene(n=50)
    with pytest.raises(ValueError, match="supports only"):
        estimate_geometry(p0, p1, "essential", backend="pydegensac", intrinsics=(K0, K1))


@pytest.mark.parametrize("backend", BACKENDS)
def test_too_few_and_degenerate_matches_give_a_status(backend):
    p0, p1, _ = scene(n=4)
    v = _run(p0, p1, backend)
    assert v.meta["status"] == "not enough matches" and v.model is None and v.meta["rotation"] is None
    same = np.repeat(p0[:1], 30, axis=0)
    v = _run(same, same, backend)
    assert v.meta["status"] in ("estimation failed", "too few inliers")


def test_random_matches_are_not_ok():
    rng = np.random.default_rng(5)
    p0, p1 = rng.uniform(0, 640, (300, 2)), rng.uniform(0, 480, (300, 2))
    v = _run(p0, p1)
    assert v.meta["status"] != "ok", (v.num_inliers, v.meta["chance_inliers"])


def test_match_features_guesses_colmap_default_cameras_from_the_image_size():
    p0, p1, _ = scene(n=300, outliers=0.0, noise=0.1)
    rng = np.random.default_rng(0)
    desc = torch.nn.functional.normalize(torch.from_numpy(rng.normal(size=(300, 32))).float(), dim=1)
    f0 = Features(torch.from_numpy(p0).float(), torch.ones(300), desc, image_size=(640, 480))
    f1 = Features(torch.from_numpy(p1).float(), torch.ones(300), desc, image_size=(640, 480))
    v = match_features(f0, f1, MatchingConfig(geometry="essential"))
    K = np.array(v.meta["intrinsics"][0])
    assert np.allclose(K, [[768.0, 0, 319.5], [0, 768.0, 239.5], [0, 0, 1]])  # 1.2 * 640, centred
    assert len(v) == 300 and v.meta["status"] == "ok"
    exact = match_features(f0, f1, MatchingConfig(geometry="essential"), intrinsics=(K0, K1))
    assert _angle(np.array(exact.meta["rotation"]).T @ R_TRUE) < 0.2
    with pytest.raises(ValueError, match="image size"):
        match_features(Features(f0.keypoints, f0.scores, desc), f1, MatchingConfig(geometry="essential"))
