"""HPatches-sequences matching benchmark, D2-Net protocol (mean matching accuracy, MMA).

For every sequence and every pair (1, k), k = 2..6: match the two images' descriptors with plain
mutual nearest neighbours, project the image-1 keypoint of each match with the ground-truth
``H_1_k`` and measure the pixel distance to its partner in image k. Per pair, the precision at
threshold t is the fraction of matches within t px (0 for a pair without matches); these
precisions are summed per sequence type into ``i_err[t]`` (illumination) and ``v_err[t]``
(viewpoint). ``MMA@t = (i_err[t] + v_err[t]) / (n_i_pairs + n_v_pairs)``.

The "refined" variant (``refine="ransac"``, as reported by RomeoV/deep-local-features): the same
mutual-NN matches are first filtered by a RANSAC homography fitted to them (`refine_inliers`:
delfi's `delfi.match.verify.verify`, OpenCV USAC MAGSAC++ by default, ``refine_threshold`` px,
seeded, so deterministic), only its inliers are scored and the pair's match count is the inlier
count. A pair with fewer than 4 matches or a failed fit keeps no match and counts 0, as a pair
without matches does in the plain protocol. (The published notebook uses scikit-image's ``ransac``
with a 4 px threshold: same protocol, another estimator, so numbers agree closely, not exactly.)

Result caches use the D2-Net notebook format: ``np.save`` of the object array
``[i_err, v_err, [seq_type, n_feats, n_matches]]`` (ALIKE's caches insert two more dicts,
``i_err_homo`` and ``v_err_homo``, before the last item). `load_cache` reads them without
trusting them; see its docstring.
"""

from __future__ import annotations

import codecs
import math
import os
import pickle
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch

from delfi.datasets.hpatches import (
    PAIR_INDICES,
    list_sequences,
    load_homography,
    sequence_type,
)
from delfi.match.nn import mutual_nn
from delfi.types import Features

__all__ = [
    "HOMOGRAPHY_CONVENTIONS",
    "HPatchesResult",
    "evaluate_sequences",
    "load_cache",
    "load_result",
    "pair_errors",
    "pair_homography",
    "refine_inliers",
    "save_cache",
]

FeatureSource = Union[Callable[[str, int], Features], Mapping[tuple[str, int], Features]]
SUBSETS = ("overall", "i", "v")
HOMOGRAPHY_CONVENTIONS = ("raw", "centre")
"""How ``H_1_k`` is applied to delfi's pixel-centre keypoints: ``"raw"`` as given (the D2-Net notebook,
comparable with published caches) or ``"centre"`` converted from corner-origin coordinates with
`delfi.eval.homography.convert_homography`."""
REFINEMENTS = ("ransac",)
"""Match filters of the refined protocol (``refine=None`` is the plain D2-Net protocol)."""
REFINE_THRESHOLD = 4.0
"""Default inlier threshold (px) of the refined protocol (the published notebook's)."""
MAX_CACHE_BYTES = 64 * 1024 * 1024


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


