"""Training pairs with correspondences from depth maps and camera poses: MegaDepth as D2-Net's
``megadepth_utils`` preprocessing leaves it, as the same item dict as
`delfi.datasets.homography_pairs.HomographyPairs` (``homography`` is all NaN).

Layout read (a dataset ``root``)::

    scene_info/<scene>.0.npz   (or any *.npz there) with the arrays
        image_paths         (N,) relative to root (``Undistorted_SfM/0000/images/x.jpg``), None = missing
        depth_paths         (N,) relative to root (``phoenix/S6/zl548/MegaDepth_v1/0000/dense0/depths/x.h5``),
                            None = missing
        intrinsics          (N, 3, 3) COLMAP ``K`` of the depth map's pixel grid (an object array with
                            None for missing images is accepted too)
        poses               (N, 4, 4) world -> camera (or (N, 16) flattened, as D2-Net writes them)
        overlap_matrix      (N, N), scale_ratio_matrix (N, N)
    depth files: HDF5, dataset ``depth`` (H, W) float, 0 = unknown.

Pairs (D2-Net's ``MegaDepthDataset.build_dataset``): the ordered pairs ``(i, j)``, ``i != j``, with
``min_overlap <= overlap_matrix[i, j] <= max_overlap`` and ``1 / max_scale_ratio <=
scale_ratio_matrix[i, j] <= max_scale_ratio``, both images and depth maps present. Every scene with
at least one such pair gives ``pairs_per_scene`` items per epoch; item ``k`` of scene ``s`` (index
``s * pairs_per_scene + k``) draws its pair uniformly, with replacement as D2-Net, from
`item_rng` ``(seed, epoch, index)``. Scenes without pairs give no items.

Per item:
1. both images are read (an image whose size differs from its depth map is resized to it, as
   D2-Net does; ``K`` belongs to the depth map's grid);
2. the crop centre: among ``centre_trials`` random pixels of image 1 with depth > 0, the first that
   projects consistently into image 2 (the validity test of step 4, inside image 2); the crop of
   image 1 (``crop_size`` square) is centred on it and the crop of image 2 on its projection, both
   clamped inside their images (centred, zero-padded, on an axis shorter than the crop). D2-Net
   centres the crops on a random SfM point seen in both; the pixel draw replaces it, the points are
   not needed. When no candidate is consistent, the pairs of the next items of the epoch are tried
   (8 pairs in all), then the first one is kept (its mask may be nearly empty);
3. every pixel of crop 1 with depth ``z1 > 0`` is unprojected with ``K1``, moved by
   ``pose2 @ inv(pose1)`` and projected with ``K2``: the flow;
4. valid (``mask``) when the projected depth ``z > 0``, the flow lands inside crop 2
   (``0 <= x, y <= S - 1``), image 2's depth bilinearly interpolated there has its four neighbours
   known, and agrees: ``|z - z2| <= depth_tolerance * z2`` (``relative_tolerance=True``, default), or
   ``|z - z2| < depth_tolerance`` (``relative_tolerance=False``: D2-Net's test, absolute 0.05 on
   MegaDepth's depth scale). Occluded and depth-inconsistent pixels are invalid;
5. image 2 only: pixel ``noise`` and colour ``jitter`` as in `PairConfig` (default: none, as D2-Net).

Pixel convention: COLMAP's ``K`` puts the centre of pixel ``(col, row)`` at ``(col + 0.5, row + 0.5)``;
delfi puts it at ``(col, row)``. So a delfi coordinate ``x`` is ``x + 0.5`` for ``K``, and a
projection ``K X`` (dehomogenised) is ``x_colmap - 0.5`` in delfi's coordinates (D2-Net's ``warp``
adds and subtracts the same 0.5). Flow where there is no depth, or the point is behind camera 2, is
(-1e4, -1e4); elsewhere it is the projection even when invalid. All finite.

Files: the image and depth files of the images taking part in some pair are checked to exist at
construction; the missing ones are named in one warning each, listed in ``skipped`` and their
images left out of the pairs. A file that exists but cannot be read (corrupt image, HDF5 without
``depth``) is named once in a warning (per process) when met and the item takes the pair of the
next item of the epoch instead (deterministically), never an exception; only when no pair of the
epoch is readable any more does it raise ValueError.
"""

