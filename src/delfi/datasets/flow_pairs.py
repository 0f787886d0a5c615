"""Real training pairs with a given dense flow (R2D2's optical-flow pairs), as the same item dict
as `delfi.datasets.homography_pairs.HomographyPairs` (``homography`` is all NaN).

Accepted flow files (one per pair, for image 1's full resolution ``H x W``):
    ``.npy``  float array (H, W, 2): for each pixel of image 1 its (x, y) in image 2 in pixels,
              pixel centres at integers; NaN / inf = no correspondence.
    ``.npz``  key ``flow`` as above, optional key ``mask`` (H, W) bool (False = invalid).
With ``relative=True`` the arrays hold displacements (x2 - x1, y2 - y1) instead.
(The official Aachen flow PNGs need converting to one of these first.)

Pairs are given as ``(image1, image2, flow)`` path triples or a text file with three
whitespace-separated paths per line (relative to the file's folder; ``#`` starts a comment).
Per item: a ``crop_size`` crop of image 1 chosen among ``crop_trials`` candidates by valid
fraction, image 2's crop centred on the median target of crop 1's valid pixels (+ jitter, clamped
inside image 2), image 2's noise / colour jitter as configured (default: jitter only, no noise,
as officially); no rescaling. ``mask`` = flow valid, inside image 1 and inside crop 2.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from delfi.datasets.homography_pairs import EpochPairs, PairConfig, clamp_corners, jitter_and_noise, window_offsets
from delfi.datasets.pair_geometry import crop_with_padding
from delfi.io.images import ImageError, read_image

__all__ = ["FlowPairs", "load_flow", "read_pair_list"]


def read_pair_list(path: str | os.PathLike) -> list[tuple[Path, Path, Path]]:
    """Triples (image1, image2, flow) from a text file, paths relative to its folder."""
    path = Path(path)
    triples = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 3:
            raise ValueError(f"{path}:{number}: expected 'image1 image2 flow', got {line!r}")
        triples.append(tuple(path.parent / p for p in parts))
    return triples


def load_flow(path: str | os.PathLike, relative: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(flow (H, W, 2) float32 absolute (x, y) in image 2, valid (H, W) bool); raises ValueError."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".npy":
            flow, mask = np.load(path, allow_pickle=False), None
        elif path.suffix.lower() == ".npz":
            with np.load(path, allow_pickle=False) as data:
                if "flow" not in data:
                    raise ValueError("no 'flow' array")
                flow, mask = data["flow"], data["mask"] if "mask" in data else None
        else:
            raise ValueError("unsupported flow file (use .npy or .npz)")
    except (OSError, EOFError) as e:
        raise ValueError(f"cannot read: {e}") from None
    flow = np.asarray(flow, np.float32)
    if flow.ndim != 3 or flow.shape[2] != 2:
        raise ValueError(f"flow must be (H, W, 2), got {flow.shape}")
    if relative:
        v, u = np.mgrid[0 : flow.shape[0], 0 : flow.shape[1]].astype(np.float32)
        flow = flow + np.stack([u, v], -1)
    valid = np.isfinite(flow).all(-1)
    if mask is not None:
        if mask.shape != flow.shape[:2]:
            raise ValueError(f"mask {mask.shape} does not match flow {flow.shape[:2]}")
        valid &= mask.astype(bool)
    return np.where(valid[..., None], flow, np.float32(-1e4)), valid


class FlowPairs(EpochPairs):
    """Real pairs with dense flow (see the module docstring).

    Attributes:
        skipped: [(path, reason)] of the pairs left out (unreadable image or flow, size mismatch).
    """

    def __init__(
        self,
        pairs: Sequence[tuple[str | os.PathLike, str | os.PathLike, str | os.PathLike]] | str | os.PathLike,
        config: PairConfig = PairConfig(noise=0.0),
        seed: int = 0,
        min_pairs: int = 1,
        relative: bool = False,
    ) -> None:
        triples = read_pair_list(pairs) if isinstance(pairs, (str, os.PathLike)) else [tuple(map(Path, t)) for t in pairs]
        self.config, self.seed, self.epoch, self.relative = config, seed, 0, relative
        self.pairs, self.skipped = [], []
        for image1, image2, flow in triples:
            try:
                read_image(image2)
                width, height = tuple(read_image(image1).shape[:0:-1])
                shape = load_flow(flow, relative)[0].shape[:2]
                if shape != (height, width):
                    raise ValueError(f"flow is {shape[1]}x{shape[0]} but image 1 is {width}x{height}")
                self.pairs.append((image1, image2, flow))
            except ImageError as e:
                self.skipped.append((e.path, e.reason))
            except ValueError as e:
                self.skipped.append((str(flow), str(e)))
        for path, reason in self.skipped:
            warnings.warn(f"skipping training pair ({path}: {reason})", stacklevel=2)
        if len(self.pairs) < min_pairs:
            raise ValueError(f"flow pairs need at least {min_pairs} usable pair(s); {len(self.pairs)} of {len(triples)} usable")

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng, gen = self.rng_for(index)
        path1, path2, flow_path = self.pairs[index]
        image1, image2 = read_image(path1), read_image(path2)
        flow, valid = load_flow(flow_path, self.relative)
        c, (h2, w2) = self.config.crop_size, image2.shape[-2:]
        corner1, corner2 = self._choose(flow, valid, (w2, h2), rng)
        crop_flow = crop_with_padding(torch.from_numpy(flow).permute(2, 0, 1), *corner1, c)
        crop_valid = crop_with_padding(torch.from_numpy(valid)[None].float(), *corner1, c)[0] > 0
        crop_flow -= torch.tensor(corner2, dtype=torch.float32).view(2, 1, 1)
        inside = (crop_flow >= 0).all(0) & (crop_flow <= c - 1).all(0)
        crop2 = crop_with_padding(image2, *corner2, c)
        return {
            "image1": crop_with_padding(image1, *corner1, c),
            "image2": jitter_and_noise(crop2, self.config, rng, gen).contiguous(),
            "flow": torch.where(crop_valid[None], crop_flow, torch.full_like(crop_flow, -1e4)),
            "mask": crop_valid & inside,
            "homography": torch.full((3, 3), float("nan"), dtype=torch.float64),
            "index": torch.tensor(index),
        }

    def _choose(self, flow: np.ndarray, valid: np.ndarray, size2, rng: np.random.Generator):
        c, trials = self.config.crop_size, self.config.crop_trials
        h1, w1 = valid.shape
        x1, y1 = window_offsets(w1, c, trials, rng), window_offsets(h1, c, trials, rng)
        grid = np.arange(4, c, 8)
        px = np.clip(x1[:, None, None] + grid[None, None, :], 0, w1 - 1) + 0 * grid[None, :, None]
        py = np.clip(y1[:, None, None] + grid[None, :, None], 0, h1 - 1) + 0 * grid[None, None, :]
        ok = valid[py, px] & (x1[:, None, None] + grid[None, None, :] < w1) & (y1[:, None, None] + grid[None, :, None] < h1)
        targets = np.where(ok[..., None], flow[py, px], np.nan).reshape(trials, -1, 2)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN candidates
            centre = np.nan_to_num(np.nanmedian(targets, axis=1), nan=0.0)
        shift = rng.uniform(-self.config.crop_offset, self.config.crop_offset, (trials, 2)) * c
        corner2 = clamp_corners(np.round(centre - (c - 1) / 2 + shift), size2, c)
        local = targets - corner2[:, None]
        fraction = (ok.reshape(trials, -1) & (local >= 0).all(-1) & (local <= c - 1).all(-1)).mean(1)
        best = int(np.argmax(fraction))
        return (int(x1[best]), int(y1[best])), (int(corner2[best, 0]), int(corner2[best, 1]))