@dataclass
class HPatchesResult:
    """Accumulated HPatches results.

    Attributes:
        i_err / v_err: threshold -> sum over illumination / viewpoint pairs of the per-pair precision.
        n_i_pairs / n_v_pairs: number of evaluated pairs of each type.
        n_feats: keypoints per image (6 per sequence, image 1 first).
        n_matches: mutual matches per pair (5 per sequence).
        seq_type: ``'i'`` or ``'v'`` per pair.
    """

    i_err: dict[int, float]
    v_err: dict[int, float]
    n_i_pairs: int = 0
    n_v_pairs: int = 0
    n_feats: list[int] = field(default_factory=list)
    n_matches: list[int] = field(default_factory=list)
    seq_type: list[str] = field(default_factory=list)

    @property
    def thresholds(self) -> list[int]:
        return sorted(self.i_err)

    @property
    def n_pairs(self) -> int:
        return self.n_i_pairs + self.n_v_pairs

    @classmethod
    def empty(cls, thresholds: Iterable[int]) -> "HPatchesResult":
        """A result with no pair yet, accumulating at ``thresholds``."""
        ts = list(thresholds)
        return cls(i_err={t: 0.0 for t in ts}, v_err={t: 0.0 for t in ts})

    def add_pair(self, kind: str, dist: np.ndarray) -> None:
        """Accumulate one pair of type ``kind`` (``'i'`` / ``'v'``) whose scored matches have
        reprojection errors ``dist`` (its match count is ``len(dist)``; no match: precision 0)."""
        self.n_matches.append(len(dist))
        self.seq_type.append(kind)
        err = self.i_err if kind == "i" else self.v_err
        for t in err:
            err[t] += float(np.mean(dist <= t)) if len(dist) else 0.0
        if kind == "i":
            self.n_i_pairs += 1
        else:
            self.n_v_pairs += 1

    def mma(self, t: int, subset: str = "overall") -> float:
        """Mean matching accuracy at ``t`` px over all pairs, or only ``'i'`` / ``'v'`` pairs (nan if none)."""
        if subset not in SUBSETS:
            raise ValueError(f"subset must be one of {SUBSETS}, got {subset!r}")
        if t not in self.i_err or t not in self.v_err:
            raise KeyError(f"threshold {t!r} was not evaluated; available: {self.thresholds}")
        num = {"overall": self.i_err[t] + self.v_err[t], "i": self.i_err[t], "v": self.v_err[t]}[subset]
        den = {"overall": self.n_pairs, "i": self.n_i_pairs, "v": self.n_v_pairs}[subset]
        return float(num) / den if den else float("nan")

    def mma_curve(self, subset: str = "overall") -> dict[int, float]:
        """``{t: mma(t, subset)}`` for every evaluated threshold."""
        return {t: self.mma(t, subset) for t in self.thresholds}

    def summary(self, max_threshold: int = 10) -> dict[str, Any]:
        """MMA@1..max_threshold (overall, i, v), mean features per image and matches per pair."""
        ts = [t for t in self.thresholds if t <= max_threshold]
        return {
            "mma": {t: self.mma(t) for t in ts},
            "mma_i": {t: self.mma(t, "i") for t in ts},
            "mma_v": {t: self.mma(t, "v") for t in ts},
            "n_feats": _mean(self.n_feats),
            "n_matches": _mean(self.n_matches),
            "n_pairs": self.n_pairs,
            "n_i_pairs": self.n_i_pairs,
            "n_v_pairs": self.n_v_pairs,
        }


