"""Relative-pose evaluation (the SuperGlue / LoFTR / glue-factory protocol): pairs files with
intrinsics and ground-truth poses, pose errors, pose AUC, epipolar precision, and intrinsics under
resizing and 90-degree rotations.

Protocol: from the matches of a pair, estimate the pose of camera 1 relative to camera 0,
``X1 = R X0 + t`` (camera-frame points; ``T_0to1 = [R t; 0 1]``). The rotation error is the angle
of ``R_est^T R_gt``; the translation error is the angle between ``t_est`` and ``t_gt`` up to sign
(an essential matrix gives ``t`` only up to scale and sign), ``min(e, 180 - e)``; the pose error of
the pair is the larger of the two, and a pair without an estimate has infinite errors. The
benchmark numbers are `pose_auc` of the pose errors at 5, 10 and 20 degrees.

Matching precision (`epipolar_precision`) is the share of matches whose symmetric epipolar distance
under the ground-truth essential matrix (`essential_from_pose`), measured on normalised coordinates
``y = K^-1 (x, y, 1)``, is below a threshold.

Pairs files (`read_pose_pairs`), one pair per line, fields separated by whitespace, matrices row
major, blank lines and ``#`` comments skipped:

- SuperGlue (``match_pairs.py``, its ``*_pairs_with_gt.txt``), 38 fields:
  ``name0 name1 rot0 rot1 K0(9) K1(9) T_0to1(16)``. ``rot0`` / ``rot1`` are the quarter turns that
  SuperGlue applies to each image with ``np.rot90(image, k=rot)`` before matching (EXIF
  orientation); ``K`` and ``T_0to1`` describe the images as stored, before that rotation
  (`rotate_intrinsics`, `rotate_pose` give them for the turned images).
- glue-factory (``pairs_calibrated.txt`` of its ScanNet-1500 / MegaDepth-1500, read by its
  ``image_pairs`` dataset), 36 fields: ``name0 name1 K0(9) K1(9) T_0to1(16)``, no rotations.
  (Its parser also takes a 12-number ``R(9) t(3)`` pose, 32 fields; no published file of that
  form is known here, and it is not read.)

The K of these files are taken as they are, in delfi's pixel convention (the centre of the top-left
pixel is (0, 0); `delfi.types`), as the references use them with keypoints in that convention
(SuperPoint's integer pixel indices); whether each dataset's K was made in it is the dataset's matter.

Conventions where the references differ, and what delfi does:

- Resizing: SuperGlue's ``scale_intrinsics`` divides K by ``old / new`` (``cx -> cx s``, a corner
  convention); `rescale_intrinsics` follows delfi's ``x -> (x + 0.5) s - 0.5``
  (``cx -> (cx + 0.5) s - 0.5``), which differs by ``0.5 (s - 1)`` px in the principal point.
- Epipolar distance: SuperGlue and LoFTR threshold the *squared* symmetric distance
  ``(y1^T E y0)^2 (1 / |E y0|_xy^2 + 1 / |E^T y1|_xy^2)`` at 5e-4 (SuperGlue's ``match_pairs.py``,
  for every dataset; LoFTR's default ``EPI_ERR_THR``, whose comment recommends 5e-4 for ScanNet and
  1e-4 for MegaDepth "from SuperGlue"; its outdoor configs read here do not set it);
  glue-factory thresholds the plain mean of the two point-to-line distances
  ``|y1^T E y0| (1 / |E y0|_xy + 1 / |E^T y1|_xy) / 2`` at 1e-4, 5e-4 and 1e-3 (``squared=False``).
- Pose AUC: see `pose_auc`.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, NamedTuple, Sequence

import numpy as np

__all__ = [
    "AUC_THRESHOLDS",
    "EPIPOLAR_THRESHOLD_MEGADEPTH",
    "EPIPOLAR_THRESHOLD_SCANNET",
    "PoseError",
    "PosePair",
    "epipolar_precision",
    "essential_from_pose",
    "format_pose_pair",
    "inplane_rotation",
    "normalise_points",
    "pose_auc",
    "pose_error",
    "pose_errors",
    "read_pose_pairs",
    "rescale_intrinsics",
    "rotate_intrinsics",
    "rotate_points",
    "rotate_pose",
    "rotated_size",
    "rotation_error_deg",
    "summarise_pose_errors",
    "symmetric_epipolar_distance",
    "translation_error_deg",
]

AUC_THRESHOLDS = (5, 10, 20)
"""Pose-AUC thresholds in degrees (SuperGlue, LoFTR, glue-factory)."""

EPIPOLAR_THRESHOLD_SCANNET = 5e-4
"""The threshold on the squared symmetric epipolar distance of SuperGlue (all datasets) and LoFTR
(its default, recommended for ScanNet)."""

EPIPOLAR_THRESHOLD_MEGADEPTH = 1e-4
"""The threshold LoFTR's config recommends for MegaDepth (squared distance)."""

