"""Geometric verification of putative matches: robust homography / fundamental / affine / essential fitting.

Backends (all behind `estimate_geometry`; every one is imported lazily, inside the call):

* ``"opencv"`` (default; ``pip install delfi[cv]``): OpenCV's USAC framework configured as MAGSAC++
  (OpenCV's own ``cv2.USAC_MAGSAC`` preset: uniform sampling, MAGSAC score, sigma-consensus local
  optimisation with sample size 75 / 15 iterations for H, 50 / 10 otherwise), spelled out as a
  ``cv2.UsacParams`` because only that form takes a seed. Homography: ``cv2.findHomography``;
  fundamental: ``cv2.findFundamentalMat`` (7-point minimal solver); affine:
  ``cv2.estimateAffine2D`` with the same ``UsacParams`` when this OpenCV accepts them (probed once;
  OpenCV 5.0.0, installed here, does), else the classic ``cv2.RANSAC``; essential:
  ``cv2.findEssentialMat`` (5-point solver) on undistorted normalised points with identity intrinsics,
  then ``cv2.recoverPose`` (the cheirality test picks R, t among the four decompositions; when the
  solver returns several E, the one whose pose has the most points in front of both cameras wins). OpenCV builds without
  ``UsacParams`` (< 4.5) run the classic RANSAC for all three; ``meta["method"]`` says which ran.
  Inliers: forward transfer error (H, A) or Sampson distance (F) below ``threshold``.
* ``"pydegensac"`` (``pip install delfi[ransac]``): DEGENSAC, homography and fundamental only.
  Homography inliers use the symmetric (max of forward / backward) transfer error, fundamental ones
  the Sampson distance; DEGENSAC's degeneracy check for F is on; no option is ignored.
* ``"poselib"`` (``pip install delfi[ransac]``): LO-RANSAC with final Cauchy-loss bundle refinement,
  homography, fundamental and essential (``estimate_relative_pose`` with both cameras, distortion
  included). ``threshold`` maps to ``max_reproj_error`` (H) or ``max_epipolar_error`` (F, E: Sampson
  distance in pixels), ``confidence`` to ``success_prob``, ``max_iters`` to
  ``max_iterations`` (``min_iterations = min(1000, max_iters)``), ``seed`` to ``seed``.

Determinism: every backend is seeded explicitly, so the same input and seed give bit-identical
inliers and model. OpenCV: ``UsacParams.randomGeneratorState = seed`` seeds USAC's own generator
(``cv2.setRNGSeed`` does not reach USAC; it is used only for the legacy ``cv2.RANSAC`` fallback,
which draws from ``cv2.theRNG()``); ``isParallel`` stays False, so no thread scheduling enters the
result. pydegensac and poselib take the seed as an argument.

Model conventions (``x1 ~ M x0`` for H and A, ``x1^T F x0 = 0`` for F, delfi pixel coordinates):
homographies are scaled so ``H[2, 2] == 1``; fundamental and essential matrices to unit Frobenius
norm; affine maps are returned as ``[[a, b, c], [d, e, f], [0, 0, 1]]``. Essential matrices relate
normalised points, ``y1^T E y0 = 0`` with ``y = K^-1 (x, y, 1)`` after undistortion, and come with the
relative pose ``X1 = R X0 + t`` (``|t| = 1``, the scale is unknown). Their ``threshold`` is in pixels:
OpenCV gets it divided by the mean focal length of the two cameras (the normalised-coordinate
equivalent, as SuperGlue's and LoFTR's evaluations do), poselib takes it in pixels.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from delfi.types import Features, Matches

__all__ = ["BACKENDS", "CALIBRATED", "GEOMETRIES", "Intrinsics", "MIN_SAMPLES", "MIN_INLIERS", "STATUSES", "MissingBackendError",
           "chance_inliers", "estimate_geometry", "verification_status", "verify"]

GEOMETRIES = ("homography", "fundamental", "affine", "essential")
BACKENDS = ("opencv", "pydegensac", "poselib")
MIN_SAMPLES = {"homography": 4, "fundamental": 8, "affine": 3, "essential": 5}
"""Fewest matches an estimate is attempted on (F: the 7-point solver is minimal, 8 are required)."""
CALIBRATED = ("essential",)
"""Geometries that need both images' intrinsics (`verify`'s ``intrinsics``)."""
MIN_INLIERS = 15
"""Default fewest inliers for a verified model to count ("ok"); see `verification_status`."""
STATUSES = ("ok", "too few inliers", "not enough matches", "estimation failed")
"""Every status `verify` reports; only "ok" is a success."""
BACKEND_GEOMETRIES = {"opencv": GEOMETRIES, "pydegensac": ("homography", "fundamental"),
                      "poselib": ("homography", "fundamental", "essential")}
_EXTRAS = {"opencv": ("cv2", "cv"), "pydegensac": ("pydegensac", "ransac"), "poselib": ("poselib", "ransac")}


class MissingBackendError(ImportError):
    """An optional RANSAC backend is not installed; the message names the extra to install."""


def _import_backend(backend: str) -> Any:
    module, extra = _EXTRAS[backend]
    try:
        return __import__(module)
    except ImportError as err:
        raise MissingBackendError(
            f"the {backend!r} RANSAC backend needs the {module!r} module: pip install delfi[{extra}]"
        ) from err


def _check_options(
    geometry: str, backend: str, threshold: float, confidence: float, max_iters: int, seed: int
) -> None:
    if geometry not in GEOMETRIES:
        raise ValueError(f"geometry must be one of {GEOMETRIES}, got {geometry!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if geometry not in BACKEND_GEOMETRIES[backend]:
        raise ValueError(f"backend {backend!r} supports only {BACKEND_GEOMETRIES[backend]}, got {geometry!r}")
    if not threshold > 0:
        raise ValueError(f"threshold must be > 0 pixels, got {threshold}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if int(max_iters) < 1:
        raise ValueError(f"max_iters must be >= 1, got {max_iters}")
    if not 0 <= int(seed) < 2**31:
        raise ValueError(f"seed must be in [0, 2**31), got {seed}")


def _as_points(points: Any, name: str) -> np.ndarray:
    """(K, 2) float64 C-contiguous numpy copy of a tensor / array of points."""
    if isinstance(points, Tensor):
        points = points.detach().cpu().numpy()
    arr = np.ascontiguousarray(np.asarray(points, dtype=np.float64))
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"{name} must be (K, 2), got {arr.shape}")
    return arr


# ----------------------------------------------------------------------------------------- backends
def _usac_params(cv2: Any, geometry: str, threshold: float, confidence: float, max_iters: int, seed: int):
    """OpenCV's ``USAC_MAGSAC`` preset as explicit `cv2.UsacParams`, plus the seed."""
    params = cv2.UsacParams()
    params.threshold = float(threshold)
    params.confidence = float(confidence)
    params.maxIterations = int(max_iters)
    params.sampler = cv2.SAMPLING_UNIFORM
    params.score = cv2.SCORE_METHOD_MAGSAC
    params.loMethod = cv2.LOCAL_OPTIM_SIGMA
    params.loSampleSize = 75 if geometry == "homography" else 50
    params.loIterations = 15 if geometry == "homography" else 10
    params.isParallel = False  # parallel USAC depends on thread scheduling
    params.randomGeneratorState = int(seed)
    return params