def _np(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def pair_errors(kp0: Any, kp1: Any, matches: Any, H: Any) -> np.ndarray:
    """Reprojection error of each match under the homography ``H`` (image 0 -> image 1).

    Args:
        kp0: (N, 2) keypoints (x, y) of image 0; kp1: (M, 2) keypoints of image 1 (arrays or tensors).
        matches: (K, 2) integer rows ``(i0, i1)``.
        H: (3, 3) homography mapping image-0 pixels to image-1 pixels.

    Returns:
        (K,) float64 distances ``|| proj(H, kp0[i0]) - kp1[i1] ||``; inf where the projection is at infinity.
    """
    kp0, kp1, H = (_np(a).astype(np.float64) for a in (kp0, kp1, H))
    m = _np(matches).astype(np.int64).reshape(-1, 2)
    if H.shape != (3, 3):
        raise ValueError(f"H must be (3, 3), got {H.shape}")
    p0 = kp0.reshape(-1, 2)[m[:, 0]]
    p1 = kp1.reshape(-1, 2)[m[:, 1]]
    proj = np.concatenate([p0, np.ones((len(p0), 1))], axis=1) @ H.T
    with np.errstate(divide="ignore", invalid="ignore"):
        xy = proj[:, :2] / proj[:, 2:]
        dist = np.sqrt(np.sum((xy - p1) ** 2, axis=1))
    return np.where(np.isnan(dist), np.inf, dist)


def pair_homography(root: str | os.PathLike, seq: str, k: int, convention: str = "raw") -> np.ndarray:
    """``H_1_k`` of ``seq`` as applied under ``convention`` (see `HOMOGRAPHY_CONVENTIONS`)."""
    if convention not in HOMOGRAPHY_CONVENTIONS:
        raise ValueError(f"homography convention must be one of {HOMOGRAPHY_CONVENTIONS}, got {convention!r}")
    H = load_homography(root, seq, k)
    if convention == "centre":
        from delfi.eval.homography import convert_homography

        H = convert_homography(H, "corner", "centre")
    return H


PairCallback = Callable[[str, int, Features, Features, Any, np.ndarray], None]


def refine_inliers(
    features1: Features,
    features_k: Features,
    matches: Any,
    *,
    threshold: float = REFINE_THRESHOLD,
    seed: int = 0,
    backend: str = "opencv",
) -> np.ndarray:
    """Which of ``matches`` the refined protocol keeps: the inliers of a RANSAC homography.

    The homography is fitted to the matches by `delfi.match.verify.verify` (``geometry="homography"``,
    ``threshold`` px, ``seed``, ``backend``; deterministic for a seed). Every inlier of the model found
    is kept, whatever verify's status (the published protocol has no minimum); fewer than 4 matches
    or a failed fit keep none.

    Returns:
        (K,) bool numpy mask over ``matches.indices``.
    """
    from delfi.match.verify import verify

    verified = verify(
        features1, features_k, matches.to("cpu"), geometry="homography", threshold=threshold, seed=seed,
        backend=backend, min_inliers=0,
    )  # fmt: skip
    return verified.inliers.cpu().numpy().astype(bool, copy=False)


def evaluate_sequences(
    features_by_image: FeatureSource,
    root: str | os.PathLike,
    sequences: Iterable[str] | None = None,
    thresholds: Iterable[int] = range(1, 16),
    *,
    device: str | torch.device | None = None,
    chunk_size: int = 4096,
    homography_convention: str = "raw",
    on_pair: PairCallback | None = None,
    refine: str | None = None,
    refine_threshold: float = REFINE_THRESHOLD,
    seed: int = 0,
    backend: str = "opencv",
) -> HPatchesResult:
    """Run the D2-Net HPatches protocol, or its refined variant (module docstring).

    Args:
        features_by_image: ``f(seq, k) -> Features`` or a mapping ``{(seq, k): Features}``, k = 1..6;
            keypoints in the original image's pixels (delfi's convention).
        root: HPatches-sequences folder (homographies are read from ``root/seq/H_1_k``).
        sequences: names to evaluate, in order; default: every ``i_*`` / ``v_*`` folder in root.
        thresholds: pixel thresholds (the published caches hold 1..15).
        device: where to match (default: the device of image 1's descriptors).
        chunk_size: passed to `mutual_nn`.
        homography_convention: ``"raw"`` (default, the D2-Net notebook) applies ``H_1_k`` as given;
            ``"centre"`` converts it from corner-origin to pixel-centre coordinates first.
        on_pair: called after each pair as ``on_pair(seq, k, features_1, features_k, matches, H)``
            with the mutual-NN `Matches` (unfiltered, also when refining) and the homography used.
        refine: None (default): score every mutual-NN match; ``"ransac"``: score only the inliers of
            a RANSAC homography (`refine_inliers`), the refined protocol.
        refine_threshold, seed, backend: the RANSAC's inlier threshold (px), seed and `verify` backend
            (only with ``refine``).
    """
    get = features_by_image.__getitem__ if isinstance(features_by_image, Mapping) else None
    fetch = (lambda s, k: get((s, k))) if get is not None else features_by_image
    if homography_convention not in HOMOGRAPHY_CONVENTIONS:
        raise ValueError(f"homography_convention must be one of {HOMOGRAPHY_CONVENTIONS}, got {homography_convention!r}")
    if refine is not None and refine not in REFINEMENTS:
        raise ValueError(f"refine must be None or one of {REFINEMENTS}, got {refine!r}")
    seqs = list_sequences(root) if sequences is None else list(sequences)
    result = HPatchesResult.empty(thresholds)
    for seq in seqs:
        kind = sequence_type(seq)
        f1 = fetch(seq, 1)
        result.n_feats.append(len(f1))
        dev = torch.device(device) if device is not None else f1.descriptors.device
        d1 = f1.descriptors.to(dev)
        for k in PAIR_INDICES:
            fk = fetch(seq, k)
            result.n_feats.append(len(fk))
            found = mutual_nn(d1, fk.descriptors.to(dev), chunk_size=chunk_size)
            H = pair_homography(root, seq, k, homography_convention)
            dist = pair_errors(f1.keypoints, fk.keypoints, found.indices, H)
            if refine is not None:
                dist = dist[refine_inliers(f1, fk, found, threshold=refine_threshold, seed=seed, backend=backend)]
            if on_pair is not None:
                on_pair(seq, k, f1, fk, found, H)
            result.add_pair(kind, dist)
    return result


# ----------------------------------------------------------------------------- cache files


def save_cache(result: HPatchesResult, path: str | os.PathLike) -> Path:
    """Write ``result`` in the D2-Net notebook cache format at exactly ``path``.

    Returns the path. The file is ``np.save`` of a (3,) object array
    ``[i_err, v_err, [seq_type '<U1' (pairs,), n_feats int64 (images,), n_matches int64 (pairs,)]]``.
    """
    path = Path(path)
    arr = np.empty(3, dtype=object)
    arr[0] = {t: float(v) for t, v in result.i_err.items()}
    arr[1] = {t: float(v) for t, v in result.v_err.items()}
    arr[2] = [
        np.asarray(result.seq_type, dtype="<U1"),
        np.asarray(result.n_feats, dtype=np.int64),
        np.asarray(result.n_matches, dtype=np.int64),
    ]
    with open(path, "wb") as fh:
        np.save(fh, arr, allow_pickle=True)
    return path


def _multiarray() -> Any:
    try:
        from numpy._core import multiarray  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray
    return multiarray


class _CacheUnpickler(pickle.Unpickler):
    """Unpickler that can only rebuild numpy arrays / scalars / dtypes (and bytes via _codecs)."""

    _ALLOWED = {
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar"),
    }  # fmt: skip

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"forbidden global {module}.{name} in an HPatches cache")
        if module == "_codecs":
            return codecs.encode
        return getattr(np if module == "numpy" else _multiarray(), name)


