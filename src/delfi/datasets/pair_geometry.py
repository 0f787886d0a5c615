"""Small helpers for training pairs: homographies in delfi's pixel-centre convention, dense flow
and validity from a homography, deterministic colour jitter and crops.

Convention: x right, y down, pixel centres at integers; resizing by ``s`` maps
``x -> (x + 0.5) s - 0.5``. All matrices are (3, 3) float64 numpy arrays.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from delfi.datasets.synthetic import homography_from_points

__all__ = [
    "color_jitter",
    "crop_with_padding",
    "flow_from_homography",
    "jacobian_scale",
    "project",
    "resize",
    "rotation_about_centre",
    "scale_matrix",
    "tilt_homography",
    "translation",
]


def scale_matrix(sx: float, sy: float | None = None) -> np.ndarray:
    """The resize ``x -> (x + 0.5) sx - 0.5``, ``y -> (y + 0.5) sy - 0.5``."""
    sy = sx if sy is None else sy
    return np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1]], np.float64)


def translation(tx: float, ty: float) -> np.ndarray:
    return np.array([[1, 0, tx], [0, 1, ty], [0, 0, 1]], np.float64)


def rotation_about_centre(width: int, height: int, degrees: float) -> np.ndarray:
    """Rotation by ``degrees`` (clockwise on screen, y down) about the image centre."""
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    cx, cy = (width - 1) / 2, (height - 1) / 2
    return translation(cx, cy) @ np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]], np.float64) @ translation(-cx, -cy)


def tilt_homography(width: int, height: int, direction: int, skew: float) -> np.ndarray:
    """A keystone perspective: the edge ``direction`` (0 left, 1 right, 2 top, 3 bottom) is
    shortened about its middle to ``L / (L + 2 skew)`` of its length ``L`` (the edge-length ratio
    of R2D2's ``RandomTilting`` with skew amount ``skew``), the opposite edge is kept."""
    w, h = width - 1, height - 1
    src = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float64)  # TL TR BR BL
    dst = src.copy()
    edge = {0: (0, 3), 1: (1, 2), 2: (0, 1), 3: (3, 2)}[direction]
    axis = 1 if direction in (0, 1) else 0  # the coordinate along the edge
    length = h if axis == 1 else w
    ratio = max(length, 1) / (max(length, 1) + 2 * skew)
    middle = length / 2
    for corner in edge:
        dst[corner, axis] = middle + (src[corner, axis] - middle) * ratio
    return homography_from_points(src, dst)


def project(homography: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map (..., 2) points; returns the (..., 2) images and the (...) homogeneous depths ``w``."""
    p = points @ homography[:, :2].T + homography[:, 2]
    w = p[..., 2]
    safe = np.where(np.abs(w) < 1e-12, 1e-12, w)
    return p[..., :2] / safe[..., None], w


def jacobian_scale(homography: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Local linear scale ``sqrt(|det J|)`` of the homography at (..., 2) points
    (``det J = det H / w**3`` for ``H`` scaled so that ``w`` is the homogeneous depth)."""
    _, w = project(homography, points)
    w = np.where(np.abs(w) < 1e-12, 1e-12, w)
    return np.sqrt(np.abs(np.linalg.det(homography) / w**3))


def flow_from_homography(
    homography: np.ndarray, size: int | tuple[int, int], target_size: int | tuple[int, int] | None = None
) -> tuple[Tensor, Tensor]:
    """Dense flow of a (crop 1 -> crop 2) homography: (2, H, W) float32 (x, y) in crop 2 for each
    pixel of crop 1, and the (H, W) bool mask of pixels landing inside crop 2 (``0 <= x <= W2 - 1``,
    ``0 <= y <= H2 - 1``, in front of the camera). Points behind it get the flow (-1e4, -1e4)."""
    width, height = (size, size) if isinstance(size, int) else size
    tw, th = (width, height) if target_size is None else ((target_size,) * 2 if isinstance(target_size, int) else target_size)
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    xy, w = project(homography, np.stack([u, v], -1))
    front = w > 0
    xy = np.where(front[..., None], xy, -1e4)
    mask = front & (xy[..., 0] >= 0) & (xy[..., 0] <= tw - 1) & (xy[..., 1] >= 0) & (xy[..., 1] <= th - 1)
    flow = torch.from_numpy(np.ascontiguousarray(xy.transpose(2, 0, 1), np.float32))
    return flow, torch.from_numpy(mask)


def resize(image: Tensor, width: int, height: int) -> Tensor:
    """(C, H, W) -> (C, height, width), bilinear, antialiased when shrinking (pixel-centre aligned)."""
    if (image.shape[-1], image.shape[-2]) == (width, height):
        return image
    shrink = width < image.shape[-1] or height < image.shape[-2]
    out = F.interpolate(image[None], size=(height, width), mode="bilinear", align_corners=False, antialias=shrink)
    return out[0].clamp(0, 1)


def crop_with_padding(image: Tensor, x: int, y: int, size: int) -> Tensor:
    """The (C, size, size) window at top-left (x, y); parts outside the image are 0."""
    C, H, W = image.shape
    out = image.new_zeros(C, size, size)
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + size, W), min(y + size, H)
    if x1 > x0 and y1 > y0:
        out[:, y0 - y : y1 - y, x0 - x : x1 - x] = image[:, y0:y1, x0:x1]
    return out


def _grey(image: Tensor) -> Tensor:
    r, g, b = image[0], image[1], image[2]
    return (0.299 * r + 0.587 * g + 0.114 * b)[None]


def color_jitter(image: Tensor, brightness: float, contrast: float, saturation: float, hue: float, order) -> Tensor:
    """torchvision's ``ColorJitter`` on a (3, H, W) RGB image in [0, 1] with given factors:
    brightness ``x * b``; contrast: blend with the mean grey level, ``m + c (x - m)``; saturation:
    blend with the grey image; hue: rotate the HSV hue by ``hue`` turns (in [-0.5, 0.5],
    `kornia.enhance.adjust_hue`). ``order`` is the sequence of operation indices 0..3."""
    import kornia

    for op in order:
        if op == 0:
            image = (image * brightness).clamp(0, 1)
        elif op == 1:
            mean = _grey(image).mean()
            image = (mean + contrast * (image - mean)).clamp(0, 1)
        elif op == 2:
            grey = _grey(image)
            image = (grey + saturation * (image - grey)).clamp(0, 1)
        elif hue:
            image = kornia.enhance.adjust_hue(image[None], hue * 2 * math.pi)[0].clamp(0, 1)
    return image
