"""Import / export of the official R2D2 (and D2-Net) ``.npz`` keypoint files.

The official format holds ``keypoints`` (N, 3) as (x, y, scale), ``descriptors`` (N, D),
``scores`` (N,) and ``imsize`` (width, height). delfi writes its keypoints unchanged: in delfi's
pixel-centre convention (or the official ``x * W / w`` values when extracted with
``keypoint_mapping=official``). Files are written to a temporary name and renamed into place.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from delfi.types import Features


def write_r2d2_npz(path: str | os.PathLike, features: Features) -> Path:
    """Write ``features`` as an official-format ``.r2d2`` npz file (rows sorted by score, best last,
    as the official extractor does)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = features.numpy()
    order = np.argsort(arrays["scores"], kind="stable")
    scales = arrays.get("scales", np.ones(len(order), np.float32))
    keypoints = np.concatenate([arrays["keypoints"], scales[:, None]], axis=1).astype(np.float32)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(temporary, "wb") as handle:
        np.savez(
            handle,
            imsize=np.asarray(features.image_size, dtype=np.int64),
            keypoints=keypoints[order],
            descriptors=arrays["descriptors"].astype(np.float32)[order],
            scores=arrays["scores"].astype(np.float32)[order],
        )
    os.replace(temporary, path)
    return path


def read_r2d2_npz(path: str | os.PathLike) -> Features:
    """Read an official ``.r2d2`` (or D2-Net style) npz file into `Features`, best score first.

    Coordinates are taken as written (no convention change): use
    `official_r2d2_to_pixel_centre` for the exact conversion of official files.
    """
    path = Path(path)
    try:
        data = np.load(path)
        keypoints = np.asarray(data["keypoints"], dtype=np.float32)
        descriptors = np.asarray(data["descriptors"], dtype=np.float32)
        scores = np.asarray(data["scores"], dtype=np.float32) if "scores" in data.files else np.ones(len(keypoints), np.float32)
        size = tuple(int(v) for v in data["imsize"]) if "imsize" in data.files else (0, 0)
    except (OSError, KeyError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable keypoint npz file ({exc})") from exc
    order = np.argsort(-scores, kind="stable")
    return Features(
        keypoints=torch.from_numpy(keypoints[order, :2].copy()),
        scores=torch.from_numpy(scores[order].copy()),
        descriptors=torch.from_numpy(descriptors[order].copy()),
        scales=torch.from_numpy(keypoints[order, 2].copy()) if keypoints.shape[1] > 2 else None,
        image_size=size,
    )


def official_r2d2_to_pixel_centre(features: Features, scale_f: float = 2**0.25) -> Features:
    """Convert keypoints of an official R2D2 file to delfi's pixel-centre convention, exactly.

    The official extractor writes ``x_level * W / w`` where ``x_level`` is the column at a pyramid
    level of width ``w = round(W * s)`` (``w = W`` at s = 1) and ``scale = 32 / s`` with
    ``s = scale_f ** -k``. The level is recovered from the scale, the column index from the level
    size, and the keypoint re-mapped with ``(x_level + 0.5) * W / w - 0.5``.
    """
    if features.scales is None:
        raise ValueError("official R2D2 keypoints need their scales to recover the pyramid level")
    width, height = features.image_size
    scales = features.scales.double()
    level = torch.round(torch.log(scales / 32) / np.log(scale_f))
    s = torch.pow(torch.tensor(scale_f, dtype=torch.float64), -level)
    level_w = torch.where(level == 0, torch.tensor(float(width), dtype=torch.float64), torch.round(width * s))
    level_h = torch.where(level == 0, torch.tensor(float(height), dtype=torch.float64), torch.round(height * s))
    factors = torch.stack([width / level_w, height / level_h], dim=1)
    index = features.keypoints.double() / factors
    converted = (index + 0.5) * factors - 0.5
    return Features(
        keypoints=converted.float(),
        scores=features.scores,
        descriptors=features.descriptors,
        scales=features.scales,
        global_descriptor=features.global_descriptor,
        image_size=features.image_size,
    )