ROTATION_TOLERANCE = 1e-3
"""How far ``R^T R`` of a pairs file's pose may be from the identity (largest entry)."""

_FIELDS_WITH_ROT = 38
_FIELDS_WITHOUT_ROT = 36


# --- pairs files ---------------------------------------------------------------------------------


def _matrix_reason(M: np.ndarray, name: str, shape: tuple[int, int]) -> str | None:
    if M.shape != shape:
        return f"{name} must have shape {shape}, got {M.shape}"
    if not np.all(np.isfinite(M)):
        return f"{name} has a non-finite entry"
    return None


def _intrinsics_reason(K: np.ndarray, name: str) -> str | None:
    reason = _matrix_reason(K, name, (3, 3))
    if reason:
        return reason
    if np.any(np.abs(K[2] - (0.0, 0.0, 1.0)) > 1e-9):
        return f"the last row of {name} must be 0 0 1, got {' '.join(f'{v:g}' for v in K[2])}"
    cond = float(np.linalg.cond(K))
    if not math.isfinite(cond) or cond > 1e12:
        return f"{name} is singular (det {float(np.linalg.det(K)):.3g})"
    return None


def _pose_reason(T: np.ndarray, name: str = "T_0to1") -> str | None:
    reason = _matrix_reason(T, name, (4, 4))
    if reason:
        return reason
    if np.any(np.abs(T[3] - (0.0, 0.0, 0.0, 1.0)) > 1e-9):
        return f"the last row of {name} must be 0 0 0 1, got {' '.join(f'{v:g}' for v in T[3])}"
    R = T[:3, :3]
    deviation = float(np.max(np.abs(R.T @ R - np.eye(3))))
    if deviation > ROTATION_TOLERANCE:
        return (f"the top-left 3x3 of {name} is not a rotation (max |R^T R - I| = {deviation:.3g} > "
                f"{ROTATION_TOLERANCE:g})")
    if np.linalg.det(R) < 0:
        return f"the top-left 3x3 of {name} is a reflection, not a rotation (det {np.linalg.det(R):.3g})"
    return None


def _frozen(a: Any) -> np.ndarray:
    out = np.array(a, dtype=np.float64)  # a copy
    out.setflags(write=False)
    return out