@functools.lru_cache(maxsize=None)
def _affine_takes_usac(cv2: Any) -> bool:
    """Whether this OpenCV's ``estimateAffine2D`` accepts `UsacParams` (probed once on 6 points)."""
    if not hasattr(cv2, "UsacParams"):
        return False
    pts = np.array([[0, 0], [10, 0], [0, 10], [10, 10], [5, 3], [2, 7]], dtype=np.float64)
    try:
        cv2.estimateAffine2D(pts, pts + 1.0, _usac_params(cv2, "affine", 1.0, 0.99, 50, 0))
    except (cv2.error, TypeError):
        return False
    return True


def _opencv(p0: np.ndarray, p1: np.ndarray, geometry: str, thr: float, conf: float, iters: int, seed: int):
    cv2 = _import_backend("opencv")
    usac = hasattr(cv2, "UsacParams") and (geometry != "affine" or _affine_takes_usac(cv2))
    if usac:
        params = _usac_params(cv2, geometry, thr, conf, iters, seed)
        fn = {"homography": cv2.findHomography, "fundamental": cv2.findFundamentalMat,
              "affine": cv2.estimateAffine2D}[geometry]  # fmt: skip
        model, mask = fn(p0, p1, params)
        return model, mask, "USAC_MAGSAC"
    cv2.setRNGSeed(int(seed))  # legacy RANSAC draws from cv2.theRNG()
    if geometry == "homography":
        model, mask = cv2.findHomography(p0, p1, cv2.RANSAC, thr, maxIters=iters, confidence=conf)
    elif geometry == "fundamental":
        model, mask = cv2.findFundamentalMat(p0, p1, cv2.FM_RANSAC, thr, conf, iters)
    else:
        model, mask = cv2.estimateAffine2D(p0, p1, method=cv2.RANSAC, ransacReprojThreshold=thr,
                                           maxIters=iters, confidence=conf)  # fmt: skip
    return model, mask, "RANSAC"


