"""A tiny MegaDepth-like dataset in the layout D2-Net's ``megadepth_utils`` preprocessing produces,
rendered exactly, for testing `delfi.datasets.depth_pairs.DepthPosePairs`.

`make_synthetic_depth_scene` writes, under ``root``::

    Undistorted_SfM/<scene>/images/<name>.jpg                       the rendered views
    phoenix/S6/zl548/MegaDepth_v1/<scene>/dense0/depths/<name>.h5   HDF5, dataset ``depth`` (H, W)
                                                                    float32, 0 = unknown
    scene_info/<scene>.0.npz                                        image_paths, depth_paths (relative
                                                                    to root), intrinsics (N, 3, 3),
                                                                    poses (N, 4, 4) world -> camera,
                                                                    overlap_matrix, scale_ratio_matrix

The scene is one textured rectangle (a photo from `skimage.data`) facing the cameras at a known
depth, optionally with a smaller textured rectangle in front of it (an occluder). Every pixel is
ray cast exactly (numpy): the ray through the pixel centre, COLMAP's convention (pixel ``(col,
row)`` has its centre at ``(col + 0.5, row + 0.5)`` for the intrinsics ``K``), meets the nearest
rectangle; its camera-frame ``z`` is the depth and the bilinearly sampled texture its colour.
Pixels seeing no rectangle get depth 0 and a grey background. Deterministic for a seed.

Geometry conventions: a camera maps a world point ``X`` to ``X_cam = R X + t`` (``pose = [R t; 0 1]``),
then to COLMAP pixel coordinates ``K X_cam`` (dehomogenised); delfi's pixel coordinates are
``x_colmap - 0.5``. A plane is ``n . X = d`` (unit ``n``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["Rectangle", "SyntheticDepthScene", "make_synthetic_depth_scene", "plane_homography", "render_view"]

DEPTH_DIR = "phoenix/S6/zl548/MegaDepth_v1"
IMAGE_DIR = "Undistorted_SfM"
BACKGROUND = 0.5


@dataclass(frozen=True)
class Rectangle:
    """A textured rectangle: ``origin`` its centre, ``axes`` (2, 3) orthonormal in-plane directions
    (texture x, texture y), ``half`` its half extents along them, ``texture`` (h, w, 3) float in [0, 1]
    stretched over it."""

    origin: np.ndarray
    axes: np.ndarray
    half: tuple[float, float]
    texture: np.ndarray = field(repr=False)

    @property
    def normal(self) -> np.ndarray:
        n = np.cross(self.axes[0], self.axes[1])
        return n / np.linalg.norm(n)

    @property
    def offset(self) -> float:
        """``d`` of the plane ``n . X = d``."""
        return float(self.normal @ self.origin)


@dataclass(frozen=True)
class SyntheticDepthScene:
    """What `make_synthetic_depth_scene` wrote (absolute paths) and the ground truth."""

    root: Path
    scene_id: str
    scene_info: Path
    image_paths: list[Path]
    depth_paths: list[Path]
    intrinsics: np.ndarray  # (N, 3, 3)
    poses: np.ndarray  # (N, 4, 4) world -> camera
    rectangles: list[Rectangle]  # [background, occluder?]
    size: tuple[int, int]  # (width, height)
    overlap_matrix: np.ndarray
    scale_ratio_matrix: np.ndarray

    def homography(self, i: int, j: int, rectangle: int = 0) -> np.ndarray:
        """The homography of ``rectangle``'s plane from image ``i`` to image ``j`` (delfi's
        convention, full images)."""
        r = self.rectangles[rectangle]
        return plane_homography(self.intrinsics[i], self.poses[i], self.intrinsics[j], self.poses[j], r.normal, r.offset)


def plane_homography(K1, pose1, K2, pose2, normal, offset) -> np.ndarray:
    """Image 1 -> image 2 homography, in delfi's pixel convention, induced by the world plane
    ``normal . X = offset``: with ``[R t] = pose2 @ inv(pose1)`` and the plane ``n1 . X1 = d1`` in
    camera 1's frame, ``X2 = (R + t n1^T / d1) X1``, so ``H = C^-1 K2 (R + t n1^T / d1) K1^-1 C`` with
    ``C`` the shift ``x_colmap = x_delfi + 0.5``. (Writing the plane ``n^T X + d = 0`` instead gives
    the textbook ``R - t n^T / d``.)"""
    pose1, pose2 = np.asarray(pose1, np.float64), np.asarray(pose2, np.float64)
    rel = pose2 @ np.linalg.inv(pose1)
    R, t = rel[:3, :3], rel[:3, 3]
    R1, t1 = pose1[:3, :3], pose1[:3, 3]
    n1 = R1 @ np.asarray(normal, np.float64)  # X1 = R1 X + t1: n . X = d  <=>  n1 . X1 = d + n1 . t1
    d1 = float(offset) + float(n1 @ t1)
    shift = np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1]], np.float64)
    H = np.linalg.inv(shift) @ np.asarray(K2, np.float64) @ (R + np.outer(t, n1) / d1) @ np.linalg.inv(K1) @ shift
    return H / H[2, 2]


def _sample_texture(texture: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Bilinear sample of (h, w, 3) at texel coordinates (centres at integers), edges clamped."""
    h, w = texture.shape[:2]
    u, v = np.clip(u, 0, w - 1), np.clip(v, 0, h - 1)
    u0, v0 = np.minimum(np.floor(u).astype(np.int64), w - 2), np.minimum(np.floor(v).astype(np.int64), h - 2)
    fu, fv = (u - u0)[..., None], (v - v0)[..., None]
    top = texture[v0, u0] * (1 - fu) + texture[v0, u0 + 1] * fu
    bottom = texture[v0 + 1, u0] * (1 - fu) + texture[v0 + 1, u0 + 1] * fu
    return top * (1 - fv) + bottom * fv