from __future__ import annotations

import math
import os
import pickle
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from delfi.datasets.homography_pairs import EpochPairs, PairConfig, clamp_corners, item_rng, jitter_and_noise
from delfi.datasets.pair_geometry import crop_with_padding, resize
from delfi.io.images import ImageError, read_image

__all__ = ["DepthPosePairs", "DepthScene", "PairInfo", "load_depth", "project_depth", "read_scene_info"]

_INVALID = -1e4
_SCENE_ARRAYS = ("image_paths", "depth_paths", "intrinsics", "poses", "overlap_matrix", "scale_ratio_matrix")
_GEOMETRY_TRIES = 8


class DepthError(Exception):
    """A bad depth file: ``.path``, ``.reason``."""

    def __init__(self, path, reason: str) -> None:
        self.path, self.reason = str(path), reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):
        return (type(self), (self.path, self.reason))


def load_depth(path: str | os.PathLike) -> np.ndarray:
    """(H, W) float32 depth of a MegaDepth HDF5 file (dataset ``depth``); non-finite and negative
    values become 0 (unknown). Raises `DepthError`."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            if "depth" not in f:
                raise DepthError(path, "no 'depth' dataset in the HDF5 file")
            depth = np.asarray(f["depth"][()], np.float32)
    except DepthError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DepthError(path, f"cannot read depth: {e}") from None
    if depth.ndim == 3 and depth.shape[-1] == 1:
        depth = depth[..., 0]
    if depth.ndim != 2 or min(depth.shape) < 1:
        raise DepthError(path, f"depth must be (H, W), got {depth.shape}")
    return np.where(np.isfinite(depth) & (depth > 0), depth, np.float32(0))


@dataclass
class DepthScene:
    """One scene_info file: paths (absolute, None = missing), K (N, 3, 3), poses (N, 4, 4) world ->
    camera, and ``pairs`` (P, 2) int64 of the selected ordered pairs."""

    name: str
    image_paths: list[Path | None]
    depth_paths: list[Path | None]
    intrinsics: np.ndarray
    poses: np.ndarray
    pairs: np.ndarray


def _matrices(values, n: int, shape: tuple[int, int], what: str, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(N, *shape) float64 (NaN where missing) and the (N,) present mask, from a float array or an
    object array holding arrays (any layout of ``prod(shape)`` numbers) or None."""
    out = np.full((n, *shape), np.nan)
    present = np.zeros(n, bool)
    values = np.asarray(values, dtype=object) if np.asarray(values).dtype == object else np.asarray(values, np.float64)
    if values.dtype != object:
        values = values.reshape(len(values), -1) if len(values) else values.reshape(0, math.prod(shape))
        if values.shape != (n, math.prod(shape)):
            raise ValueError(f"{path}: {what} must be ({n}, {shape[0]}, {shape[1]}), got {np.asarray(values).shape}")
        out[:] = values.reshape(n, *shape)
        present[:] = np.isfinite(out).all((1, 2))
        return out, present
    if len(values) != n:
        raise ValueError(f"{path}: {what} has {len(values)} entries for {n} images")
    for k, value in enumerate(values):
        if value is None:
            continue
        value = np.asarray(value, np.float64)
        if value.size != math.prod(shape):
            raise ValueError(f"{path}: {what}[{k}] has {value.size} numbers, expected {math.prod(shape)}")
        out[k] = value.reshape(shape)
        present[k] = np.isfinite(out[k]).all()
    return out, present


