"""Reader for EVD, the Extreme View Dataset (Mishkin et al., BMVC 2015), in its usual layout::

    root/
      1/<name>.png   first image of each pair
      2/<name>.png   second image
      h/<name>.txt   3x3 homography mapping image-1 pixels to image-2 pixels (homogeneous)

Pair names are the stems of the images in ``1/``. Checked on the 15 real pairs: ``h/<name>.txt``
maps image 1 onto image 2 (warping image 1 with it overlays image 2: normalised cross-correlation
0.22..0.94 on the overlap, against -0.25..0.26 for the inverse), and it is accurate to about 1-2 px,
so the half-pixel difference between pixel-centre and pixel-corner coordinates cannot be told
apart (neither wins consistently); it is applied as given, in delfi's pixel-centre convention.
Many image-1 corners map far outside image 2: the views are extreme.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["IMAGE_SUFFIXES", "EVDError", "EVDMissingError", "EVDPair", "list_pairs", "load_homography", "load_pair"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".ppm", ".pgm", ".bmp", ".tif", ".tiff")


class EVDError(ValueError):
    """A malformed EVD file; the message starts with its path."""


class EVDMissingError(EVDError, FileNotFoundError):
    """A missing EVD file or folder; the message names it."""


@dataclass(frozen=True)
class EVDPair:
    """One EVD pair: the two image files, the homography file and the pair's name."""

    name: str
    image1: Path
    image2: Path
    homography_path: Path

    @property
    def homography(self) -> np.ndarray:
        """(3, 3) float64 mapping image-1 pixels to image-2 pixels."""
        return _read_homography(self.homography_path)


def _images(folder: Path) -> dict[str, Path]:
    return {
        p.stem: p
        for p in sorted(folder.iterdir())
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    }


def _check_root(root: str | os.PathLike) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise EVDMissingError(f"{root}: EVD root folder not found")
    for sub in ("1", "2", "h"):
        if not (root / sub).is_dir():
            raise EVDMissingError(f"{root / sub}: EVD folder not found (expected {root}/1, {root}/2 and {root}/h)")
    return root


def list_pairs(root: str | os.PathLike) -> list[str]:
    """Sorted pair names: the stems of the images in ``root/1``."""
    root = _check_root(root)
    names = sorted(_images(root / "1"))
    if not names:
        raise EVDMissingError(f"{root / '1'}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return names


def load_pair(root: str | os.PathLike, name: str) -> EVDPair:
    """The files of pair ``name``; each must exist.

    Raises:
        EVDMissingError: naming the missing image or homography file.
    """
    root = _check_root(root)
    found = []
    for sub in ("1", "2"):
        candidates = [root / sub / f"{name}{suffix}" for suffix in IMAGE_SUFFIXES]
        candidates += [root / sub / f"{name}{suffix.upper()}" for suffix in IMAGE_SUFFIXES]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            raise EVDMissingError(f"{root / sub / name}.png: EVD image {sub} of pair {name!r} not found")
        found.append(path)
    h = root / "h" / f"{name}.txt"
    if not h.is_file():
        raise EVDMissingError(f"{h}: EVD homography of pair {name!r} not found")
    return EVDPair(name=name, image1=found[0], image2=found[1], homography_path=h)


def load_homography(root: str | os.PathLike, name: str) -> np.ndarray:
    """``h/<name>.txt`` as a (3, 3) float64 matrix (image 1 -> image 2)."""
    path = Path(root) / "h" / f"{name}.txt"
    if not path.is_file():
        raise EVDMissingError(f"{path}: EVD homography of pair {name!r} not found")
    return _read_homography(path)


def _read_homography(path: Path) -> np.ndarray:
    from delfi.datasets.hpatches import read_matrix3x3

    return read_matrix3x3(path, EVDError)