def render_view(K: np.ndarray, pose: np.ndarray, size: tuple[int, int], rectangles: list[Rectangle]):
    """Ray cast every pixel centre: ((H, W, 3) float64 colours, (H, W) float64 depth, 0 = nothing)."""
    width, height = size
    R, t = pose[:3, :3], pose[:3, 3]
    centre = -R.T @ t
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    pixels = np.stack([u + 0.5, v + 0.5, np.ones_like(u)], -1)  # COLMAP pixel centres
    rays_cam = pixels @ np.linalg.inv(K).T  # z = 1 (K's last row is 0 0 1)
    rays = rays_cam @ R  # world directions (R^T r)
    depth = np.full((height, width), np.inf)
    colour = np.full((height, width, 3), BACKGROUND)
    for rect in rectangles:
        n, d = rect.normal, rect.offset
        denom = rays @ n
        with np.errstate(divide="ignore", invalid="ignore"):
            s = (d - n @ centre) / denom  # X = centre + s * ray; camera z = s * rays_cam_z = s
        s = np.where(np.isfinite(s) & (s > 0), s, np.inf)
        points = centre + s[..., None] * rays
        rel = np.where(np.isfinite(points), points, 0) - rect.origin
        a, b = rel @ rect.axes[0], rel @ rect.axes[1]
        hit = np.isfinite(s) & (np.abs(a) <= rect.half[0]) & (np.abs(b) <= rect.half[1]) & (s < depth)
        th, tw = rect.texture.shape[:2]
        tu = (a + rect.half[0]) / (2 * rect.half[0]) * tw - 0.5
        tv = (b + rect.half[1]) / (2 * rect.half[1]) * th - 0.5
        colour = np.where(hit[..., None], _sample_texture(rect.texture, tu, tv), colour)
        depth = np.where(hit, s, depth)
    return colour, np.where(np.isfinite(depth), depth, 0.0)


def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    cy, sy, cp, sp, cr, sr = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch), np.cos(roll), np.sin(roll)
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return rz @ rx @ ry


def _texture(name: str, size: int) -> np.ndarray:
    """A `skimage.data` photo as a (size, size, 3) float64 texture in [0, 1] (area-averaged, so
    that a texel spans a couple of image pixels and the views are smooth to resample)."""
    import skimage.data
    from skimage.transform import resize

    photo = getattr(skimage.data, name)()
    if photo.ndim == 2:
        photo = np.repeat(photo[..., None], 3, -1)
    photo = photo[..., :3].astype(np.float64) / 255
    return np.clip(resize(photo, (size, size), order=1, anti_aliasing=True), 0, 1)


