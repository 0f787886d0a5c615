"""Homography accuracy (mean corner error) and the pixel-coordinate conventions of homographies.

Corner error: warp the four image corners ``(0, 0), (w-1, 0), (w-1, h-1), (0, h-1)`` of the first
image with the estimated and with the ground-truth homography and average the four distances
(SuperPoint / ALIKE style). Homography accuracy at ``t`` px is the fraction of pairs whose corner
error is ``<= t``; a pair without an estimate (or with a degenerate one) has an infinite error and
counts as a failure.

Conventions: delfi's keypoints put the centre of the top-left pixel at (0, 0) (``"centre"``).
HPatches' ``H_1_k`` behave as if defined on coordinates whose origin is the top-left *corner* of the
top-left pixel (``"corner"``: pixel centres at ``i + 0.5``). Measured on v_wormhole with delfi's
pixel-centre R2D2 keypoints, MMA@3 is 0.792 under the raw matrices and 0.803 after
``convert_homography(H, "corner", "centre")`` (the official R2D2 files, which carry the
corner-origin-like ``x * W / w`` mapping, give 0.803 under the raw matrices). A point ``p`` in
centre coordinates is ``p + 0.5`` in corner coordinates, so

    H_centre = T(-0.5) @ H_corner @ T(+0.5),   T(d) = [[1, 0, d], [0, 1, d], [0, 0, 1]].
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

__all__ = [
    "CONVENTIONS",
    "convert_homography",
    "corner_error",
    "homography_accuracy",
    "image_corners",
    "pair_status",
    "status_counts",
    "translation",
]

MISSING_STATUS = "no status"
"""The status of a pair whose verification reported none: never counted as ``"ok"``."""

CONVENTIONS = ("corner", "centre")
"""``"corner"``: (0, 0) is the top-left corner of the image; ``"centre"``: (0, 0) is the centre of the
top-left pixel (delfi's convention, also OpenCV's)."""

_ALIASES = {"corner": "corner", "centre": "centre", "center": "centre"}


def _as_matrix(H: Any, what: str) -> np.ndarray:
    if hasattr(H, "detach"):
        H = H.detach().cpu().numpy()
    M = np.asarray(H, dtype=np.float64)
    if M.shape != (3, 3):
        raise ValueError(f"{what} must be a (3, 3) matrix, got shape {M.shape}")
    return M


def translation(d: float) -> np.ndarray:
    """``T(d)``: the homography that adds ``d`` to both x and y."""
    return np.array([[1.0, 0.0, d], [0.0, 1.0, d], [0.0, 0.0, 1.0]])


def _convention(name: str) -> str:
    try:
        return _ALIASES[str(name).lower()]
    except KeyError:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {name!r}") from None


def convert_homography(H: Any, from_: str = "corner", to: str = "centre") -> np.ndarray:
    """Re-express a homography between pixel-coordinate conventions.

    Args:
        H: (3, 3) homography (array or tensor) defined on ``from_`` coordinates of both images.
        from_ / to: ``"corner"`` or ``"centre"`` (``"center"`` accepted).

    Returns:
        (3, 3) float64: ``T(-0.5) @ H @ T(+0.5)`` for corner -> centre, ``T(+0.5) @ H @ T(-0.5)`` for
        centre -> corner, a copy of ``H`` when both conventions are the same.
    """
    src, dst = _convention(from_), _convention(to)
    M = _as_matrix(H, "H")
    if src == dst:
        return M.copy()
    d = 0.5 if (src, dst) == ("corner", "centre") else -0.5  # centre point p is corner point p + d
    return translation(-d) @ M @ translation(d)


def image_corners(image_size: Sequence[int]) -> np.ndarray:
    """(4, 2) float64 corners ``(0, 0), (w-1, 0), (w-1, h-1), (0, h-1)`` of a ``(width, height)`` image."""
    w, h = (float(v) for v in image_size)
    return np.array([[0.0, 0.0], [w - 1, 0.0], [w - 1, h - 1], [0.0, h - 1]])


def _warp(H: np.ndarray, points: np.ndarray) -> np.ndarray | None:
    """Project points; None when a point lands at (or behind, relative to the others) infinity."""
    p = np.concatenate([points, np.ones((len(points), 1))], axis=1) @ H.T
    w = p[:, 2]
    scale = float(np.abs(H).max())
    if not np.all(np.isfinite(p)) or np.any(np.abs(w) <= 1e-12 * scale):
        return None
    return p[:, :2] / w[:, None]


def corner_error(H_est: Any, H_true: Any, image_size: Sequence[int]) -> float:
    """Mean distance between the image corners warped by ``H_est`` and by ``H_true``.

    Args:
        H_est: (3, 3) estimated homography (image 1 -> image 2), or None.
        H_true: (3, 3) ground truth, same direction and coordinate convention.
        image_size: ``(width, height)`` of image 1.

    Returns:
        The mean corner distance in image-2 pixels; ``inf`` when ``H_est`` is None, not finite,
        singular, or sends a corner to infinity.
    """
    if H_est is None:
        return math.inf
    E = _as_matrix(H_est, "H_est")
    G = _as_matrix(H_true, "H_true")
    if not np.all(np.isfinite(E)):
        return math.inf
    scale = float(np.abs(E).max())
    if scale == 0.0 or abs(np.linalg.det(E / scale)) <= 1e-12:
        return math.inf
    corners = image_corners(image_size)
    est = _warp(E / scale, corners)
    true = _warp(G, corners)
    if est is None:
        return math.inf
    if true is None:
        raise ValueError("H_true sends an image corner to infinity; corner error is undefined")
    err = float(np.mean(np.linalg.norm(est - true, axis=1)))
    return err if math.isfinite(err) else math.inf


def homography_accuracy(errors: Iterable[float], thresholds: Iterable[float] = (1, 3, 5)) -> dict[Any, float]:
    """``{t: fraction of errors <= t}`` (inf / nan count as failures; nan for no errors at all)."""
    e = np.asarray([float(v) if v is not None else math.inf for v in errors], dtype=np.float64)
    e = np.where(np.isnan(e), np.inf, e)
    return {t: (float(np.mean(e <= t)) if len(e) else float("nan")) for t in thresholds}


def pair_status(verified: Any) -> str:
    """The verification status of a pair (``verified.meta["status"]``, see `delfi.match.verify`).

    A result without a status is not ``"ok"``: it is ``"estimation failed"`` when there is no model,
    else `MISSING_STATUS`.
    """
    meta = getattr(verified, "meta", None) or {}
    status = meta.get("status") if isinstance(meta, dict) else None
    if isinstance(status, str) and status:
        return status
    return "estimation failed" if getattr(verified, "model", None) is None else MISSING_STATUS


def status_counts(statuses: Iterable[str]) -> dict[str, int]:
    """How many pairs have each status, ``"ok"`` first then by decreasing count."""
    counts: dict[str, int] = {}
    for status in statuses:
        counts[status] = counts.get(status, 0) + 1
    ordered = sorted(counts.items(), key=lambda kv: (kv[0] != "ok", -kv[1], kv[0]))
    return dict(ordered)
