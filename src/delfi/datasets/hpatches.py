"""Reader for the HPatches-sequences folder layout.

::

    root/
      i_ajuntament/ 1.ppm ... 6.ppm  H_1_2 ... H_1_6
      v_wormhole/   1.ppm ... 6.ppm  H_1_2 ... H_1_6
      ...

``i_*`` sequences change illumination, ``v_*`` sequences change viewpoint. ``H_1_k`` is a 3x3 text
matrix mapping pixel coordinates of image 1 to image k (homogeneous, ``x_k ~ H @ [x_1, y_1, 1]``).
The D2-Net protocol uses a 108-sequence subset given as an image list with lines such as
``hpatches_sequences/hpatches-sequences-release/v_vitro/5.ppm`` or ``i_ajuntament/1.ppm``; the
sequence is the folder that holds the image.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

import numpy as np

__all__ = [
    "IMAGE_INDICES",
    "PAIR_INDICES",
    "HPatchesError",
    "HPatchesMissingError",
    "image_path",
    "list_sequences",
    "load_homography",
    "read_image_list",
    "read_matrix3x3",
    "sequence_type",
]

IMAGE_INDICES: tuple[int, ...] = (1, 2, 3, 4, 5, 6)
"""Image numbers in every sequence; image 1 is the reference."""

PAIR_INDICES: tuple[int, ...] = (2, 3, 4, 5, 6)
"""The ``k`` of the evaluated pairs ``(1, k)``."""


class HPatchesError(ValueError):
    """A malformed HPatches file or list; the message starts with the file's path."""


class HPatchesMissingError(HPatchesError, FileNotFoundError):
    """A missing HPatches file or folder (also a FileNotFoundError); the message names it."""


def sequence_type(seq: str) -> str:
    """``'i'`` (illumination) or ``'v'`` (viewpoint) from a sequence name such as ``v_wormhole``."""
    name = PurePosixPath(str(seq).replace("\\", "/")).name
    if len(name) < 2 or name[1] != "_" or name[0] not in "iv":
        raise ValueError(f"not an HPatches sequence name (i_* or v_*): {seq!r}")
    return name[0]


def _is_sequence_name(name: str) -> bool:
    try:
        sequence_type(name)
    except ValueError:
        return False
    return True


def read_image_list(image_list: str | os.PathLike) -> list[str]:
    """Sequence names named by a D2-Net style image list, in first-seen order, without repeats.

    Args:
        image_list: text file, one image path per line (``.../<seq>/<k>.ppm``); blank lines and
            lines starting with ``#`` are ignored.
    """
    path = Path(image_list)
    if not path.is_file():
        raise HPatchesMissingError(f"{path}: image list not found")
    names: dict[str, None] = {}
    for lineno, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parent = PurePosixPath(line.replace("\\", "/")).parent.name
        if not _is_sequence_name(parent):
            raise HPatchesError(f"{path}:{lineno}: expected '<i_|v_sequence>/<k>.ppm', got {line!r}")
        names.setdefault(parent, None)
    return list(names)


def list_sequences(
    root: str | os.PathLike, image_list: str | os.PathLike | None = None, *, strict: bool = False
) -> list[str]:
    """Sorted names of the ``i_*`` / ``v_*`` sequence folders under ``root``.

    Args:
        root: the HPatches-sequences folder.
        image_list: optional D2-Net style list; only sequences it names are returned.
        strict: raise `HPatchesMissingError` when the list names sequences absent from ``root``
            (otherwise they are silently left out).

    Returns:
        Sequence names, sorted (the D2-Net notebook's order).
    """
    root = Path(root)
    if not root.is_dir():
        raise HPatchesMissingError(f"{root}: HPatches root folder not found")
    present = sorted(p.name for p in root.iterdir() if p.is_dir() and _is_sequence_name(p.name))
    if image_list is None:
        return present
    wanted = read_image_list(image_list)
    if strict:
        missing = sorted(set(wanted) - set(present))
        if missing:
            shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise HPatchesMissingError(f"{root}: {len(missing)} sequence(s) from {image_list} missing: {shown}")
    keep = set(wanted)
    return [name for name in present if name in keep]


def _check_index(k: int, allowed: tuple[int, ...], what: str) -> int:
    if int(k) != k or int(k) not in allowed:
        raise ValueError(f"{what} must be one of {allowed}, got {k!r}")
    return int(k)


def image_path(root: str | os.PathLike, seq: str, k: int, *, must_exist: bool = True) -> Path:
    """Path of image ``k`` (1..6) of sequence ``seq``: ``root/seq/k.ppm``.

    Raises:
        HPatchesMissingError: when ``must_exist`` and the file is not there.
    """
    path = Path(root) / seq / f"{_check_index(k, IMAGE_INDICES, 'image index')}.ppm"
    if must_exist and not path.is_file():
        raise HPatchesMissingError(f"{path}: HPatches image not found")
    return path


def load_homography(root: str | os.PathLike, seq: str, k: int) -> np.ndarray:
    """The ground-truth homography from image 1 to image ``k`` (2..6) of ``seq``.

    Returns:
        (3, 3) float64 matrix mapping image-1 pixels to image-k pixels (homogeneous).

    Raises:
        HPatchesMissingError: the file is missing.
        HPatchesError: the file does not hold 9 finite numbers (3 rows of 3),
            or the matrix is singular.
    """
    path = Path(root) / seq / f"H_1_{_check_index(k, PAIR_INDICES, 'pair index')}"
    if not path.is_file():
        raise HPatchesMissingError(f"{path}: homography file not found")
    return read_matrix3x3(path)


def read_matrix3x3(path: Path, error: type[Exception] = HPatchesError) -> np.ndarray:
    """A text file of 3 lines of 3 numbers (spaces or commas) as a finite, non-singular (3, 3)
    float64 matrix; ``error`` (naming the file) otherwise. Shared by the HPatches and EVD readers."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise error(f"{path}: not a text file (expected 3 lines of 3 numbers)") from None
    except OSError as exc:
        raise error(f"{path}: cannot read it ({exc.strerror or exc})") from None
    rows = [line.replace(",", " ").split() for line in text.splitlines() if line.strip()]
    if len(rows) != 3 or any(len(r) != 3 for r in rows):
        raise error(f"{path}: expected a 3x3 matrix (3 lines of 3 numbers), got row lengths {[len(r) for r in rows]}")
    try:
        H = np.asarray([[float(v) for v in row] for row in rows], dtype=np.float64)
    except ValueError as exc:
        raise error(f"{path}: not a numeric matrix ({exc})") from None
    if not np.isfinite(H).all():
        raise error(f"{path}: matrix has non-finite entries")
    scale = float(np.abs(H).max())
    if scale == 0.0 or abs(np.linalg.det(H / scale)) <= 1e-12:
        raise error(f"{path}: matrix is singular")
    return H