def _visibility(K1, pose1, depth1, K2, pose2, depth2, tolerance: float = 1e-3):
    """Pixels of view 1 seen in view 2 (exact depths: a tight relative test) and their positions
    (COLMAP pixel coordinates) in both views."""
    h1, w1 = depth1.shape
    v, u = np.nonzero(depth1 > 0)
    z = depth1[v, u]
    p1 = np.stack([u + 0.5, v + 0.5, np.ones_like(z)], -1)
    X1 = (p1 @ np.linalg.inv(K1).T) * z[:, None]
    rel = pose2 @ np.linalg.inv(pose1)
    X2 = X1 @ rel[:3, :3].T + rel[:3, 3]
    front = X2[:, 2] > 0
    q = X2 @ np.asarray(K2).T
    with np.errstate(divide="ignore", invalid="ignore"):
        q = q[:, :2] / q[:, 2:]
    h2, w2 = depth2.shape
    col, row = np.floor(q[:, 0]), np.floor(q[:, 1])
    inside = front & (col >= 0) & (row >= 0) & (col < w2) & (row < h2)
    col, row = np.where(inside, col, 0).astype(np.int64), np.where(inside, row, 0).astype(np.int64)
    # depth2 is rendered at pixel centres; the point lands within half a pixel of the centre
    # (col + 0.5, row + 0.5): a loose test against the nearest centre, enough for overlap scores
    seen = inside & (depth2[row, col] > 0) & (np.abs(depth2[row, col] - X2[:, 2]) <= 0.05 * X2[:, 2] + tolerance)
    return p1[seen, :2], q[seen]


def _overlap_and_scale(intrinsics, poses, depths):
    """D2-Net's matrices, from dense correspondences instead of shared SfM points: overlap of
    (i, j) = the larger of the fractions of i's and j's depth pixels seen in the other view
    (D2-Net: shared points / the smaller point count), scale ratio = sqrt of the ratio of the
    bounding-box areas of the shared pixels in i and in j; -1 on the diagonal and where undefined."""
    n = len(depths)
    overlap = np.full((n, n), -1.0)
    scale = np.full((n, n), -1.0)
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            a, b = _visibility(intrinsics[i], poses[i], depths[i], intrinsics[j], poses[j], depths[j])
            overlap[i, j] = len(a) / max(int((depths[i] > 0).sum()), 1)
            if len(a) > 1:
                area_a = np.ptp(a[:, 0]) * np.ptp(a[:, 1])
                area_b = np.ptp(b[:, 0]) * np.ptp(b[:, 1])
                if area_a > 0 and area_b > 0:
                    scale[i, j] = np.sqrt(area_a / area_b)
    both = np.maximum(overlap, overlap.T)
    np.fill_diagonal(both, -1.0)
    return both, scale


