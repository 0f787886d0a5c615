"""Ground-truth relative poses from a COLMAP reconstruction: pairs files for `delfi eval pose`.

MegaDepth's and ScanNet's poses come from reconstructions too; this makes the same kind of benchmark
from any COLMAP model (e.g. one made by ``delfi sfm`` or COLMAP from other features, on photos of
your own). For images ``i`` with ``X_cam_i = R_i X_world + t_i`` (COLMAP's ``cam_from_world``),
``T_0to1 = [R_1 R_0^T | t_1 - R_1 R_0^T t_0]``, so that ``X_1 = R X_0 + t`` as the pairs files want.
``K`` is the camera's pinhole part in delfi's pixel convention (COLMAP's principal point - 0.5); the
pairs format has no lens distortion, so cameras with distortion are refused unless
``max_distortion`` allows them (a ``PINHOLE`` / ``SIMPLE_PINHOLE`` reconstruction is exact).
"""

from __future__ import annotations

import os
from itertools import combinations
from typing import Any, Iterable

import numpy as np

from delfi.eval.pose import PosePair

__all__ = ["pose_pairs_from_reconstruction"]

_DISTORTION = {"SIMPLE_RADIAL": (3,), "RADIAL": (3, 4), "OPENCV": (4, 5, 6, 7)}


def _load(model: Any):
    import pycolmap

    if isinstance(model, (str, os.PathLike)):
        if not os.path.isdir(model):
            raise FileNotFoundError(f"{model}: not a COLMAP model folder (cameras, images, points3D)")
        try:
            return pycolmap.Reconstruction(str(model))
        except Exception as exc:  # noqa: BLE001 - pycolmap raises its own errors for damaged models
            raise ValueError(f"{model}: not a readable COLMAP model ({exc})") from None
    return model


def _pose(image) -> tuple[np.ndarray, np.ndarray]:
    rigid = image.cam_from_world() if callable(image.cam_from_world) else image.cam_from_world
    return np.asarray(rigid.rotation.matrix(), dtype=np.float64), np.asarray(rigid.translation, dtype=np.float64)


def _intrinsics(camera, max_distortion: float) -> np.ndarray:
    params = np.asarray(camera.params, dtype=np.float64)
    model = camera.model_name if hasattr(camera, "model_name") else str(camera.model).split(".")[-1]
    distortion = [abs(params[i]) for i in _DISTORTION.get(model, ())]
    if model not in ("SIMPLE_PINHOLE", "PINHOLE", *_DISTORTION):
        raise ValueError(f"camera {camera.camera_id}: model {model} is not a pinhole camera with radial distortion")
    if distortion and max(distortion) > max_distortion:
        raise ValueError(f"camera {camera.camera_id} ({model}) has distortion {max(distortion):.3g}: the pairs format "
                         f"has none; reconstruct with PINHOLE cameras or allow it (max_distortion)")
    K = np.asarray(camera.calibration_matrix(), dtype=np.float64).copy()
    K[0, 2] -= 0.5
    K[1, 2] -= 0.5
    return K


def pose_pairs_from_reconstruction(model: Any, pairs: Iterable[tuple[str, str]] | None = None, *,
                                   min_shared_points: int = 50, max_distortion: float = 0.0) -> list[PosePair]:
    """Pairs with ground truth from a COLMAP model (a folder or a ``pycolmap.Reconstruction``).

    Args:
        pairs: the image name pairs wanted (each image must be registered); None: every pair of
            registered images that sees at least ``min_shared_points`` common 3-D points, in the
            order of the image names.
        min_shared_points: co-visibility needed when ``pairs`` is None.
        max_distortion: largest |distortion parameter| accepted (the pairs format ignores it).

    Raises:
        FileNotFoundError / ValueError: no model, a damaged model, an unregistered or unknown image,
            a camera the pairs format cannot hold.
    """
    rec = _load(model)
    images = {rec.images[i].name: rec.images[i] for i in rec.reg_image_ids()}
    if pairs is None:
        seen = {name: {p.point3D_id for p in image.points2D if p.has_point3D()} for name, image in images.items()}
        chosen = [(a, b) for a, b in combinations(sorted(images), 2) if len(seen[a] & seen[b]) >= min_shared_points]
    else:
        chosen = [(str(a), str(b)) for a, b in pairs]
        for name in {n for pair in chosen for n in pair}:
            if name not in images:
                raise ValueError(f"image {name!r} is not registered in the reconstruction")
    out = []
    for a, b in chosen:
        R0, t0 = _pose(images[a])
        R1, t1 = _pose(images[b])
        T = np.eye(4)
        T[:3, :3] = R1 @ R0.T
        T[:3, 3] = t1 - R1 @ R0.T @ t0
        K0 = _intrinsics(rec.cameras[images[a].camera_id], max_distortion)
        K1 = _intrinsics(rec.cameras[images[b].camera_id], max_distortion)
        out.append(PosePair(a, b, 0, 0, K0, K1, T))
    return out