def _pydegensac(p0: np.ndarray, p1: np.ndarray, geometry: str, thr: float, conf: float, iters: int, seed: int):
    pydegensac = _import_backend("pydegensac")
    if geometry == "homography":
        model, mask = pydegensac.findHomography(p0, p1, thr, conf, iters, error_type="symm_max", seed=seed)
    else:
        model, mask = pydegensac.findFundamentalMatrix(p0, p1, thr, conf, iters, seed=seed)
    return model, mask, "DEGENSAC"


def _poselib(p0: np.ndarray, p1: np.ndarray, geometry: str, thr: float, conf: float, iters: int, seed: int):
    poselib = _import_backend("poselib")
    opts = {"success_prob": conf, "max_iterations": iters, "min_iterations": min(1000, iters), "seed": seed}
    if geometry == "homography":
        model, info = poselib.estimate_homography(p0, p1, {**opts, "max_reproj_error": thr})
    else:
        model, info = poselib.estimate_fundamental(p0, p1, {**opts, "max_epipolar_error": thr})
    return model, info.get("inliers"), "LO-RANSAC"


_BACKEND_FNS = {"opencv": _opencv, "pydegensac": _pydegensac, "poselib": _poselib}


def _normalise(model: Any, geometry: str) -> np.ndarray | None:
    """(3, 3) float64 model in delfi's convention, or None when missing / non-finite / singular."""
    if model is None:
        return None
    m = np.asarray(model, dtype=np.float64)
    if geometry == "affine":
        if m.shape != (2, 3):
            return None
        m = np.vstack([m, [0.0, 0.0, 1.0]])
    elif m.shape != (3, 3):
        return None  # e.g. an empty result, or several stacked 7-point solutions
    if not np.all(np.isfinite(m)):
        return None
    if geometry == "homography":
        if abs(m[2, 2]) < 1e-12 * max(np.abs(m).max(), 1e-300):
            return None
        m = m / m[2, 2]
    elif geometry in ("fundamental", "essential"):
        norm = np.linalg.norm(m)
        if norm == 0:
            return None
        m = m / norm
    return m


Intrinsics = Any
"""An image's intrinsics for the calibrated geometries: a `delfi.io.cameras.Camera`, or a (3, 3)
pinhole matrix in delfi's pixel convention."""


def _cameras(intrinsics, geometry: str):
    """The two `Camera`s of a calibrated geometry (ValueError when they are missing or bad)."""
    from delfi.match.essential import as_camera

    if intrinsics is None or len(intrinsics) != 2:
        raise ValueError(f"geometry {geometry!r} needs the intrinsics of both images (intrinsics=(K0, K1))")
    return tuple(as_camera(k) for k in intrinsics)


def _run_essential(q0, q1, cameras, backend, thr, conf, iters, seed):
    from delfi.match.essential import opencv_essential, poselib_essential

    module = _import_backend(backend)
    fn = opencv_essential if backend == "opencv" else poselib_essential
    E, mask, method, R, t = fn(module, q0, q1, cameras[0], cameras[1], thr, conf, iters, seed)
    return E, mask, method, None if E is None else (R, t)