def make_synthetic_depth_scene(
    root: str | os.PathLike,
    scene_id: str = "0000",
    num_cameras: int = 4,
    size: tuple[int, int] = (320, 240),
    focal: float = 260.0,
    plane_depth: float = 4.0,
    occluder: bool = False,
    seed: int = 0,
    image_ext: str = ".jpg",
    overlap_matrix: np.ndarray | None = None,
) -> SyntheticDepthScene:
    """Render ``num_cameras`` views of a textured plane and write them in D2-Net's MegaDepth layout.

    Args:
        root: dataset root (created); other scenes already there are kept.
        scene_id: the scene's name (``scene_info/<scene_id>.0.npz``).
        num_cameras: views; camera 0 looks straight at the plane, the others are moved by up to
            ``0.15 * plane_depth`` sideways / up / along the axis and turned by up to 8 degrees.
        size: (width, height) of every view; ``K = [[f, 0, w/2], [0, f, h/2], [0, 0, 1]]``
            (COLMAP convention).
        focal: ``f`` in pixels.
        plane_depth: distance of the background plane (``z = plane_depth`` in camera 0's frame,
            which is the world frame); it is a ``1.5 x 1.2`` times the view of camera 0 large
            rectangle textured with `skimage.data.astronaut`.
        occluder: add a rectangle (texture `skimage.data.coffee`) at ``0.6 * plane_depth``,
            slightly tilted, covering about a quarter of camera 0's view.
        seed: camera placement (everything else is fixed).
        image_ext: ``.jpg`` (quality 95) or ``.png``.
        overlap_matrix: written instead of the computed one (to test pair selection).

    Returns:
        `SyntheticDepthScene` (paths, K, poses, rectangles and the matrices written).
    """
    from PIL import Image
    import h5py

    root = Path(root)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 7]))
    width, height = size
    K = np.array([[focal, 0, width / 2], [0, focal, height / 2], [0, 0, 1]], np.float64)
    view_w, view_h = plane_depth * width / focal, plane_depth * height / focal
    rects = [
        Rectangle(np.array([0.0, 0.0, plane_depth]), np.eye(3)[:2], (0.75 * view_w, 0.6 * view_h), _texture("astronaut", 160))
    ]
    if occluder:
        tilt = np.deg2rad(15)
        axes = np.array([[np.cos(tilt), 0, np.sin(tilt)], [0, 1, 0]])
        near = 0.6  # of plane_depth; the view there is 0.6 times as wide
        centre = np.array([0.1 * near * view_w, 0.05 * near * view_h, near * plane_depth])
        rects.append(Rectangle(centre, axes, (0.25 * near * view_w, 0.25 * near * view_h), _texture("coffee", 96)))
    intrinsics, poses = [], []
    for c in range(num_cameras):
        if c == 0:
            R, centre = np.eye(3), np.zeros(3)
        else:
            centre = rng.uniform(-0.15, 0.15, 3) * plane_depth
            angles = np.deg2rad(rng.uniform(-8, 8, 3))
            # turn towards the plane centre a little, so that the views overlap
            angles[0] += -np.arctan2(centre[0], plane_depth) * 0.5
            angles[1] += np.arctan2(centre[1], plane_depth) * 0.5
            R = _rotation(*angles)
        pose = np.eye(4)
        pose[:3, :3], pose[:3, 3] = R, -R @ centre
        intrinsics.append(K.copy())
        poses.append(pose)
    intrinsics, poses = np.stack(intrinsics), np.stack(poses)

    image_dir = root / IMAGE_DIR / scene_id / "images"
    depth_dir = root / DEPTH_DIR / scene_id / "dense0" / "depths"
    info_dir = root / "scene_info"
    for folder in (image_dir, depth_dir, info_dir):
        folder.mkdir(parents=True, exist_ok=True)
    image_paths, depth_paths, depths = [], [], []
    for c in range(num_cameras):
        colour, depth = render_view(intrinsics[c], poses[c], size, rects)
        name = f"view{c:02d}"
        image_path, depth_path = image_dir / f"{name}{image_ext}", depth_dir / f"{name}.h5"
        pixels = Image.fromarray(np.clip(np.round(colour * 255), 0, 255).astype(np.uint8))
        pixels.save(image_path, **({"quality": 95} if image_ext.lower() in (".jpg", ".jpeg") else {}))
        with h5py.File(depth_path, "w") as f:
            f.create_dataset("depth", data=depth.astype(np.float32))
        image_paths.append(image_path)
        depth_paths.append(depth_path)
        depths.append(depth.astype(np.float32).astype(np.float64))
    overlap, scale = _overlap_and_scale(intrinsics, poses, depths)
    if overlap_matrix is not None:
        overlap = np.asarray(overlap_matrix, np.float64)
        if overlap.shape != (num_cameras, num_cameras):
            raise ValueError(f"overlap_matrix must be ({num_cameras}, {num_cameras}), got {overlap.shape}")
    info = info_dir / f"{scene_id}.0.npz"
    np.savez(
        info,
        image_paths=np.array([p.relative_to(root).as_posix() for p in image_paths], dtype=object),
        depth_paths=np.array([p.relative_to(root).as_posix() for p in depth_paths], dtype=object),
        intrinsics=intrinsics,
        poses=poses,
        overlap_matrix=overlap,
        scale_ratio_matrix=scale,
    )
    return SyntheticDepthScene(root, scene_id, info, image_paths, depth_paths, intrinsics, poses, rects, size, overlap, scale)
