"""Visual place recognition datasets (sf-xs / CosPlace naming).

Images are named ``@utm_east@utm_north@...@.jpg``: splitting the file stem on
``'@'`` gives ``['', east, north, ...]``. Layout::

    root/<split>/database/*.jpg
    root/<split>/queries/*.jpg
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["parse_utm", "list_split", "utm_array"]


def parse_utm(name: str | Path) -> tuple[float, float]:
    """Return ``(east, north)`` UTM coordinates parsed from an sf-xs style file name."""
    stem = Path(name).stem
    fields = stem.split("@")
    if len(fields) < 3:
        raise ValueError(
            f"malformed VPR file name {str(name)!r}: expected '@utm_east@utm_north@...@.jpg'"
        )
    try:
        east, north = float(fields[1]), float(fields[2])
    except ValueError:
        raise ValueError(
            f"malformed VPR file name {str(name)!r}: UTM fields {fields[1]!r}, {fields[2]!r} "
            "are not numbers"
        ) from None
    if not (np.isfinite(east) and np.isfinite(north)):
        raise ValueError(f"malformed VPR file name {str(name)!r}: non-finite UTM coordinates")
    return east, north


def list_split(root: str | Path, split: str) -> tuple[list[Path], list[Path]]:
    """Return sorted ``(database paths, query paths)`` of ``root/<split>/{database,queries}/*.jpg``."""
    base = Path(root) / split
    out = []
    for sub in ("database", "queries"):
        folder = base / sub
        if not folder.is_dir():
            raise FileNotFoundError(f"VPR folder not found: {folder}")
        out.append(sorted(folder.glob("*.jpg")))
    return out[0], out[1]


def utm_array(paths) -> np.ndarray:
    """Return an ``(N, 2)`` float64 array of ``(east, north)`` for each path."""
    arr = np.array([parse_utm(p) for p in paths], dtype=np.float64)
    return arr.reshape(-1, 2)