def _estimate(p0, p1, geometry, threshold, confidence, max_iters, seed, backend, intrinsics=None):
    """`estimate_geometry` plus a status string, the method name and the pose (R, t) of an essential matrix."""
    _check_options(geometry, backend, threshold, confidence, max_iters, seed)
    cameras = _cameras(intrinsics, geometry) if geometry in CALIBRATED else None
    seed = int(seed)
    p0, p1 = _as_points(p0, "points0"), _as_points(p1, "points1")
    if p0.shape != p1.shape:
        raise ValueError(f"points0 and points1 must have the same shape, got {p0.shape} and {p1.shape}")
    k = p0.shape[0]
    inliers = np.zeros(k, dtype=bool)
    finite = np.isfinite(p0).all(1) & np.isfinite(p1).all(1)  # non-finite points are never inliers
    if int(finite.sum()) < MIN_SAMPLES[geometry]:
        return None, inliers, "not enough matches", "", None
    q0, q1 = np.ascontiguousarray(p0[finite]), np.ascontiguousarray(p1[finite])
    pose = None
    try:
        options = (float(threshold), float(confidence), int(max_iters), seed)
        if cameras is not None:
            model, mask, method, pose = _run_essential(q0, q1, cameras, backend, *options)
        else:
            model, mask, method = _BACKEND_FNS[backend](q0, q1, geometry, *options)
    except MissingBackendError:
        raise
    except Exception:  # noqa: BLE001 - degenerate data make the solvers raise all sorts of errors
        return None, inliers, "estimation failed", "", None
    model = _normalise(model, geometry)
    mask = None if mask is None else np.asarray(mask).reshape(-1).astype(bool)
    if model is None or mask is None or mask.shape[0] != q0.shape[0] or mask.sum() < MIN_SAMPLES[geometry]:
        return None, inliers, "estimation failed", method, None
    inliers[finite] = mask
    return model, inliers, "ok", method, pose


def estimate_geometry(
    points0: np.ndarray | Tensor,
    points1: np.ndarray | Tensor,
    geometry: str = "homography",
    *,
    threshold: float = 3.0,
    confidence: float = 0.9999,
    max_iters: int = 10000,
    seed: int = 0,
    backend: str = "opencv",
    intrinsics: tuple[Intrinsics, Intrinsics] | None = None,
) -> tuple[np.ndarray | None, np.ndarray]:
    """Robustly fit a two-view geometry to correspondences ``points0[k] <-> points1[k]``.

    Args:
        points0, points1: (K, 2) (x, y) pixel coordinates in the first and second image.
        geometry: one of `GEOMETRIES`.
        threshold: inlier threshold in pixels (transfer error for H / A, Sampson distance for F, E).
        confidence: RANSAC success probability used by the adaptive stopping rule, in (0, 1).
        max_iters: upper bound on the number of RANSAC iterations.
        seed: seed of the backend's random sampler, in [0, 2**31); same seed, same result.
        backend: one of `BACKENDS` (see the module docstring for how options map).
        intrinsics: ``(K0, K1)`` for ``"essential"`` (`Intrinsics`: Camera or (3, 3) matrix).

    Returns:
        ``(model, inliers)``: (3, 3) float64 model (None when fewer than ``MIN_SAMPLES[geometry]``
        finite matches were given or the estimation failed) and (K,) bool inlier mask (all False
        when the model is None). Degenerate input never raises.

    Raises:
        ValueError: unknown geometry / backend, unsupported combination, bad options or shapes.
        MissingBackendError: the backend's package is not installed.
    """
    model, inliers, *_ = _estimate(points0, points1, geometry, threshold, confidence, max_iters, seed, backend,
                                   intrinsics)  # fmt: skip
    return model, inliers


CHANCE_TESTS = 10_000
"""Hypotheses a RANSAC run is taken to test when bounding the inliers of chance (`chance_inliers`)."""


