"""The currency of delfi: `Features`, `Matches` and the one coordinate convention.

Coordinate convention (everywhere in delfi): x points right, y points down, and the centre of the
top-left pixel is (0, 0). Resizing an image by a factor ``s`` maps a coordinate ``x`` to
``(x + 0.5) * s - 0.5``; `rescale_keypoints` is the only place that formula lives. Other conventions
(TF's (y, x), COLMAP's +0.5, the official R2D2 ``x * W / w``) exist only in importers and exporters.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

COORDINATE_CONVENTION = "xy-pixel-centre-origin"
"""Name of delfi's convention, written into every file delfi saves."""

GEOMETRY_KINDS = ("homography", "fundamental", "affine", "essential")
"""Kinds of a verified model. Homography / affine: ``x1 ~ M x0`` in pixels; fundamental: ``x1^T F x0 = 0``
in pixels; essential: ``y1^T E y0 = 0`` for the normalised points ``y = K^-1 (x, y, 1)`` (each image's
intrinsics K in delfi's pixel convention), with the relative pose ``X1 = R X0 + t`` (camera 0 to camera 1,
``|t| = 1``) in ``Matches.meta["rotation"]`` / ``["translation"]``."""


def rescale_keypoints(keypoints: Tensor | np.ndarray, scale: Any) -> Tensor | np.ndarray:
    """Map keypoints from one image size to another: ``x -> (x + 0.5) * scale - 0.5``.

    Args:
        keypoints: (N, 2) array or tensor of (x, y) in the source image's pixels.
        scale: a scalar, a pair ``(sx, sy)`` or an (N, 2) array: target size / source size.

    Returns:
        (N, 2) keypoints in the target image's pixels, same type as the input.
    """
    if isinstance(keypoints, Tensor):
        if not keypoints.is_floating_point():  # integer pixel indices: a float scale must not be truncated
            keypoints = keypoints.float()
        s = torch.as_tensor(scale, dtype=keypoints.dtype, device=keypoints.device)
        return (keypoints + 0.5) * s - 0.5
    kp = np.asarray(keypoints)
    if not np.issubdtype(kp.dtype, np.floating):
        kp = kp.astype(np.float64)
    return (kp + 0.5) * np.asarray(scale, dtype=kp.dtype) - 0.5


def _to(value: Any, device: str | torch.device | None, numpy: bool) -> Any:
    if value is None:
        return None
    if numpy:
        return value.detach().cpu().numpy() if isinstance(value, Tensor) else np.asarray(value)
    tensor = torch.as_tensor(value)
    return tensor.to(device) if device is not None else tensor


