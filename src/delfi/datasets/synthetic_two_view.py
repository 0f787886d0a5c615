"""A synthetic two-view scene with exact relative pose, for testing pose estimation and its
evaluation (`delfi.eval.pose`) without images.

`make_two_view_scene` samples 3-D points in front of camera 0 (uniform pixel in image 0, uniform
depth), keeps those that camera 1 also sees, projects them into both images (plus Gaussian pixel
noise) and adds outlier pairs: a random keypoint in each image, paired with each other, that
correspond to no point. Each image's keypoints are shuffled, so ``matches`` is not the identity.
Every match gets a random unit descriptor shared by both sides (plus a little noise), so that mutual
nearest neighbours of ``descriptors0`` / ``descriptors1`` recover ``matches`` exactly.

Conventions: delfi's pixel coordinates (the centre of the top-left pixel is (0, 0)); a camera
projects a point ``X`` of its frame to ``K X`` (dehomogenised); camera 0's frame is the world frame
and ``X1 = R X0 + t`` (``T_0to1 = [R t; 0 1]``, the ground truth `delfi.eval.pose` expects). Camera
1's centre is ``-R^T t = baseline * d`` for a direction ``d`` near +x, and ``R`` turns by
``rotation_deg`` about an axis near +y (both drawn from the seed). Deterministic for a seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["TwoViewScene", "make_two_view_scene"]


@dataclass(frozen=True, eq=False)
class TwoViewScene:
    """A two-view scene and its ground truth.

    Attributes:
        points3d: (N, 3) the 3-D points, in camera 0's frame; ``points3d[i]`` is the point of the
            i-th true match ``matches[~is_outlier][i]``. All are in front of both cameras and
            project (without noise) into both images, within ``[0, w - 1] x [0, h - 1]``.
        keypoints0, keypoints1: (M, 2) float64 keypoints of each image, in delfi pixels (noisy
            projections and outlier keypoints, shuffled; clipped to ``[-0.5, w - 0.5] x [-0.5, h - 0.5]``).
        matches: (K, 2) int64 ``(index in keypoints0, index in keypoints1)``, sorted by the first
            column; here every keypoint is in exactly one match, so K = M.
        is_outlier: (K,) bool, True for the pairings that correspond to no point.
        descriptors0, descriptors1: (M, D) float32 unit rows, one per keypoint.
        K0, K1: (3, 3) float64 intrinsics (principal point at the image centre ``((w-1)/2, (h-1)/2)``).
        R, t, T_0to1: (3, 3), (3,), (4, 4) float64 relative pose, ``X1 = R X0 + t``.
        image_size: ``(width, height)`` of both images.
    """

    points3d: np.ndarray
    keypoints0: np.ndarray
    keypoints1: np.ndarray
    matches: np.ndarray
    is_outlier: np.ndarray
    descriptors0: np.ndarray
    descriptors1: np.ndarray
    K0: np.ndarray
    K1: np.ndarray
    R: np.ndarray
    t: np.ndarray
    T_0to1: np.ndarray
    image_size: tuple[int, int]


def _intrinsics(focal: float, width: int, height: int) -> np.ndarray:
    return np.array([[focal, 0.0, (width - 1) / 2], [0.0, focal, (height - 1) / 2], [0.0, 0.0, 1.0]])


def _axis_angle(axis: np.ndarray, degrees: float) -> np.ndarray:
    """Rodrigues: the rotation by ``degrees`` about the unit ``axis``."""
    k = axis / np.linalg.norm(axis)
    Kx = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    a = math.radians(degrees)
    return np.eye(3) + math.sin(a) * Kx + (1 - math.cos(a)) * (Kx @ Kx)


def _project(K: np.ndarray, X: np.ndarray) -> np.ndarray:
    x = X @ K.T
    return x[:, :2] / x[:, 2:]


def _inside(p: np.ndarray, width: int, height: int) -> np.ndarray:
    return (p[:, 0] >= 0) & (p[:, 0] <= width - 1) & (p[:, 1] >= 0) & (p[:, 1] <= height - 1)


def _unit_rows(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def make_two_view_scene(
    num_points: int = 500,
    *,
    noise_px: float = 0.5,
    outlier_ratio: float = 0.2,
    seed: int = 0,
    image_size: tuple[int, int] = (640, 480),
    focal: float = 500.0,
    focal1: float | None = None,
    baseline: float = 1.0,
    rotation_deg: float = 10.0,
    depth_range: tuple[float, float] = (4.0, 12.0),
    descriptor_dim: int = 128,
    descriptor_noise: float = 0.01,
) -> TwoViewScene:
    """A random two-view scene (see the module docstring).

    Args:
        num_points: N, the true correspondences (points seen by both cameras), >= 1.
        noise_px: standard deviation of the Gaussian noise added to each coordinate of the true
            keypoints, in pixels (0: exact projections).
        outlier_ratio: the share of outlier pairings among all matches, in [0, 1): there are
            ``round(outlier_ratio * N / (1 - outlier_ratio))`` of them.
        seed: the random seed.
        image_size: ``(width, height)`` of both images.
        focal: focal length of camera 0 in pixels (and of camera 1 unless ``focal1``).
        focal1: focal length of camera 1, if different.
        baseline: distance between the camera centres (the scene's depths are ``depth_range``).
        rotation_deg: angle of ``R`` in degrees.
        depth_range: depths (z in camera 0) between which the points are drawn.
        descriptor_dim: D.
        descriptor_noise: standard deviation of the noise added to each descriptor entry before
            normalisation (per-entry scale of a unit vector is ``1 / sqrt(D)``).

    Raises:
        ValueError: bad arguments, or views that overlap too little to find ``num_points`` points.
    """
    if isinstance(num_points, bool) or not isinstance(num_points, int) or num_points < 1:
        raise ValueError(f"num_points must be a positive int, got {num_points!r}")
    if not 0 <= outlier_ratio < 1:
        raise ValueError(f"outlier_ratio must be in [0, 1), got {outlier_ratio!r}")
    if not noise_px >= 0 or not descriptor_noise >= 0:
        raise ValueError(f"noise_px and descriptor_noise must be >= 0, got {noise_px!r}, {descriptor_noise!r}")
    width, height = (int(v) for v in image_size)
    if width < 2 or height < 2:
        raise ValueError(f"image_size must be at least (2, 2), got {image_size!r}")
    near, far = (float(v) for v in depth_range)
    if not 0 < near <= far:
        raise ValueError(f"depth_range must be 0 < near <= far, got {depth_range!r}")
    if descriptor_dim < 2:
        raise ValueError(f"descriptor_dim must be >= 2, got {descriptor_dim!r}")

    rng = np.random.default_rng(seed)
    K0 = _intrinsics(float(focal), width, height)
    K1 = _intrinsics(float(focal if focal1 is None else focal1), width, height)
    u = rng.uniform(-1, 1, 4)
    R = _axis_angle(np.array([0.3 * u[0], 1.0, 0.3 * u[1]]), rotation_deg)
    centre1 = baseline * np.array([1.0, 0.2 * u[2], 0.2 * u[3]]) / np.linalg.norm([1.0, 0.2 * u[2], 0.2 * u[3]])
    t = -R @ centre1
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, t

    # points: uniform pixels of image 0 at uniform depths, kept when camera 1 sees them
    K0_inv = np.linalg.inv(K0)
    found: list[np.ndarray] = []
    count = 0
    for _ in range(200):
        m = max(2 * (num_points - count), 256)
        pixels = rng.uniform((0.0, 0.0), (width - 1.0, height - 1.0), (m, 2))
        depth = rng.uniform(near, far, m)
        X0 = (np.c_[pixels, np.ones(m)] @ K0_inv.T) * depth[:, None]
        X1 = X0 @ R.T + t
        ok = X1[:, 2] > 1e-6
        ok[ok] = _inside(_project(K1, X1[ok]), width, height)
        ok &= _inside(_project(K0, X0), width, height)  # guards rounding at the borders
        found.append(X0[ok])
        count += int(ok.sum())
        if count >= num_points:
            break
    if count < num_points:
        raise ValueError(f"camera 1 sees too little of camera 0's view to find {num_points} points "
                         f"(found {count}): lower baseline or rotation_deg")
    points = np.concatenate(found)[:num_points]

    n_in = num_points
    n_out = int(round(outlier_ratio * n_in / (1 - outlier_ratio)))
    m = n_in + n_out
    limits = (width - 0.5, height - 0.5)
    noise = rng.standard_normal((2, n_in, 2)) * noise_px  # drawn for any noise_px: same scene otherwise
    kp0 = _project(K0, points) + noise[0]
    kp1 = _project(K1, points @ R.T + t) + noise[1]
    outliers0 = rng.uniform((0.0, 0.0), (width - 1.0, height - 1.0), (n_out, 2))
    outliers1 = rng.uniform((0.0, 0.0), (width - 1.0, height - 1.0), (n_out, 2))
    all0 = np.clip(np.concatenate([kp0, outliers0]), -0.5, limits)
    all1 = np.clip(np.concatenate([kp1, outliers1]), -0.5, limits)

    # shuffle each image's keypoints; match j (j < n_in: point j) is (perm0[j], perm1[j])
    perm0, perm1 = rng.permutation(m), rng.permutation(m)
    keypoints0, keypoints1 = np.empty((m, 2)), np.empty((m, 2))
    keypoints0[perm0], keypoints1[perm1] = all0, all1
    shared = _unit_rows(rng.normal(size=(m, descriptor_dim)))
    descriptors0, descriptors1 = np.empty((m, descriptor_dim)), np.empty((m, descriptor_dim))
    descriptors0[perm0] = _unit_rows(shared + rng.normal(0.0, descriptor_noise, shared.shape))
    descriptors1[perm1] = _unit_rows(shared + rng.normal(0.0, descriptor_noise, shared.shape))

    order = np.argsort(perm0, kind="stable")  # matches sorted by the index in image 0
    matches = np.stack([perm0[order], perm1[order]], axis=1).astype(np.int64)
    is_outlier = order >= n_in
    points3d = points[order[~is_outlier]]

    return TwoViewScene(points3d=points3d, keypoints0=keypoints0, keypoints1=keypoints1, matches=matches,
                        is_outlier=is_outlier, descriptors0=descriptors0.astype(np.float32),
                        descriptors1=descriptors1.astype(np.float32), K0=K0, K1=K1, R=R, t=t, T_0to1=T,
                        image_size=(width, height))