def chance_inliers(geometry: str, num_matches: int, threshold: float, width: float, height: float) -> int:
    """Inliers that random matches reach by chance: a count above this is significant (a-contrario).

    A match that is not a correspondence lands uniformly in the (width x height) image, so it agrees
    with a given model with probability ``p``: inside the disc of radius ``threshold`` around its
    prediction for H / A (``p = pi t^2 / A``), inside the band around its epipolar line for F (``p =
    6 t D / A``, D the diagonal: the band of a symmetric Sampson threshold is about twice ``2 t D``
    wide, and widened by 1.5 because real keypoints cluster on texture instead of spreading
    uniformly). The minimal sample itself always fits, and RANSAC keeps the best of up to
    `CHANCE_TESTS` hypotheses, so the bound is ``s + mu + delta`` with ``mu = p (K - s)`` and
    ``delta`` the Bernstein deviation at which one test in `CHANCE_TESTS` exceeds it (``delta = L / 3
    + sqrt(L^2 / 9 + 2 mu L)``, ``L = ln CHANCE_TESTS``).

    Measured (OpenCV MAGSAC++, 3 px): uniform random matches (best of 5 seeds) give H and A 5-7
    inliers for 20 to 3000 matches (bound 10-12) and F 10 / 15 / 21 / 42 / 97 inliers for 20 / 100
    / 300 / 1000 / 3000 matches in 640 x 480 (bound 16 / 24 / 41 / 87 / 202). Official R2D2 (WASF_N16, mutual NN)
    on unrelated real images (15 EVD pairs of different scenes, v_wormhole against boat /
    brooklyn; 17-127 matches): H 4-7, A 4-7, F 10-23 inliers (F bound 15-28).
    """
    s = MIN_SAMPLES[geometry] - (1 if geometry == "fundamental" else 0)  # the 7-point sample fits F
    area = max(float(width) * float(height), 1.0)
    if geometry in ("fundamental", "essential"):  # both: a band around an epipolar line
        p = 6.0 * threshold * math.hypot(width, height) / area
    else:
        p = math.pi * threshold**2 / area
    others = max(int(num_matches) - s, 0)
    mu = min(p, 1.0) * others
    log_tests = math.log(CHANCE_TESTS)
    delta = log_tests / 3 + math.sqrt(log_tests**2 / 9 + 2 * mu * log_tests)
    return int(min(s + math.ceil(mu + delta), num_matches))


def verification_status(
    geometry: str, num_matches: int, num_inliers: int, model_found: bool, min_inliers: int = MIN_INLIERS,
    chance: int = 0,
) -> str:
    """The one rule that says whether a verified model counts: a status of `STATUSES`.

    * ``"not enough matches"``: fewer than ``MIN_SAMPLES[geometry]`` (finite) putative matches;
      nothing was estimated.
    * ``"estimation failed"``: the solver gave no usable (finite, non-singular) model.
    * ``"too few inliers"``: a model was found, but it has fewer than ``min_inliers`` inliers, or
      not more than ``chance`` (what random matches reach, `chance_inliers`). RANSAC always finds a
      model that its own minimal sample fits, plus whatever matches happen to fall within the
      threshold, so a handful of inliers is what unrelated images give. The model and inliers are
      kept, so pictures can show them, but it is not a success.
    * ``"ok"``: the only status a caller may count as verified.

    The default ``min_inliers`` (`MIN_INLIERS` = 15) is about twice what chance gives H and A
    (5-7 inliers measured, bound 10-12, see `chance_inliers`) and well above the minimal samples
    (4 / 7 / 3); F needs the chance bound on top, as its random inliers grow with the matches.

    Args:
        geometry: one of `GEOMETRIES`.
        num_matches: putative matches given to the estimator (finite ones).
        num_inliers: inliers of the model found (0 without a model).
        model_found: whether the estimator returned a model.
        min_inliers: fewest inliers of an "ok" model (never below the minimal sample).
        chance: inliers random matches reach; "ok" needs more than this (0: no such test).
    """
    if geometry not in GEOMETRIES:
        raise ValueError(f"geometry must be one of {GEOMETRIES}, got {geometry!r}")
    if int(min_inliers) < 0:
        raise ValueError(f"min_inliers must be >= 0, got {min_inliers}")
    if num_matches < MIN_SAMPLES[geometry]:
        return "not enough matches"
    if not model_found:
        return "estimation failed"
    if num_inliers < max(int(min_inliers), MIN_SAMPLES[geometry]) or num_inliers <= int(chance):
        return "too few inliers"
    return "ok"


def _extent(features: Features | Tensor | np.ndarray, points: np.ndarray) -> tuple[float, float]:
    """(width, height) of an image: its recorded size, else the extent of its keypoints."""
    if isinstance(features, Features) and min(features.image_size) > 0:
        return float(features.image_size[0]), float(features.image_size[1])
    finite = points[np.isfinite(points).all(1)]
    if not len(finite):
        return 1.0, 1.0
    return float(np.ptp(finite[:, 0]) + 1), float(np.ptp(finite[:, 1]) + 1)


def _keypoints(features: Features | Tensor | np.ndarray, name: str) -> np.ndarray:
    return _as_points(features.keypoints if isinstance(features, Features) else features, name)