@dataclass
class Features:
    """Local (and optionally global) features of ONE image.

    Attributes:
        keypoints: (N, 2) float32, (x, y) in ORIGINAL image pixels (delfi's convention).
        scores: (N,) float32 detection / attention score, higher is better.
        descriptors: (N, D) float32 (or float16 when stored so), L2-normalised rows.
        scales: (N,) float32 support size in original pixels, or None.
        global_descriptor: (G,) float32 L2-normalised global vector, or None.
        image_size: (width, height) of the original image.
        meta: free-form extras a model may attach (never needed by later stages).
    """

    keypoints: Tensor
    scores: Tensor
    descriptors: Tensor
    scales: Tensor | None = None
    global_descriptor: Tensor | None = None
    image_size: tuple[int, int] = (0, 0)
    meta: dict[str, Any] = field(default_factory=dict)

    _ARRAYS = ("keypoints", "scores", "descriptors", "scales", "global_descriptor")

    def __post_init__(self) -> None:
        self.image_size = (int(self.image_size[0]), int(self.image_size[1]))
        self.validate()

    def __len__(self) -> int:
        return int(self.keypoints.shape[0])

    def validate(self) -> None:
        """Raise ValueError if the shapes disagree with each other."""
        kp, sc, de = self.keypoints, self.scores, self.descriptors
        if kp.ndim != 2 or kp.shape[1] != 2:
            raise ValueError(f"keypoints must be (N, 2), got {tuple(kp.shape)}")
        n = kp.shape[0]
        if tuple(sc.shape) != (n,):
            raise ValueError(f"scores must be ({n},), got {tuple(sc.shape)}")
        if de.ndim != 2 or de.shape[0] != n:
            raise ValueError(f"descriptors must be ({n}, D), got {tuple(de.shape)}")
        if self.scales is not None and tuple(self.scales.shape) != (n,):
            raise ValueError(f"scales must be ({n},), got {tuple(self.scales.shape)}")
        if self.global_descriptor is not None and self.global_descriptor.ndim != 1:
            raise ValueError(f"global_descriptor must be (G,), got {tuple(self.global_descriptor.shape)}")
        if min(self.image_size) < 0:
            raise ValueError(f"image_size must be (width, height) >= 0, got {self.image_size}")

    @property
    def descriptor_dim(self) -> int:
        return int(self.descriptors.shape[1])

    def _map(self, fn) -> "Features":
        return replace(self, **{name: fn(getattr(self, name)) for name in self._ARRAYS})

    def to(self, device: str | torch.device) -> "Features":
        """The same features as tensors on ``device``."""
        return self._map(lambda v: _to(v, device, numpy=False))

    def numpy(self) -> dict[str, Any]:
        """A dict of numpy arrays (keys as the attributes; None entries left out) plus image_size."""
        out = {name: _to(getattr(self, name), None, numpy=True) for name in self._ARRAYS}
        out = {k: v for k, v in out.items() if v is not None}
        out["image_size"] = self.image_size
        return out

    @classmethod
    def from_numpy(cls, arrays: dict[str, Any], image_size: tuple[int, int] | None = None) -> "Features":
        """Build from a dict of arrays as written by `numpy` (missing optional keys become None)."""
        size = image_size if image_size is not None else tuple(np.asarray(arrays["image_size"]).tolist())
        kwargs = {name: _to(arrays.get(name), None, numpy=False) for name in cls._ARRAYS}
        return cls(image_size=size, **kwargs)

    def select(self, index: Tensor | np.ndarray | slice) -> "Features":
        """A subset of keypoints (boolean mask, integer indices or slice); global descriptor kept."""
        if isinstance(index, np.ndarray):
            index = torch.from_numpy(index)
        if isinstance(index, Tensor):
            index = index.to(self.keypoints.device)
        return replace(
            self,
            keypoints=self.keypoints[index],
            scores=self.scores[index],
            descriptors=self.descriptors[index],
            scales=None if self.scales is None else self.scales[index],
        )

    def top_k(self, k: int) -> "Features":
        """The ``k`` highest-scoring keypoints, best first (all of them if k <= 0 or k >= N)."""
        order = torch.argsort(self.scores, descending=True, stable=True)
        return self.select(order[:k] if 0 < k < len(self) else order)


@dataclass
class Matches:
    """Correspondences between the keypoints of two images.

    Attributes:
        indices: (K, 2) int64, rows ``(i0, i1)`` into the first and second keypoint sets.
        scores: (K,) float32 match score (e.g. descriptor similarity).
        inliers: (K,) bool after geometric verification, else None.
        model: (3, 3) float64 estimated geometry after verification, else None.
        kind: the model's kind, one of ``GEOMETRY_KINDS``, or None.
        meta: extras, e.g. ``{"status": "not enough matches", "required": 4}`` from verification.
    """

    indices: Tensor
    scores: Tensor
    inliers: Tensor | None = None
    model: Tensor | None = None
    kind: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def validate(self) -> None:
        if self.indices.ndim != 2 or self.indices.shape[1] != 2:
            raise ValueError(f"indices must be (K, 2), got {tuple(self.indices.shape)}")
        k = self.indices.shape[0]
        if tuple(self.scores.shape) != (k,):
            raise ValueError(f"scores must be ({k},), got {tuple(self.scores.shape)}")
        if self.inliers is not None and tuple(self.inliers.shape) != (k,):
            raise ValueError(f"inliers must be ({k},), got {tuple(self.inliers.shape)}")
        if self.model is not None and tuple(self.model.shape) != (3, 3):
            raise ValueError(f"model must be (3, 3), got {tuple(self.model.shape)}")
        if self.kind is not None and self.kind not in GEOMETRY_KINDS:
            raise ValueError(f"kind must be one of {GEOMETRY_KINDS}, got {self.kind!r}")

    @property
    def num_inliers(self) -> int:
        return int(self.inliers.sum()) if self.inliers is not None else 0

    _ARRAYS = ("indices", "scores", "inliers", "model")

    def to(self, device: str | torch.device) -> "Matches":
        return replace(self, **{name: _to(getattr(self, name), device, numpy=False) for name in self._ARRAYS})

    def numpy(self) -> dict[str, Any]:
        out = {name: _to(getattr(self, name), None, numpy=True) for name in self._ARRAYS}
        out = {k: v for k, v in out.items() if v is not None}
        if self.kind is not None:
            out["kind"] = self.kind
        return out

    def select(self, index: Tensor | np.ndarray) -> "Matches":
        """A subset of matches; the model is kept."""
        if isinstance(index, np.ndarray):
            index = torch.from_numpy(index)
        return replace(
            self,
            indices=self.indices[index],
            scores=self.scores[index],
            inliers=None if self.inliers is None else self.inliers[index],
        )