def read_scene_info(
    path: str | os.PathLike,
    root: str | os.PathLike,
    min_overlap: float = 0.5,
    max_overlap: float = 1.0,
    max_scale_ratio: float = math.inf,
) -> DepthScene:
    """Read one scene_info ``.npz`` (only the arrays needed) and select its pairs (module docstring;
    images without image, depth, K or pose are left out). Raises ValueError on a malformed file."""
    path, root = Path(path), Path(root)
    try:
        with np.load(path, allow_pickle=True) as data:
            missing = [k for k in _SCENE_ARRAYS if k not in data]
            if missing:
                raise ValueError(f"{path}: missing array(s) {', '.join(missing)}")
            image_paths, depth_paths = list(data["image_paths"]), list(data["depth_paths"])
            n = len(image_paths)
            intrinsics, has_k = _matrices(data["intrinsics"], n, (3, 3), "intrinsics", path)
            poses, has_pose = _matrices(data["poses"], n, (4, 4), "poses", path)
            overlap = np.asarray(data["overlap_matrix"], np.float64)
            scale = np.asarray(data["scale_ratio_matrix"], np.float64)
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, pickle.UnpicklingError) as e:
        raise ValueError(str(e) if str(path) in str(e) else f"{path}: cannot read scene info: {e}") from None
    if len(depth_paths) != n or overlap.shape != (n, n) or scale.shape != (n, n):
        raise ValueError(
            f"{path}: inconsistent sizes: {n} image paths, {len(depth_paths)} depth paths, "
            f"overlap {overlap.shape}, scale ratio {scale.shape}"
        )

    def absolute(p) -> Path | None:
        if p is None or (isinstance(p, float) and math.isnan(p)) or str(p) in ("", "None"):
            return None
        return root / str(p)

    images, depths = [absolute(p) for p in image_paths], [absolute(p) for p in depth_paths]
    usable = np.array([i is not None and d is not None for i, d in zip(images, depths)], bool) & has_k & has_pose
    with np.errstate(invalid="ignore", divide="ignore"):
        valid = (overlap >= min_overlap) & (overlap <= max_overlap)
        valid &= (scale <= max_scale_ratio) & (scale >= 1.0 / max_scale_ratio)
    valid &= usable[:, None] & usable[None, :]
    np.fill_diagonal(valid, False)
    pairs = np.argwhere(valid).astype(np.int64)
    return DepthScene(path.name.removesuffix(".npz"), images, depths, intrinsics, poses, pairs)