def verify(
    features0: Features | Tensor | np.ndarray,
    features1: Features | Tensor | np.ndarray,
    matches: Matches,
    geometry: str = "homography",
    *,
    threshold: float = 3.0,
    confidence: float = 0.9999,
    max_iters: int = 10000,
    seed: int = 0,
    backend: str = "opencv",
    min_inliers: int = MIN_INLIERS,
    intrinsics: tuple[Intrinsics, Intrinsics] | None = None,
) -> Matches:
    """Geometrically verify ``matches`` between two keypoint sets (see `estimate_geometry`).

    Args:
        features0, features1: `Features`, or raw (N0, 2) / (N1, 2) keypoints (tensor or array).
        matches: `Matches` with (K, 2) ``indices`` into the two keypoint sets.
        geometry, threshold, confidence, max_iters, seed, backend: as in `estimate_geometry`.
        min_inliers: fewest inliers for ``status == "ok"`` (see `verification_status`).
        intrinsics: ``(K0, K1)``, required for ``"essential"`` (see `estimate_geometry`).

    Returns:
        A new `Matches` with the same indices and scores plus ``inliers`` (K,) bool, ``model``
        (3, 3) float64 or None (both on ``matches.indices``' device), ``kind=geometry`` and ``meta``
        = the input's meta updated with ``status`` (`verification_status`: "ok" | "too few
        inliers" | "not enough matches" | "estimation failed"; only "ok" is a success, the model
        and inliers of "too few inliers" are kept for pictures), ``num_inliers``, ``required``
        (= ``MIN_SAMPLES[geometry]``, the fewest matches an estimate is tried on),
        ``min_inliers`` (the fewest inliers of an "ok" model), ``chance_inliers`` (the count random
        matches reach, `chance_inliers`, from the image sizes or keypoint extents), ``backend``, ``method``,
        ``threshold`` and ``seed``; for ``"essential"`` also ``rotation`` (3 x 3 list), ``translation``
        (3 list, unit length) of ``X1 = R X0 + t`` (None without a model) and ``intrinsics`` (each
        image's pinhole K in delfi's convention, as lists).
    """
    kp0, kp1 = _keypoints(features0, "features0"), _keypoints(features1, "features1")
    idx = matches.indices.detach().cpu().numpy().astype(np.int64, copy=False)
    for side, kp in ((0, kp0), (1, kp1)):
        if idx.shape[0] and (idx[:, side].min() < 0 or idx[:, side].max() >= kp.shape[0]):
            raise ValueError(f"matches.indices[:, {side}] out of range for {kp.shape[0]} keypoints")
    if int(min_inliers) < 0:
        raise ValueError(f"min_inliers must be >= 0, got {min_inliers}")
    p0, p1 = kp0[idx[:, 0]], kp1[idx[:, 1]]
    model, inliers, _, method, pose = _estimate(p0, p1, geometry, threshold, confidence, max_iters, seed, backend,
                                                intrinsics)  # fmt: skip
    finite = int((np.isfinite(p0).all(1) & np.isfinite(p1).all(1)).sum())
    chance = max(chance_inliers(geometry, finite, float(threshold), *_extent(f, kp))
                 for f, kp in ((features0, kp0), (features1, kp1)))
    status = verification_status(geometry, finite, int(inliers.sum()), model is not None, min_inliers, chance)
    device = matches.indices.device
    meta = {
        **matches.meta,
        "status": status,
        "num_inliers": int(inliers.sum()),
        "required": MIN_SAMPLES[geometry],
        "min_inliers": int(min_inliers),
        "chance_inliers": int(chance),
        "backend": backend,
        "method": method,
        "threshold": float(threshold),
        "seed": int(seed),
    }
    if geometry in CALIBRATED:
        meta["rotation"] = None if pose is None else pose[0].tolist()
        meta["translation"] = None if pose is None else pose[1].tolist()
        meta["intrinsics"] = [camera.K().tolist() for camera in _cameras(intrinsics, geometry)]
    return Matches(
        indices=matches.indices,
        scores=matches.scores,
        inliers=torch.from_numpy(inliers).to(device),
        model=None if model is None else torch.from_numpy(model).to(device),
        kind=geometry,
        meta=meta,
    )