@dataclass
class Ranking:
    """Ranked database images for each query, before and (optionally) after reranking.

    Attributes:
        queries: the Q query names.
        database: the database names that ``indices`` refer to.
        indices: (Q, K) int64 into ``database``, best first; -1 pads rows shorter than K.
        scores: (Q, K) float64 ranking score (the global similarity, or the fused score after
            reranking); NaN where ``indices`` is -1.
        global_scores: (Q, K) float64 global similarity of each result (kept through reranking),
            or None.
        inliers: (Q, K) int64 inlier counts from spatial verification (-1 where not verified),
            or None before reranking.
    """

    queries: list[str]
    database: list[str]
    indices: np.ndarray
    scores: np.ndarray
    global_scores: np.ndarray | None = None
    inliers: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.queries = [str(q) for q in self.queries]
        self.database = [str(d) for d in self.database]
        indices = np.asarray(self.indices, dtype=np.int64)
        n = len(self.queries)
        if indices.ndim == 2 and indices.shape[0] == n:
            self.indices = indices
        elif indices.size == 0:
            self.indices = indices.reshape(n, 0)
        elif indices.ndim == 1 and n == 1:
            self.indices = indices.reshape(1, -1)
        else:
            raise ValueError(f"ranking indices must be (queries, K) = ({n}, K), got shape {indices.shape}")
        shape = self.indices.shape
        self.scores = self._matching("scores", self.scores, np.float64, shape)
        if self.global_scores is not None:
            self.global_scores = self._matching("global_scores", self.global_scores, np.float64, shape)
        if self.inliers is not None:
            self.inliers = self._matching("inliers", self.inliers, np.int64, shape)
        self.validate()

    @staticmethod
    def _matching(what: str, values: Any, dtype: Any, shape: tuple[int, int]) -> np.ndarray:
        """``values`` as an array of ``shape`` (the indices'), else a ValueError naming both shapes."""
        array = np.asarray(values, dtype=dtype)
        if array.size != shape[0] * shape[1] or (array.ndim == 2 and array.shape != shape):
            raise ValueError(f"ranking {what} must have the shape of the indices {shape}, got {array.shape}")
        return array.reshape(shape)

    def validate(self) -> None:
        if len(set(self.queries)) != len(self.queries):
            raise ValueError("query names must be unique")
        if len(set(self.database)) != len(self.database):
            raise ValueError("database names must be unique")
        if self.indices.size and (self.indices.min() < -1 or self.indices.max() >= len(self.database)):
            raise ValueError(f"indices must be in [-1, {len(self.database)}), got [{self.indices.min()}, "
                             f"{self.indices.max()}]")
        for q, row in enumerate(self.indices):
            row = row[row >= 0]
            if len(np.unique(row)) != len(row):
                raise ValueError(f"query {self.queries[q]!r} lists a database image twice")

    def __len__(self) -> int:
        return len(self.queries)

    @property
    def depth(self) -> int:
        """K, the number of columns."""
        return int(self.indices.shape[1])

    def results(self, query: int | str) -> list[tuple[str, float]]:
        """``(database name, score)`` of one query, best first, padding dropped."""
        q = self.queries.index(query) if isinstance(query, str) else int(query)
        return [(self.database[i], float(s)) for i, s in zip(self.indices[q], self.scores[q]) if i >= 0]

    def ranks(self, n_db: int | None = None) -> np.ndarray:
        """(n_db, Q) int64: column q lists database ids best first, as the revisited Oxford/Paris
        evaluation expects. Ids missing from a query's row follow in increasing id order (so a
        truncated ranking is completed deterministically; those positions count as misses)."""
        n_db = len(self.database) if n_db is None else n_db
        out = np.empty((n_db, len(self.queries)), dtype=np.int64)
        for q, row in enumerate(self.indices):
            row = row[row >= 0]
            seen = np.zeros(n_db, dtype=bool)
            seen[row] = True
            out[:, q] = np.concatenate([row, np.flatnonzero(~seen)])
        return out