def _bad(path: Path, why: str) -> ValueError:
    return ValueError(f"{path}: not an HPatches (D2-Net format) cache: {why}")


def _check_err(path: Path, d: Any, what: str) -> dict[int, float]:
    if not isinstance(d, dict) or not d:
        raise _bad(path, f"{what} is not a non-empty dict")
    out = {}
    for t, v in d.items():
        if not isinstance(t, (int, np.integer)) or isinstance(t, bool):
            raise _bad(path, f"{what} has a non-integer threshold {t!r}")
        if not isinstance(v, (int, float, np.integer, np.floating)) or not math.isfinite(float(v)) or v < 0:
            raise _bad(path, f"{what}[{t}] is not a finite non-negative number: {v!r}")
        out[int(t)] = float(v)
    return out


def _check_list(path: Path, x: Any, what: str, kind: str) -> list:
    if isinstance(x, np.ndarray):
        if x.ndim != 1 or (x.size and x.dtype.kind not in kind):
            raise _bad(path, f"{what} has dtype {x.dtype} / shape {x.shape}")
        return x.tolist()
    if not isinstance(x, (list, tuple)):
        raise _bad(path, f"{what} is a {type(x).__name__}, not a list")
    ok = str if kind == "U" else (int, np.integer)
    if not all(isinstance(v, ok) and not isinstance(v, bool) for v in x):
        raise _bad(path, f"{what} has entries of the wrong type")
    return [str(v) if kind == "U" else int(v) for v in x]


