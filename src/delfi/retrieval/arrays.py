"""Descriptor matrices as the indexes take them."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["as_matrix"]


def as_matrix(x: Any, what: str, dim: int | None = None) -> np.ndarray:
    """``x`` (numpy array, torch tensor or nested lists) as a contiguous float32 (n, D) array.

    With ``dim``, D must equal it and empty input becomes (0, dim). Raises ValueError naming
    ``what`` for a wrong shape or non-finite values.
    """
    if hasattr(x, "detach"):  # a torch tensor, without importing torch
        x = x.detach().cpu().float().numpy()
    a = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    if a.size == 0 and dim is not None:
        return np.zeros((0, dim), dtype=np.float32)
    if a.ndim != 2 or (dim is not None and a.shape[1] != dim):
        raise ValueError(f"{what}: expected an (n, {dim if dim is not None else 'D'}) array, got shape {tuple(a.shape)}")
    if not np.isfinite(a).all():
        raise ValueError(f"{what}: NaN or infinite values")
    return a