def _bilinear_depth(depth: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Depth at (x, y) (pixel centres at integers), bilinear; valid where the four neighbours lie
    inside the map and are all known (> 0), as D2-Net's ``interpolate_depth``."""
    h, w = depth.shape
    finite = np.isfinite(x) & np.isfinite(y)
    x, y = np.where(finite, x, -1.0), np.where(finite, y, -1.0)
    x0, y0 = np.floor(x), np.floor(y)
    x1, y1 = np.ceil(x), np.ceil(y)
    inside = finite & (x0 >= 0) & (y0 >= 0) & (x1 <= w - 1) & (y1 <= h - 1)
    i0 = np.where(inside, x0, 0).astype(np.int64)
    j0 = np.where(inside, y0, 0).astype(np.int64)
    i1 = np.where(inside, x1, 0).astype(np.int64)
    j1 = np.where(inside, y1, 0).astype(np.int64)
    d00, d01, d10, d11 = depth[j0, i0], depth[j0, i1], depth[j1, i0], depth[j1, i1]
    ok = inside & (d00 > 0) & (d01 > 0) & (d10 > 0) & (d11 > 0)
    fx, fy = x - x0, y - y0
    value = (d00 * (1 - fx) + d01 * fx) * (1 - fy) + (d10 * (1 - fx) + d11 * fx) * fy
    return np.where(ok, value, 0.0), ok


def project_depth(
    points: np.ndarray,
    z1: np.ndarray,
    K1: np.ndarray,
    pose1: np.ndarray,
    K2: np.ndarray,
    pose2: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """(..., 2) delfi pixel coordinates of image 1 with depths (...) -> ((..., 2) delfi coordinates
    in image 2, (...) depths in camera 2). ``x_colmap = x_delfi + 0.5`` on both sides."""
    colmap = np.concatenate([points + 0.5, np.ones_like(points[..., :1])], -1)
    X1 = (colmap @ np.linalg.inv(K1).T) * (z1[..., None] / 1.0)
    # K's last row is (0, 0, 1): K^-1 [u, v, 1] has z = 1, so X1's z is z1
    rel = np.asarray(pose2, np.float64) @ np.linalg.inv(np.asarray(pose1, np.float64))
    X2 = X1 @ rel[:3, :3].T + rel[:3, 3]
    q = X2 @ np.asarray(K2, np.float64).T
    with np.errstate(divide="ignore", invalid="ignore"):
        xy = q[..., :2] / q[..., 2:]
    return xy - 0.5, X2[..., 2]


@dataclass(frozen=True)
class PairInfo:
    """Where an item comes from: scene name, image indices ``i`` (crop 1) and ``j`` (crop 2) in its
    scene_info, the crops' top-left corners (x, y) in the depth-map-sized images, and whether the
    crop centre was a consistent correspondence (False: the fallback of step 2)."""

    scene: str
    i: int
    j: int
    corner1: tuple[int, int]
    corner2: tuple[int, int]
    consistent: bool


class DepthPosePairs(EpochPairs):
    """Image pairs with depth maps and poses (MegaDepth, D2-Net layout; see the module docstring).

    Args:
        root: dataset root holding ``scene_info/`` and the paths its files name.
        scenes: scene names to use (``"0000"`` reads ``scene_info/0000.0.npz`` as D2-Net does;
            ``"0000.1"`` reads ``0000.1.npz``), or a text file of them, one per line (D2-Net's
            ``train_scenes.txt``); None: every ``*.npz`` in scene_info (sorted).
        crop_size: S.
        min_overlap, max_overlap, max_scale_ratio: pair selection (D2-Net: 0.5, 1, inf).
        pairs_per_scene: items per scene and epoch (D2-Net: 100).
        depth_tolerance, relative_tolerance: depth agreement test (step 4).
        centre_trials: candidate crop centres per pair.
        noise, jitter: image 2's photometric changes (`PairConfig`'s meaning; default off).
        seed: items are functions of (seed, epoch, index).
        scene_info: the folder of the ``.npz`` files when not ``root/scene_info``.
        min_pairs: refuse (ValueError) fewer items per epoch than this.

    Attributes:
        scenes: the `DepthScene` with pairs, in item order (scene ``s`` has items
            ``s * pairs_per_scene ...``).
        empty_scenes: names of the scene files read that have no usable pair.
        skipped: [(path, reason)] files reported at construction (missing files, unreadable
            scene_info files).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        scenes: Sequence[str] | str | os.PathLike | None = None,
        crop_size: int = 256,
        min_overlap: float = 0.5,
        max_overlap: float = 1.0,
        max_scale_ratio: float = math.inf,
        pairs_per_scene: int = 100,
        depth_tolerance: float = 0.05,
        relative_tolerance: bool = True,
        centre_trials: int = 512,
        noise: float = 0.0,
        jitter: tuple[float, float, float, float] | None = None,
        seed: int = 0,
        scene_info: str | os.PathLike | None = None,
        min_pairs: int = 1,
    ) -> None:
        self.root = Path(root)
        info_dir = Path(scene_info) if scene_info is not None else self.root / "scene_info"
        if not info_dir.is_dir():
            raise ValueError(
                f"no scene_info folder at {info_dir}: a depth-pair dataset root must hold scene_info/<scene>.0.npz "
                "files (D2-Net's megadepth_utils preprocessing: image_paths, depth_paths, intrinsics, poses, "
                "overlap_matrix, scale_ratio_matrix) next to the image and depth folders they name"
            )
        if pairs_per_scene < 1 or crop_size < 8 or depth_tolerance <= 0 or centre_trials < 1:
            raise ValueError("need pairs_per_scene >= 1, crop_size >= 8, depth_tolerance > 0 and centre_trials >= 1")
        self.crop_size, self.pairs_per_scene, self.seed, self.epoch = crop_size, pairs_per_scene, seed, 0
        self.depth_tolerance, self.relative_tolerance, self.centre_trials = depth_tolerance, relative_tolerance, centre_trials
        self.photometric = PairConfig(crop_size=crop_size, noise=noise, jitter=tuple(jitter) if jitter else None)
        self.skipped: list[tuple[str, str]] = []
        self.empty_scenes: list[str] = []
        self._warned: set[str] = set()

        files = self._scene_files(info_dir, scenes)
        if not files:
            which = f" for scenes {scenes}" if scenes is not None else ""
            raise ValueError(f"no scene info (*.npz) to read in {info_dir}{which}")
        self.scenes: list[DepthScene] = []
        for file in files:
            try:
                scene = read_scene_info(file, self.root, min_overlap, max_overlap, max_scale_ratio)
            except ValueError as e:
                self.skipped.append((str(file), str(e)))
                warnings.warn(f"skipping scene info {e}", stacklevel=2)
                continue
            scene.pairs = self._drop_missing(scene)
            (self.scenes if len(scene.pairs) else self.empty_scenes).append(scene if len(scene.pairs) else scene.name)
        if len(self) < min_pairs:
            raise ValueError(
                f"depth pairs need at least {min_pairs} item(s); {len(self.scenes)} of {len(files)} scene(s) in {info_dir} "
                f"have pairs with {min_overlap} <= overlap <= {max_overlap} and scale ratio <= {max_scale_ratio}"
                + (f"; {len(self.skipped)} file(s) skipped" if self.skipped else "")
            )

    @staticmethod
    def _scene_files(info_dir: Path, scenes) -> list[Path]:
        if scenes is None:
            return sorted(info_dir.glob("*.npz"))
        if isinstance(scenes, (str, os.PathLike)):
            lines = Path(scenes).read_text().splitlines()
            scenes = [line.split("#", 1)[0].strip() for line in lines]
        files = []
        for name in (s for s in map(str, scenes) if s):
            candidates = [info_dir / f"{name}.npz", info_dir / f"{name}.0.npz"]
            found = next((c for c in candidates if c.is_file()), None)
            if found is None:
                warnings.warn(f"no scene info for scene {name!r} in {info_dir} (looked for {name}.0.npz)", stacklevel=3)
            else:
                files.append(found)
        return files

    def _drop_missing(self, scene: DepthScene) -> np.ndarray:
        """The pairs whose four files exist; missing files reported once each."""
        if not len(scene.pairs):
            return scene.pairs
        ok = {}
        for index in np.unique(scene.pairs):
            fine = True
            for path in (scene.image_paths[index], scene.depth_paths[index]):
                if not path.is_file():
                    self.skipped.append((str(path), "not found"))
                    warnings.warn(f"skipping training image {index} of scene {scene.name}: {path}: not found", stacklevel=3)
                    fine = False
            ok[int(index)] = fine
        keep = np.array([ok[int(i)] and ok[int(j)] for i, j in scene.pairs], bool)
        return scene.pairs[keep]

    def __len__(self) -> int:
        return len(self.scenes) * self.pairs_per_scene

    def pair(self, index: int) -> tuple[int, int, int]:
        """(scene position in ``scenes``, i, j) drawn for item ``index`` of the current epoch (before any
        replacement of an unreadable pair)."""
        if not 0 <= index < len(self):
            raise IndexError(index)
        scene = index // self.pairs_per_scene
        rng = item_rng(self.seed, self.epoch, index)[0]
        pairs = self.scenes[scene].pairs
        i, j = pairs[int(rng.integers(len(pairs)))]
        return scene, int(i), int(j)

    def _warn_once(self, path: str, reason: str) -> None:
        if path not in self._warned:
            self._warned.add(path)
            warnings.warn(f"skipping unreadable training file {path}: {reason}", stacklevel=3)

    def _load(self, scene: DepthScene, k: int):
        image_path, depth_path = scene.image_paths[k], scene.depth_paths[k]
        for path in (str(image_path), str(depth_path)):
            if path in self._warned:
                raise ImageError(path, "unreadable (reported before)")
        depth = load_depth(depth_path)
        image = read_image(image_path)
        h, w = depth.shape
        if image.shape[-2:] != (h, w):
            image = resize(image, w, h)
        return image, depth

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.sample(index)[0]

    def sample(self, index: int) -> tuple[dict[str, torch.Tensor], PairInfo]:
        """Item ``index`` and where it comes from (`PairInfo`: the pair actually used, after any
        replacement, and the crop corners)."""
        rng, gen = self.rng_for(index)  # crops and photometry; `pair` draws the pairs
        chosen, geometry_tries = None, 0
        for step in range(len(self)):
            scene_pos, i, j = self.pair((index + step) % len(self))
            scene = self.scenes[scene_pos]
            try:
                image1, depth1 = self._load(scene, i)
                image2, depth2 = self._load(scene, j)
            except (ImageError, DepthError) as e:
                self._warn_once(e.path, e.reason)
                continue
            item, corner1, corner2, consistent = self._make(scene, i, j, image1, depth1, image2, depth2, rng, gen)
            if chosen is None or consistent:
                chosen = item, PairInfo(scene.name, i, j, corner1, corner2, consistent)
            geometry_tries += 1
            if consistent or geometry_tries >= _GEOMETRY_TRIES:
                break
        if chosen is None:
            raise ValueError("no depth pair of this epoch is readable any more")
        chosen[0]["index"] = torch.tensor(index)
        return chosen

    def _consistent(self, z: np.ndarray, z2: np.ndarray) -> np.ndarray:
        if self.relative_tolerance:
            return np.abs(z - z2) <= self.depth_tolerance * z2
        return np.abs(z - z2) < self.depth_tolerance

    def _make(self, scene, i, j, image1, depth1, image2, depth2, rng, gen):
        c = self.crop_size
        K1, pose1, K2, pose2 = scene.intrinsics[i], scene.poses[i], scene.intrinsics[j], scene.poses[j]
        (h1, w1), (h2, w2) = depth1.shape, depth2.shape

        # crop centres: a random pixel of image 1 whose depth agrees with image 2's at its projection
        known = np.flatnonzero(depth1 > 0)
        consistent = False
        if len(known):
            pick = known[rng.integers(len(known), size=min(self.centre_trials, len(known)))]
            points = np.stack([pick % w1, pick // w1], -1).astype(np.float64)
            xy, z = project_depth(points, depth1.reshape(-1)[pick].astype(np.float64), K1, pose1, K2, pose2)
            z2, ok = _bilinear_depth(depth2, xy[:, 0], xy[:, 1])
            ok &= (z > 0) & self._consistent(z, z2)
            best = int(np.argmax(ok))
            consistent = bool(ok[best])
            centre1 = points[best]
            usable = consistent or (z[best] > 0 and np.isfinite(xy[best]).all())
            centre2 = xy[best] if usable else np.array([(w2 - 1) / 2, (h2 - 1) / 2])
        else:
            centre1, centre2 = np.array([(w1 - 1) / 2, (h1 - 1) / 2]), np.array([(w2 - 1) / 2, (h2 - 1) / 2])
        corner1 = clamp_corners(np.floor(centre1[None] - (c - 1) / 2 + 0.5), (w1, h1), c)[0].astype(int)
        corner2 = clamp_corners(np.floor(np.clip(centre2, -1e6, 1e6)[None] - (c - 1) / 2 + 0.5), (w2, h2), c)[0].astype(int)

        # dense flow of crop 1
        crop_depth1 = crop_with_padding(torch.from_numpy(depth1)[None], int(corner1[0]), int(corner1[1]), c)[0].numpy()
        crop_depth2 = crop_with_padding(torch.from_numpy(depth2)[None], int(corner2[0]), int(corner2[1]), c)[0].numpy()
        v, u = np.mgrid[0:c, 0:c].astype(np.float64)
        pixels = np.stack([u + corner1[0], v + corner1[1]], -1)
        z1 = crop_depth1.astype(np.float64)
        xy, z = project_depth(pixels, z1, K1, pose1, K2, pose2)
        xy = xy - corner2.astype(np.float64)
        has = (z1 > 0) & (z > 0) & np.isfinite(xy).all(-1)
        xy = np.where(has[..., None], xy, _INVALID)
        z2, known2 = _bilinear_depth(crop_depth2.astype(np.float64), xy[..., 0], xy[..., 1])
        mask = has & known2 & self._consistent(z, z2)
        mask &= (xy[..., 0] >= 0) & (xy[..., 1] >= 0) & (xy[..., 0] <= c - 1) & (xy[..., 1] <= c - 1)
        flow = torch.from_numpy(np.ascontiguousarray(np.clip(xy, _INVALID, -_INVALID).transpose(2, 0, 1), np.float32))
        crop1 = crop_with_padding(image1, int(corner1[0]), int(corner1[1]), c)
        crop2 = crop_with_padding(image2, int(corner2[0]), int(corner2[1]), c)
        item = {
            "image1": crop1.contiguous(),
            "image2": jitter_and_noise(crop2, self.photometric, rng, gen).contiguous(),
            "flow": flow,
            "mask": torch.from_numpy(mask),
            "homography": torch.full((3, 3), float("nan"), dtype=torch.float64),
        }
        return item, (int(corner1[0]), int(corner1[1])), (int(corner2[0]), int(corner2[1])), consistent