@dataclass(frozen=True, eq=False)
class PosePair:
    """One line of a pairs file with ground truth.

    Attributes:
        name0, name1: the image names (paths relative to the image folder).
        rot0, rot1: quarter turns ``k`` of ``np.rot90(image, k)`` to apply to each image before
            matching (0 to 3; 0 in files without rotations).
        K0, K1: (3, 3) float64 intrinsics of the images as stored (before the turns), in pixels.
        T_0to1: (4, 4) float64 pose of camera 1 relative to camera 0: ``X1 = R X0 + t``.

    The arrays are read-only copies; construction validates them (ValueError with the reason).
    Equality is by identity (arrays do not compare as one truth value).
    """

    name0: str
    name1: str
    rot0: int
    rot1: int
    K0: np.ndarray
    K1: np.ndarray
    T_0to1: np.ndarray

    def __post_init__(self) -> None:
        for field_name in ("name0", "name1"):
            if not isinstance(getattr(self, field_name), str):
                raise TypeError(f"{field_name} must be str, got {getattr(self, field_name)!r}")
        for field_name in ("rot0", "rot1"):
            value = getattr(self, field_name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value <= 3:
                raise ValueError(f"{field_name} must be 0, 1, 2 or 3 (quarter turns of np.rot90), got {value!r}")
            object.__setattr__(self, field_name, int(value))
        for field_name in ("K0", "K1", "T_0to1"):
            object.__setattr__(self, field_name, _frozen(getattr(self, field_name)))
        reason = (_intrinsics_reason(self.K0, "K0") or _intrinsics_reason(self.K1, "K1")
                  or _pose_reason(self.T_0to1))
        if reason:
            raise ValueError(reason)

    @property
    def R(self) -> np.ndarray:
        """(3, 3) rotation of `T_0to1`."""
        return self.T_0to1[:3, :3]

    @property
    def t(self) -> np.ndarray:
        """(3,) translation of `T_0to1`."""
        return self.T_0to1[:3, 3]


def _lines(path: str | os.PathLike) -> Iterator[tuple[int, list[str]]]:
    """(line number from 1, fields) of each line that is not blank or a ``#`` comment."""
    from delfi.io.pairs import text_lines

    return text_lines(path, "pose pairs files")


def _number_labels() -> list[str]:
    """Names of the 34 numbers after the names (and rotations): K0[r,c], K1[r,c], T_0to1[r,c]."""
    labels = [f"K0[{r},{c}]" for r in range(3) for c in range(3)]
    labels += [f"K1[{r},{c}]" for r in range(3) for c in range(3)]
    return labels + [f"T_0to1[{r},{c}]" for r in range(4) for c in range(4)]


_LABELS = _number_labels()
_ROT = re.compile(r"[0-9]+")


def _parse_fields(fields: list[str]) -> PosePair:
    """The pair of one line's fields; ValueError with the reason (no file or line) if it is bad."""
    n = len(fields)
    if n == _FIELDS_WITH_ROT:
        first_number = 4
        rots = []
        for i, name in ((2, "rot0"), (3, "rot1")):
            if not _ROT.fullmatch(fields[i]) or int(fields[i]) > 3:
                raise ValueError(f"field {i + 1} ({name}) {fields[i]!r} must be 0, 1, 2 or 3 "
                                 f"(quarter turns of np.rot90)")
            rots.append(int(fields[i]))
    elif n == _FIELDS_WITHOUT_ROT:
        first_number, rots = 2, [0, 0]
    else:
        raise ValueError(f"expected {_FIELDS_WITH_ROT} fields (name0 name1 rot0 rot1 K0[9] K1[9] T_0to1[16]) or "
                         f"{_FIELDS_WITHOUT_ROT} (name0 name1 K0[9] K1[9] T_0to1[16]), got {n}")
    values = []
    for j, token in enumerate(fields[first_number:]):
        try:
            value = float(token)
        except ValueError:
            raise ValueError(f"field {first_number + j + 1} ({_LABELS[j]}) {token!r} is not a number") from None
        if not math.isfinite(value):
            raise ValueError(f"field {first_number + j + 1} ({_LABELS[j]}) {token!r} is not finite")
        values.append(value)
    numbers = np.asarray(values, dtype=np.float64)
    return PosePair(fields[0], fields[1], rots[0], rots[1], numbers[:9].reshape(3, 3),
                    numbers[9:18].reshape(3, 3), numbers[18:].reshape(4, 4))


def read_pose_pairs(path: str | os.PathLike) -> list[PosePair]:
    """All pairs of a SuperGlue (38 fields) or glue-factory (36 fields) pairs file, in file order.

    Both forms may be mixed in one file. Lines end at ``\\n``, ``\\r\\n`` or ``\\r``; a leading
    UTF-8 byte-order mark is ignored.

    Raises:
        ValueError: a line with another number of fields, a rotation that is not 0 to 3, a number
            that does not parse or is not finite, a K that is singular or whose last row is not
            ``0 0 1``, a T_0to1 whose last row is not ``0 0 0 1`` or whose top-left 3x3 is not a
            rotation within `ROTATION_TOLERANCE`; or a file that is not UTF-8. The message names
            the file, the line number and the reason.
    """
    out: list[PosePair] = []
    for number, fields in _lines(path):
        try:
            out.append(_parse_fields(fields))
        except ValueError as exc:
            names = f" (pair {fields[0]} {fields[1]})" if len(fields) >= 2 else ""
            raise ValueError(f"{path}:{number}: {exc}{names}") from None
    return out


def _check_name(name: str, first: bool) -> str:
    if not name or any(c.isspace() for c in name):
        raise ValueError(f"image name {name!r} cannot be written to a pairs file (empty or contains whitespace)")
    if first and name.startswith("#"):
        raise ValueError(f"image name {name!r} cannot be the first of a pair: the line would read as a comment")
    return name


def format_pose_pair(pair: PosePair) -> str:
    """The 38-field line (no newline) of ``pair``; `read_pose_pairs` reads it back exactly (floats
    are written with ``repr``)."""
    numbers = np.concatenate([pair.K0.ravel(), pair.K1.ravel(), pair.T_0to1.ravel()])
    return " ".join([_check_name(pair.name0, True), _check_name(pair.name1, False), str(pair.rot0),
                     str(pair.rot1)] + [repr(float(v)) for v in numbers])


# --- pose errors ---------------------------------------------------------------------------------


def _array(value: Any, shape: tuple[int, ...], what: str) -> np.ndarray:
    a = np.asarray(value, dtype=np.float64)
    if a.shape != shape:
        if a.size == math.prod(shape) and len(shape) == 1:  # (3, 1) / (1, 3) vectors
            return a.reshape(shape)
        raise ValueError(f"{what} must have shape {shape}, got {a.shape}")
    return a


def _pose_matrix(T_0to1: Any) -> np.ndarray:
    """(3, 4) ``[R t]`` of a (4, 4) or (3, 4) pose."""
    T = np.asarray(T_0to1, dtype=np.float64)
    if T.shape not in ((4, 4), (3, 4)):
        raise ValueError(f"T_0to1 must have shape (4, 4) or (3, 4), got {T.shape}")
    return T[:3]


def rotation_error_deg(R_est: Any, R_gt: Any) -> float:
    """The angle in degrees of the rotation ``R_est^T R_gt``: ``arccos((trace - 1) / 2)``, the
    cosine clipped to [-1, 1] against rounding. A non-finite ``R_est`` gives ``inf``.

    Args:
        R_est, R_gt: (3, 3) rotation matrices.
    """
    R_est, R_gt = _array(R_est, (3, 3), "R_est"), _array(R_gt, (3, 3), "R_gt")
    if not np.all(np.isfinite(R_gt)):
        raise ValueError("R_gt has a non-finite entry")
    if not np.all(np.isfinite(R_est)):
        return math.inf
    cos = (float(np.trace(R_est.T @ R_gt)) - 1.0) / 2.0
    return math.degrees(math.acos(min(1.0, max(-1.0, cos))))


def translation_error_deg(t_est: Any, t_gt: Any, ignore_gt_t_below: float = 0.0) -> float:
    """The angle in degrees between the directions of ``t_est`` and ``t_gt`` up to sign:
    ``min(e, 180 - e)`` (SuperGlue, LoFTR, glue-factory: an essential matrix fixes ``t`` only up to
    sign), in [0, 90].

    Args:
        t_est, t_gt: (3,) translations (any scale).
        ignore_gt_t_below: when ``|t_gt|`` is below this, the error is 0 whatever the estimate
            (LoFTR's ``ignore_gt_t_thr``: the direction of a near-zero baseline is noise).

    Returns:
        The error; ``inf`` for a zero or non-finite estimate (no direction: a failure); ``nan``
        when ``t_gt`` is zero and not ignored (the error is undefined; the references give nan too).
    """
    t_est, t_gt = _array(t_est, (3,), "t_est"), _array(t_gt, (3,), "t_gt")
    if not np.all(np.isfinite(t_gt)):
        raise ValueError("t_gt has a non-finite entry")
    norm_gt = float(np.linalg.norm(t_gt))
    if norm_gt < ignore_gt_t_below:
        return 0.0
    norm_est = float(np.linalg.norm(t_est)) if np.all(np.isfinite(t_est)) else math.nan
    if not norm_est > 0:  # zero or nan
        return math.inf
    if norm_gt == 0:
        return math.nan
    cos = float(np.dot(t_est, t_gt)) / (norm_est * norm_gt)
    e = math.degrees(math.acos(min(1.0, max(-1.0, cos))))
    return min(e, 180.0 - e)


class PoseError(NamedTuple):
    """The rotation and translation errors of one pair, in degrees (the references return them in
    the order (t, R); here they are named)."""

    rotation: float
    translation: float

    @property
    def max(self) -> float:
        """The pose error: the larger of the two (``nan`` if either is nan)."""
        if math.isnan(self.rotation) or math.isnan(self.translation):
            return math.nan
        return max(self.rotation, self.translation)


_FAILED = PoseError(math.inf, math.inf)


def pose_errors(R: Any, t: Any, T_0to1: Any, *, ignore_gt_t_below: float = 0.0) -> PoseError:
    """The errors of an estimate ``(R, t)`` (``X1 = R X0 + t``) against the ground truth.

    Args:
        R: (3, 3) estimated rotation, or None for a failed estimate (then both errors are inf).
        t: (3,) estimated translation (any scale), or None for a failed estimate.
        T_0to1: (4, 4) or (3, 4) ground-truth pose.
        ignore_gt_t_below: see `translation_error_deg`.
    """
    if R is None or t is None:
        return _FAILED
    T = _pose_matrix(T_0to1)
    return PoseError(rotation_error_deg(R, T[:, :3]),
                     translation_error_deg(t, T[:, 3], ignore_gt_t_below=ignore_gt_t_below))


def pose_error(R: Any, t: Any, T_0to1: Any, *, ignore_gt_t_below: float = 0.0) -> float:
    """``max(rotation error, translation error)`` in degrees (`pose_errors`); inf for R None."""
    return pose_errors(R, t, T_0to1, ignore_gt_t_below=ignore_gt_t_below).max


# --- AUC and summaries ---------------------------------------------------------------------------


def _errors_array(errors: Iterable[Any]) -> np.ndarray:
    """float64 errors; None and nan become inf (failures); negative errors raise."""
    e = np.asarray([math.inf if v is None else float(v) for v in errors], dtype=np.float64)
    e[np.isnan(e)] = math.inf
    if np.any(e < 0):
        raise ValueError(f"errors must be >= 0, got {float(e[e < 0][0])!r}")
    return e


def pose_auc(errors: Iterable[float | None], thresholds: Iterable[float] = AUC_THRESHOLDS) -> list[float]:
    """The area under the recall-vs-error curve up to each threshold, divided by the threshold.

    Exactly SuperGlue's ``pose_auc`` and LoFTR's ``error_auc``: sort the n errors
    ``e_1 <= ... <= e_n`` with recalls ``r_i = i / n``; the curve starts at (0, 0) and joins
    ``(e_i, r_i)`` by straight lines for the errors strictly below the threshold ``T``
    (``e_1 .. e_k``), then stays flat at ``r_k`` up to ``T`` (it does not rise toward the first error
    at or above ``T``); its area by the trapezoid rule, divided by ``T``, is the AUC in [0, 1].
    So an error exactly at ``T`` counts as above it, equal errors make a vertical step, and infinite
    errors (failures) only lower the recalls.

    glue-factory's ``AUCMetric`` / ``cal_error_auc`` computes the same numbers, rounded to 4 decimals,
    and nan (instead of SuperGlue's and LoFTR's 0) for no errors at all; its benchmarks also run
    RANSAC at several thresholds and report the one with the best mean AUC (mAA).

    Args:
        errors: per-pair pose errors in degrees, >= 0; None, inf and nan count as failures (nan
            sorts after inf in the references, so there it is a failure too).
        thresholds: positive thresholds in degrees.

    Returns:
        One AUC per threshold (unrounded); nan for each when there are no errors (as glue-factory).

    Raises:
        ValueError: a negative error or a threshold that is not a positive finite number.
    """
    e = np.sort(_errors_array(errors))
    ths = [float(t) for t in thresholds]
    for t in ths:
        if not (math.isfinite(t) and t > 0):
            raise ValueError(f"AUC thresholds must be positive and finite, got {t!r}")
    n = len(e)
    if n == 0:
        return [math.nan for _ in ths]
    recall = np.arange(1, n + 1, dtype=np.float64) / n
    aucs = []
    for t in ths:
        k = int(np.searchsorted(e, t, side="left"))  # the errors strictly below t
        xs = np.concatenate([[0.0], e[:k], [t]])
        ys = np.concatenate([[0.0], recall[:k], [recall[k - 1] if k else 0.0]])
        area = float(np.sum(np.diff(xs) * (ys[1:] + ys[:-1]) / 2.0))
        aucs.append(area / t)
    return aucs


def _auc_key(t: float) -> str:
    return f"auc@{float(t):g}"


def summarise_pose_errors(errors: Iterable[PoseError | Sequence[float] | None],
                          thresholds: Iterable[float] = AUC_THRESHOLDS) -> dict[str, Any]:
    """The numbers of a relative-pose benchmark over its pairs.

    Args:
        errors: per pair a `PoseError` or ``(rotation, translation)`` in degrees, or None for a pair
            without an estimate (a failure, like ``(inf, inf)``).
        thresholds: the AUC thresholds in degrees.

    Returns:
        ``pairs`` (count), ``failures`` (pairs whose pose error is not finite: no estimate, a zero
        translation estimate, an undefined error), ``auc@<t>`` per threshold (`pose_auc` of the pose
        errors), ``mAA`` (their mean, glue-factory's summary), and ``median_pose_error``,
        ``median_rotation_error``, ``median_translation_error`` over all pairs with failures as inf
        (as glue-factory's medians; inf when at least half fail). With no pairs the numbers are nan.
    """
    rows = [_FAILED if e is None else PoseError(float(e[0]), float(e[1])) for e in errors]
    ths = list(thresholds)
    pose = _errors_array([r.max for r in rows])
    aucs = pose_auc(pose, ths)
    out: dict[str, Any] = {"pairs": len(rows), "failures": int(np.sum(~np.isfinite(pose)))}
    out.update({_auc_key(t): a for t, a in zip(ths, aucs)})
    out["mAA"] = float(np.mean(aucs)) if rows and aucs else math.nan

    def median(values: Iterable[float]) -> float:
        v = _errors_array(values)
        return float(np.median(v)) if len(v) else math.nan

    out["median_pose_error"] = median(pose)
    out["median_rotation_error"] = median(r.rotation for r in rows)
    out["median_translation_error"] = median(r.translation for r in rows)
    return out


# --- epipolar geometry ---------------------------------------------------------------------------


def _cross_matrix(v: np.ndarray) -> np.ndarray:
    """``[v]x``: ``[v]x @ u == np.cross(v, u)``."""
    x, y, z = v
    return np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])