def _read_cache(path: str | os.PathLike) -> tuple[HPatchesResult, list[dict[int, float]]]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: HPatches cache not found")
    if path.stat().st_size > MAX_CACHE_BYTES:
        raise _bad(path, f"larger than {MAX_CACHE_BYTES} bytes")
    fmt = np.lib.format
    with open(path, "rb") as fh:
        try:
            version = fmt.read_magic(fh)
            header = fmt.read_array_header_1_0(fh) if version == (1, 0) else fmt.read_array_header_2_0(fh)
        except ValueError as error:
            raise _bad(path, f"bad .npy header ({error})") from None
        shape, _, dtype = header
        if dtype != np.dtype(object) or shape not in ((3,), (5,)):
            raise _bad(path, f"expected a (3,) or (5,) object array, got {shape} {dtype}")
        try:
            arr = _CacheUnpickler(fh, encoding="latin1").load()
        except Exception as error:  # noqa: BLE001 - anything here means an unreadable cache
            raise _bad(path, f"payload rejected ({error})") from None
    if not isinstance(arr, np.ndarray) or arr.dtype != object or arr.shape != shape:
        raise _bad(path, "payload is not the announced object array")
    errs = [_check_err(path, d, f"item {i}") for i, d in enumerate(arr[:-1])]
    last = arr[-1]
    if not isinstance(last, (list, tuple, np.ndarray)) or len(last) != 3:
        raise _bad(path, "last item is not [seq_type, n_feats, n_matches]")
    seq_type = _check_list(path, last[0], "seq_type", "U")
    n_feats = _check_list(path, last[1], "n_feats", "iu")
    n_matches = _check_list(path, last[2], "n_matches", "iu")
    if set(seq_type) - {"i", "v"} or len(seq_type) != len(n_matches):
        raise _bad(path, "seq_type must be 'i'/'v' per pair, as long as n_matches")
    if any(set(e) != set(errs[0]) for e in errs):
        raise _bad(path, "threshold sets differ between items")
    result = HPatchesResult(
        i_err=errs[0], v_err=errs[1], n_i_pairs=seq_type.count("i"), n_v_pairs=seq_type.count("v"),
        n_feats=n_feats, n_matches=n_matches, seq_type=seq_type,
    )  # fmt: skip
    return result, errs[2:]


def load_result(path: str | os.PathLike) -> HPatchesResult:
    """An `HPatchesResult` from a D2-Net format cache (validated as in `load_cache`)."""
    return _read_cache(path)[0]


def load_cache(path: str | os.PathLike) -> dict[str, Any]:
    """Read a published D2-Net format HPatches cache and compute its MMA numbers.

    Why not ``np.load(path, allow_pickle=True)``: the format is a pickled object array, and
    unpickling can run arbitrary code. So the ``.npy`` header is checked first ((3,) or (5,)
    object array), the payload is unpickled by an unpickler that can resolve only numpy's
    array / scalar / dtype constructors (everything else is refused before it is imported), and the
    structure is validated: dicts of integer threshold -> non-negative finite number, then
    ``[seq_type ('i'/'v' per pair), n_feats (int per image), n_matches (int per pair)]``.
    The pair counts per type are inferred from ``seq_type``.

    Returns:
        ``mma`` / ``mma_i`` / ``mma_v`` (dict t -> MMA), ``n_feats`` (mean per image), ``n_matches``
        (mean per pair), ``n_pairs``, ``n_i_pairs``, ``n_v_pairs``, the raw ``i_err``, ``v_err``, ``seq_type``,
        ``feats_per_image``, ``matches_per_pair``, and ``result`` (an `HPatchesResult`). ALIKE-style
        5-item caches add ``i_err_homo``, ``v_err_homo`` (summed per-pair homography correctness) and
        ``homography_accuracy`` / ``_i`` / ``_v`` (dict t -> fraction of pairs).
    """
    result, extra = _read_cache(path)
    out: dict[str, Any] = result.summary(max_threshold=max(result.thresholds))
    out.update(i_err=result.i_err, v_err=result.v_err, seq_type=result.seq_type, result=result)
    out.update(feats_per_image=result.n_feats, matches_per_pair=result.n_matches)
    if extra:
        homo = HPatchesResult(extra[0], extra[1], result.n_i_pairs, result.n_v_pairs)
        out.update(i_err_homo=extra[0], v_err_homo=extra[1], homography_accuracy=homo.mma_curve("overall"))
        out.update(homography_accuracy_i=homo.mma_curve("i"), homography_accuracy_v=homo.mma_curve("v"))
    return out
