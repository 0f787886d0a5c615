"""Reading and writing: images, feature and match stores, pairs files, official npz files."""

from __future__ import annotations

from importlib import import_module
from typing import Any

_LAZY = {
    "FeatureStore": "delfi.io.features",
    "StoreMismatchError": "delfi.io.features",
    "StoreError": "delfi.io.features",
    "StoreBusyError": "delfi.io.features",
    "EntryError": "delfi.io.features",
    "name_to_path": "delfi.io.images",
    "read_image": "delfi.io.images",
    "collect_images": "delfi.io.images",
    "ImageError": "delfi.io.images",
    "ImageEntry": "delfi.io.images",
    "MatchStore": "delfi.io.matches",
    "read_pairs": "delfi.io.pairs",
    "write_pairs": "delfi.io.pairs",
    "pairs_exhaustive": "delfi.io.pairs",
    "pairs_from_ranking": "delfi.io.pairs",
    "read_r2d2_npz": "delfi.io.npz",
    "write_r2d2_npz": "delfi.io.npz",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'delfi.io' has no attribute {name!r}")
    return getattr(import_module(_LAZY[name]), name)