def essential_from_pose(T_0to1: Any) -> np.ndarray:
    """The essential matrix ``E = [t]x R`` of ``X1 = R X0 + t``, so that ``y1^T E y0 = 0`` for
    normalised coordinates ``y = K^-1 (x, y, 1)`` of one 3-D point in both images.

    Args:
        T_0to1: (4, 4) or (3, 4) pose.

    Returns:
        (3, 3) float64; zero for a zero translation (pure rotation).
    """
    T = _pose_matrix(T_0to1)
    return _cross_matrix(T[:, 3]) @ T[:, :3]


def _points(points: Any, what: str) -> np.ndarray:
    p = np.asarray(points, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 2:
        raise ValueError(f"{what} must have shape (N, 2), got {p.shape}")
    return p


def normalise_points(points: Any, K: Any) -> np.ndarray:
    """Normalised coordinates ``K^-1 (x, y, 1)`` (dehomogenised) of (N, 2) pixels; returns (N, 2)."""
    p = _points(points, "points")
    K = _array(K, (3, 3), "K")
    y = np.c_[p, np.ones(len(p))] @ np.linalg.inv(K).T
    return y[:, :2] / y[:, 2:]


def symmetric_epipolar_distance(points0_n: Any, points1_n: Any, E: Any, *, squared: bool = True) -> np.ndarray:
    """Symmetric epipolar distance of each correspondence, on normalised coordinates.

    With ``l1 = E y0`` (the epipolar line of ``y0`` in image 1), ``l0 = E^T y1`` and
    ``n = y1^T E y0``:

    - ``squared=True`` (SuperGlue's ``compute_epipolar_error``, LoFTR's
      ``symmetric_epipolar_distance``): ``n^2 (1 / (l1_x^2 + l1_y^2) + 1 / (l0_x^2 + l0_y^2))``,
      the sum of the squared distances of each point from the other's epipolar line;
    - ``squared=False`` (glue-factory's epipolar precision): ``|n| (1 / |l1_xy| + 1 / |l0_xy|) / 2``,
      the mean of the two distances. (glue-factory also clamps each squared norm at 1e-6; that
      matters only within ~1e-3 of an epipole.)

    Both are invariant to the scale of E. Where ``n == 0`` (including a point at an epipole, whose
    line is undefined) the distance is 0.

    Args:
        points0_n, points1_n: (K, 2) normalised coordinates (`normalise_points`) of the matches.
        E: (3, 3) essential matrix, ``y1^T E y0 = 0`` (`essential_from_pose`).

    Returns:
        (K,) float64 distances.

    Raises:
        ValueError: mismatched shapes, or an all-zero E (a pure rotation: no epipolar geometry).
    """
    p0, p1 = _points(points0_n, "points0_n"), _points(points1_n, "points1_n")
    if len(p0) != len(p1):
        raise ValueError(f"points0_n and points1_n must have the same length, got {len(p0)} and {len(p1)}")
    E = _array(E, (3, 3), "E")
    if not np.any(E):
        raise ValueError("E is zero (a pose without translation): the epipolar distance is undefined")
    y0, y1 = np.c_[p0, np.ones(len(p0))], np.c_[p1, np.ones(len(p1))]
    line1 = y0 @ E.T  # (K, 3): E y0
    line0 = y1 @ E  # (K, 3): E^T y1
    n = np.sum(y1 * line1, axis=1)
    a = line1[:, 0] ** 2 + line1[:, 1] ** 2
    b = line0[:, 0] ** 2 + line0[:, 1] ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        if squared:
            d = n ** 2 * (1.0 / a + 1.0 / b)
        else:
            d = np.abs(n) * (1.0 / np.sqrt(a) + 1.0 / np.sqrt(b)) / 2.0
    d[n == 0] = 0.0
    return d


def epipolar_precision(points0_n: Any, points1_n: Any, E: Any, threshold: float = EPIPOLAR_THRESHOLD_SCANNET,
                       *, squared: bool = True) -> float:
    """The share of matches whose `symmetric_epipolar_distance` is strictly below ``threshold``
    (SuperGlue, LoFTR: squared distance, 5e-4 on ScanNet, 1e-4 recommended by LoFTR for
    MegaDepth; glue-factory: ``squared=False``). 0.0 for no matches, as all three references.

    A benchmark's precision is the mean of the per-pair precisions (all three references).
    """
    d = symmetric_epipolar_distance(points0_n, points1_n, E, squared=squared)
    return float(np.mean(d < threshold)) if len(d) else 0.0


# --- intrinsics under resizing and rotation --------------------------------------------------------


def _scales(scale: Any) -> tuple[float, float]:
    s = np.asarray(scale, dtype=np.float64).ravel()
    if s.size == 1:
        s = np.repeat(s, 2)
    if s.size != 2 or not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise ValueError(f"scale must be a positive number or a pair (sx, sy), got {scale!r}")
    return float(s[0]), float(s[1])


def rescale_intrinsics(K: Any, scale: Any) -> np.ndarray:
    """The intrinsics of the image resized by ``scale`` (target size / source size, a number or
    ``(sx, sy)``), in delfi's convention ``x -> (x + 0.5) s - 0.5`` (`delfi.types.rescale_keypoints`):
    ``fx -> sx fx``, ``cx -> (cx + 0.5) sx - 0.5`` (and likewise in y; a skew scales with ``sx``).

    Returns:
        (3, 3) float64 ``S @ K`` with ``S`` that pixel map.
    """
    K = _array(K, (3, 3), "K")
    sx, sy = _scales(scale)
    S = np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0.0, 0.0, 1.0]])
    return S @ K


