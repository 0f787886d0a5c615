"""Essential-matrix estimation and relative pose (the calibrated case of `delfi.match.verify`).

Both backends take delfi pixel coordinates and each image's `delfi.io.cameras.Camera` (or a (3, 3)
intrinsics matrix in delfi's convention) and return ``(E, inlier mask, method, R, t)`` with
``y1^T E y0 = 0`` for undistorted normalised points ``y = K^-1 (x, y, 1)`` and ``X1 = R X0 + t``.

* OpenCV: the points are undistorted and normalised first, then ``cv2.findEssentialMat`` with
  identity intrinsics runs on them with the pixel threshold divided by the mean focal length of the two
  cameras (USAC MAGSAC++ as for F, seeded; the classic RANSAC where OpenCV has no ``UsacParams``), and
  ``cv2.recoverPose`` on the inliers picks R, t among E's four decompositions by the cheirality test.
  When the 5-point solver leaves several E stacked (3k, 3), the one whose pose puts most inliers in
  front of both cameras wins. OpenCV's E is not refined to the inliers (on noise-free points its pose is
  off by up to 0.2 degrees), so R, t are then refined by Levenberg-Marquardt on the inliers' Sampson
  distances (`refine_pose`, Cauchy loss at the threshold, as COLMAP and poselib refine their relative
  poses) twice, the inliers taken again from the refined pose in between (OpenCV's inliers are those of
  its unrefined E: up to 10 % of the true ones missed at 0.5 px noise); E is formed from the result and
  the inliers are the final pose's (Sampson distance below the threshold).
* poselib: ``estimate_relative_pose`` with both cameras (their COLMAP models, distortion included),
  ``max_epipolar_error`` = the threshold in pixels; E is formed from its pose as ``[t]x R``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from delfi.io.cameras import Camera

__all__ = ["as_camera", "skew", "opencv_essential", "poselib_essential", "refine_pose", "sampson_residuals"]


def as_camera(intrinsics: Camera | np.ndarray, width: float = 0, height: float = 0) -> Camera:
    """A `Camera` from a Camera or (3, 3) delfi-convention intrinsics (size: only used by poselib)."""
    if isinstance(intrinsics, Camera):
        return intrinsics
    K = np.asarray(intrinsics, dtype=np.float64)
    w = max(int(round(width)), 1) if width else max(int(round(2 * (K[0, 2] + 0.5))), 1)
    h = max(int(round(height)), 1) if height else max(int(round(2 * (K[1, 2] + 0.5))), 1)
    return Camera.from_K(K, w, h)


def skew(v: np.ndarray) -> np.ndarray:
    """(3, 3) cross-product matrix ``[v]x`` of a (3,) vector: ``[v]x u = v x u``."""
    x, y, z = np.asarray(v, dtype=np.float64).reshape(3)
    return np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])


def _rodrigues(w: np.ndarray) -> np.ndarray:
    """(3, 3) rotation of the axis-angle vector ``w`` (3,)."""
    th = float(np.linalg.norm(w))
    if th < 1e-12:
        return np.eye(3) + skew(w)
    x = skew(w / th)
    return np.eye(3) + np.sin(th) * x + (1 - np.cos(th)) * x @ x


def sampson_residuals(E: np.ndarray, y0: np.ndarray, y1: np.ndarray) -> np.ndarray:
    """(K,) signed Sampson distances of normalised points (K, 2) to ``y1^T E y0 = 0``."""
    h0, h1 = np.c_[y0, np.ones(len(y0))], np.c_[y1, np.ones(len(y1))]
    ey0, ety1 = h0 @ E.T, h1 @ E
    denom = np.sqrt(ey0[:, 0] ** 2 + ey0[:, 1] ** 2 + ety1[:, 0] ** 2 + ety1[:, 1] ** 2)
    return np.einsum("ij,ij->i", h1, ey0) / np.maximum(denom, 1e-300)


def refine_pose(R: np.ndarray, t: np.ndarray, y0: np.ndarray, y1: np.ndarray, scale: float | None = None,
                iterations: int = 20):  # fmt: skip
    """Levenberg-Marquardt on the Sampson distances of inliers (K, 2) -> refined (R (3, 3), t (3,) unit).

    Five parameters: a rotation update ``exp([w]x) R`` and a move of t in its tangent plane; the
    Jacobian is numeric (central differences). With ``scale`` the loss is Cauchy's,
    ``log(1 + (r / scale)^2)`` (iteratively reweighted), so that outliers that fell inside the RANSAC
    threshold pull less; without, least squares. Returns the input when nothing improves.
    """
    t = t / np.linalg.norm(t)

    def residuals(R_, t_):
        return sampson_residuals(skew(t_) @ R_, y0, y1)

    def loss(r):
        return float(np.sum(np.log1p((r / scale) ** 2))) if scale else float(np.sum(r**2))

    def apply(params, R_, t_):
        basis = np.linalg.svd(t_.reshape(1, 3))[2][1:]  # (2, 3): orthonormal to t
        moved = t_ + params[3:] @ basis
        return _rodrigues(params[:3]) @ R_, moved / np.linalg.norm(moved)

    cost = loss(residuals(R, t))
    damping, step = 1e-3, 1e-7
    for _ in range(iterations):
        r = residuals(R, t)
        w = 1.0 / (1.0 + (r / scale) ** 2) if scale else np.ones_like(r)
        J = np.empty((len(r), 5))
        for k in range(5):
            d = np.zeros(5)
            d[k] = step
            J[:, k] = (residuals(*apply(d, R, t)) - residuals(*apply(-d, R, t))) / (2 * step)
        JtJ, Jtr = (J * w[:, None]).T @ J, (J * w[:, None]).T @ r
        improved = converged = False
        for _ in range(10):
            delta = np.linalg.solve(JtJ + damping * np.diag(np.diag(JtJ) + 1e-12), -Jtr)
            R_new, t_new = apply(delta, R, t)
            new_cost = loss(residuals(R_new, t_new))
            if new_cost < cost:
                R, t, damping, improved = R_new, t_new, damping / 10, True
                converged = cost - new_cost < 1e-12 * max(abs(cost), 1e-300)
                cost = new_cost
                break
            damping *= 10
        if not improved or converged:
            break
    return R, t


def opencv_essential(cv2: Any, p0: np.ndarray, p1: np.ndarray, cam0: Camera, cam1: Camera, threshold: float,
                     confidence: float, max_iters: int, seed: int):  # fmt: skip
    """OpenCV estimate on (K, 2) pixel points; ``(E (3, 3) | None, mask (K,), method, R, t)``."""
    y0, y1 = cam0.normalise(p0), cam1.normalise(p1)
    focal = float(np.mean([*cam0.focal, *cam1.focal]))
    thr = threshold / focal
    eye = np.eye(3)
    if hasattr(cv2, "UsacParams"):
        from delfi.match.verify import _usac_params

        zeros = np.zeros(5)
        params = _usac_params(cv2, "essential", thr, confidence, max_iters, seed)
        E, mask = cv2.findEssentialMat(y0, y1, eye, eye, zeros, zeros, params)
        method = "USAC_MAGSAC"
    else:
        cv2.setRNGSeed(int(seed))
        E, mask = cv2.findEssentialMat(y0, y1, eye, cv2.RANSAC, confidence, thr, maxIters=int(max_iters))
        method = "RANSAC"
    if E is None or mask is None or E.shape[1:] != (3,) or E.shape[0] % 3:
        return None, None, method, None, None
    mask = np.asarray(mask).reshape(-1).astype(bool)
    best = None
    for k in range(E.shape[0] // 3):
        candidate = np.ascontiguousarray(E[3 * k:3 * k + 3])
        if not np.all(np.isfinite(candidate)):
            continue
        good, R, t, _ = cv2.recoverPose(candidate, y0[mask], y1[mask], eye)
        if best is None or good > best[0]:
            best = (good, candidate, R, t.reshape(3))
    if best is None:
        return None, None, method, None, None
    _, E, R, t = best
    if np.linalg.norm(t) == 0:
        return None, None, method, None, None
    t = t / np.linalg.norm(t)
    for _ in range(2):  # refine, take the refined model's inliers, refine again (OpenCV's mask is its own model's)
        R, t = refine_pose(R, t, y0[mask], y1[mask], scale=thr)
        refit = np.abs(sampson_residuals(skew(t) @ R, y0, y1)) < thr
        if refit.sum() < 5:
            break
        mask = refit
    return skew(t) @ R, mask, method, R, t


def _poselib_camera(camera: Camera) -> dict:
    return {"model": camera.model, "width": camera.width, "height": camera.height, "params": list(camera.params)}


def poselib_essential(poselib: Any, p0: np.ndarray, p1: np.ndarray, cam0: Camera, cam1: Camera, threshold: float,
                      confidence: float, max_iters: int, seed: int):  # fmt: skip
    """poselib estimate on (K, 2) pixel points; ``(E (3, 3) | None, mask (K,), method, R, t)``."""
    opts = {"success_prob": confidence, "max_iterations": int(max_iters), "min_iterations": min(1000, int(max_iters)),
            "seed": int(seed), "max_epipolar_error": float(threshold)}  # fmt: skip
    # poselib's cameras follow COLMAP: points get COLMAP's +0.5 to match the cameras' principal points
    pose, info = poselib.estimate_relative_pose(p0 + 0.5, p1 + 0.5, _poselib_camera(cam0), _poselib_camera(cam1), opts,
                                                {})  # fmt: skip
    R, t = np.asarray(pose.R, dtype=np.float64), np.asarray(pose.t, dtype=np.float64).reshape(3)
    if not (np.all(np.isfinite(R)) and np.all(np.isfinite(t))) or np.linalg.norm(t) == 0:
        return None, None, "LO-RANSAC", None, None
    t = t / np.linalg.norm(t)
    return skew(t) @ R, info.get("inliers"), "LO-RANSAC", R, t