def _quarter_turns(rot: Any) -> int:
    if isinstance(rot, bool) or not isinstance(rot, (int, np.integer)):
        raise TypeError(f"rot must be an int (the k of np.rot90), got {rot!r}")
    return int(rot) % 4


def _size(image_size: Any) -> tuple[int, int]:
    w, h = (int(v) for v in image_size)
    if w < 1 or h < 1:
        raise ValueError(f"image_size must be positive (width, height), got {image_size!r}")
    return w, h


def rotated_size(image_size: Sequence[int], rot: int) -> tuple[int, int]:
    """``(width, height)`` of a ``(width, height)`` image after ``np.rot90(image, rot)``."""
    w, h = _size(image_size)
    return (h, w) if _quarter_turns(rot) % 2 else (w, h)


def _rot90_pixel_map(image_size: Sequence[int], rot: int) -> np.ndarray:
    """(3, 3) affine map of delfi pixel coordinates of an image to those of ``np.rot90(image, rot)``."""
    w, h = _size(image_size)
    k = _quarter_turns(rot)
    if k == 0:
        return np.eye(3)
    if k == 1:  # (x, y) -> (y, w - 1 - x)
        return np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, w - 1.0], [0.0, 0.0, 1.0]])
    if k == 2:  # (x, y) -> (w - 1 - x, h - 1 - y)
        return np.array([[-1.0, 0.0, w - 1.0], [0.0, -1.0, h - 1.0], [0.0, 0.0, 1.0]])
    return np.array([[0.0, -1.0, h - 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # (x, y) -> (h - 1 - y, x)


def rotate_points(points: Any, image_size: Sequence[int], rot: int) -> np.ndarray:
    """Where (N, 2) pixels of an image land in ``np.rot90(image, rot)`` (array ``image`` of shape
    (height, width, ...), ``image_size = (width, height)`` before the turn).

    ``np.rot90`` with ``k = 1`` turns the picture counter-clockwise as displayed (rows down):
    ``(x, y) -> (y, w - 1 - x)``; ``k = 2``: ``(w - 1 - x, h - 1 - y)``; ``k = 3`` (= -1,
    clockwise): ``(h - 1 - y, x)``. Any int ``rot`` works, modulo 4, as in ``np.rot90``.
    """
    p = _points(points, "points")
    A = _rot90_pixel_map(image_size, rot)
    return p @ A[:2, :2].T + A[:2, 2]


def inplane_rotation(rot: int) -> np.ndarray:
    """(3, 3) rotation of the camera frame that goes with ``np.rot90(image, rot)``: the turned image
    is the view of a camera with ``X' = Rz @ X`` (a rotation about the optical axis; SuperGlue's
    ``rotate_pose_inplane``)."""
    A = _rot90_pixel_map((1, 1), rot)  # the linear part does not depend on the size
    Rz = np.eye(3)
    Rz[:2, :2] = A[:2, :2]
    return Rz


def rotate_intrinsics(K: Any, image_size: Sequence[int], rot: int) -> np.ndarray:
    """The intrinsics of ``np.rot90(image, rot)`` for the camera frame `inplane_rotation` (rot).

    ``image_size`` is ``(width, height)`` of the image *before* the turn (SuperGlue's
    ``rotate_intrinsics`` takes the shape after it). With ``K = [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]``:
    ``k = 1``: ``[[fy, 0, cy], [0, fx, w - 1 - cx]]``; ``k = 2``: ``[[fx, 0, w - 1 - cx],
    [0, fy, h - 1 - cy]]``; ``k = 3``: ``[[fy, 0, h - 1 - cy], [0, fx, cx]]`` (SuperGlue's values).
    Projecting ``Rz X`` with the result gives `rotate_points` of the projection of ``X`` with ``K``.
    (A non-zero skew stays a valid projection but moves below the diagonal for odd ``k``.)

    Returns:
        (3, 3) float64 ``A @ K @ Rz^T``, ``A`` the pixel map of the turn, ``Rz`` `inplane_rotation`.
    """
    K = _array(K, (3, 3), "K")
    return _rot90_pixel_map(image_size, rot) @ K @ inplane_rotation(rot).T


def rotate_pose(T_0to1: Any, rot0: int, rot1: int) -> np.ndarray:
    """The pose between the cameras of the turned images (`inplane_rotation`):
    ``T' = [Rz1 0; 0 1] @ T_0to1 @ [Rz0 0; 0 1]^T``, so that ``X1' = R' X0' + t'``.

    Returns:
        (4, 4) float64.
    """
    T = np.eye(4)
    T[:3] = _pose_matrix(T_0to1)
    P0, P1 = np.eye(4), np.eye(4)
    P0[:3, :3], P1[:3, :3] = inplane_rotation(rot0), inplane_rotation(rot1)
    return P1 @ T @ P0.T
