"""Matching many pairs: descriptors from a feature store, mutual NN (+ ratio / distance), optional
geometric verification, results into a resumable, crash-safe match store."""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional, Sequence

import torch

from delfi.match.verify import MIN_INLIERS
from delfi.types import Features, Matches


@dataclass
class MatchingConfig:
    """How two feature sets are matched and verified (any feature type)."""

    mutual: bool = True
    ratio: Optional[float] = None  # Lowe ratio test on descriptor distances
    max_distance: Optional[float] = None  # keep matches with L2 distance <= this
    geometry: Optional[str] = "homography"  # homography | fundamental | affine | essential | None (no verification)
    threshold: float = 3.0  # RANSAC residual threshold, pixels
    confidence: float = 0.9999
    max_iters: int = 10000
    seed: int = 0
    backend: str = "opencv"  # opencv | pydegensac | poselib
    min_inliers: int = MIN_INLIERS  # fewest inliers of a verified ("ok") pair, see verification_status

    def as_dict(self) -> dict:
        return asdict(self)


def _check_one(features: Features) -> None:
    """Raise ValueError unless keypoints (N, 2), scores (N,), descriptors (N, D) agree and are finite."""
    features.validate()
    for what in ("keypoints", "descriptors"):
        value = getattr(features, what)
        if value.numel() and not bool(torch.isfinite(value).all()):
            raise ValueError(f"{what} hold non-finite values (NaN or inf)")


def check_features(features0: Features, features1: Features) -> None:
    """Raise ValueError unless two feature sets can be matched: each one's shapes agree
    (keypoints (N, 2), scores (N,), descriptors (N, D)), values are finite, and both have the same D."""
    for side, features in ((0, features0), (1, features1)):
        try:
            _check_one(features)
        except ValueError as exc:
            raise ValueError(f"features{side}: {exc}") from None
    d0, d1 = features0.descriptor_dim, features1.descriptor_dim
    if d0 != d1:
        raise ValueError(f"descriptor dimensions differ: {d0} vs {d1} (features of different extractors?)")


def match_features(features0: Features, features1: Features, config: MatchingConfig | None = None,
                   intrinsics: tuple[Any, Any] | None = None) -> Matches:  # fmt: skip
    """Putative matches by nearest neighbours, then (optionally) geometric verification.

    Empty feature sets give 0 matches (and, with a geometry, ``status = "not enough matches"``).
    ``intrinsics``: ``(K0, K1)`` (`delfi.io.cameras.Camera` or (3, 3) delfi-convention matrices) for
    the essential geometry; None there means COLMAP's default guess from each image's size
    (`delfi.io.cameras.default_camera`: focal 1.2 max(w, h), centred).

    Returns:
        `Matches` with indices (K, 2) into the two keypoint sets; with a geometry, also inliers
        (K,), the model (3, 3) and ``meta["status"]`` (`delfi.match.verify.verification_status`:
        only "ok" is a verified pair).

    Raises:
        ValueError: features whose shapes disagree, non-finite values, different descriptor
            dimensions (see `check_features`), or bad options.
    """
    from delfi.match.nn import mutual_nn
    from delfi.match.verify import verify

    config = config or MatchingConfig()
    check_features(features0, features1)
    matches = mutual_nn(
        features0.descriptors, features1.descriptors, ratio=config.ratio, max_distance=config.max_distance, mutual=config.mutual
    )
    if config.geometry is None:
        return matches
    if config.geometry == "essential" and intrinsics is None:
        intrinsics = (default_intrinsics(features0), default_intrinsics(features1))
    return verify(
        features0, features1, matches, config.geometry, threshold=config.threshold, confidence=config.confidence,
        max_iters=config.max_iters, seed=config.seed, backend=config.backend, min_inliers=config.min_inliers,
        intrinsics=intrinsics if config.geometry == "essential" else None,
    )  # fmt: skip


def default_intrinsics(features: Features):
    """COLMAP's default camera of an image from its recorded size (ValueError without one)."""
    from delfi.io.cameras import default_camera

    width, height = features.image_size
    if min(width, height) <= 0:
        raise ValueError("the essential geometry needs intrinsics, and these features record no image size")
    return default_camera(width, height)


def check_config(config: MatchingConfig) -> None:
    """Raise ValueError (bad option) or `MissingBackendError` before any pair is matched."""
    from delfi.match.verify import GEOMETRIES, _check_options, _import_backend

    if config.ratio is not None and not 0 < config.ratio <= 1:
        raise ValueError(f"ratio must be in (0, 1], got {config.ratio}")
    if config.max_distance is not None and not config.max_distance >= 0:
        raise ValueError(f"max_distance must be >= 0, got {config.max_distance}")
    if int(config.min_inliers) < 0:
        raise ValueError(f"min_inliers must be >= 0, got {config.min_inliers}")
    if config.geometry is not None:
        if config.geometry not in GEOMETRIES:
            raise ValueError(f"geometry must be one of {GEOMETRIES} or None, got {config.geometry!r}")
        _check_options(config.geometry, config.backend, config.threshold, config.confidence, config.max_iters,
                       config.seed)  # fmt: skip
        _import_backend(config.backend)


@dataclass
class MatchReport:
    """What a matching run did.

    ``failures`` holds one ``(name0, name1, reason)`` per failed pair; the names are the pairs'
    own strings and reasons are shared between pairs that fail the same way, so a run of 200,000
    failing pairs costs one small tuple each.
    """

    total: int = 0
    matched: int = 0
    skipped: int = 0  # already in the match store
    verified: int = 0  # matched pairs whose status is "ok"
    failures: list[tuple[str, str, str]] = field(default_factory=list)  # (name0, name1, reason)
    matches_per_pair: list[int] = field(default_factory=list)
    inliers_per_pair: list[int] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)  # verification status -> matched pairs
    seconds: float = 0.0


def _reason(exc: BaseException) -> str:
    """An exception's own message (KeyError's without the repr quotes)."""
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    return text or type(exc).__name__


def _entry_reason(store, name: str, exc: BaseException) -> str:
    """Why the entry ``name`` of ``store`` cannot be used, naming the store and the entry."""
    text = _reason(exc)
    if isinstance(exc, KeyError) and text in getattr(store, "DATASETS", ()):
        text = f"the {text!r} dataset is missing"  # a bare KeyError of h5py / a dict lookup
    if str(store.path) in text and name in text:
        return text
    return f"entry {name!r} of feature store {store.path}: {text}"


class _Side:
    """One feature store as the source of one side of the pairs: names once, bad entries once."""

    def __init__(self, store, side: int, other: "_Side | None" = None) -> None:
        self.store = store
        self.names = other.names if other is not None else set(store.names())
        self.missing = f"image {side} not in feature store {store.path}"  # one string for every missing name
        self.bad: dict[str, str] = other.bad if other is not None else {}  # name -> reason: read a bad entry once

    def get(self, name: str) -> Features:
        """The features of ``name``; ValueError (naming store and entry) for a bad entry."""
        if name in self.bad:
            raise ValueError(self.bad[name])
        try:
            features = self.store.get(name)
            _check_one(features)
        except (KeyError, ValueError, TypeError, AttributeError, OSError) as exc:
            # KeyError: a missing dataset (stores before entry errors), ValueError: a bad entry,
            # TypeError / AttributeError: arrays of the wrong kind, OSError: an unreadable group
            self.bad[name] = _entry_reason(self.store, name, exc)
            raise ValueError(self.bad[name]) from None
        return features


def match_pairs(
    features: str | os.PathLike,
    pairs: Sequence[tuple[str, str]],
    out: str | os.PathLike,
    config: MatchingConfig | None = None,
    *,
    features_db: str | os.PathLike | None = None,
    overwrite: bool = False,
    on_pair: Callable[[tuple[str, str], str], None] | None = None,
    camera_of: Callable[[str, Features], Any] | None = None,
) -> MatchReport:
    """Match every pair of ``pairs`` (names in the feature store(s)) into the match store ``out``.

    Pairs already in ``out`` are skipped. A pair fails, and the run goes on, when a name is not in
    its store (checked against the stores' name sets once, before matching) or an entry is bad
    (missing datasets, shapes that disagree, non-finite values, descriptor dimensions that differ
    between the two sides): ``report.failures`` names the pair and the reason (store and entry).
    ``features_db`` holds the second image of each pair when it differs from ``features``.
    ``on_pair`` is called after every pair with "done", "skipped" or "failed".
    ``camera_of(name, features)`` gives an image's intrinsics for the essential geometry (a
    `delfi.io.cameras.Camera`; KeyError / ValueError fail the pair); None: COLMAP's default guess
    from the image size (`default_intrinsics`).

    Raises:
        ValueError / MissingBackendError: bad options (before anything is written);
        FileNotFoundError / ValueError: a feature store that does not exist or is not one.
    """
    from delfi.io.features import FeatureStore
    from delfi.io.matches import MatchStore

    config = config or MatchingConfig()
    check_config(config)
    report = MatchReport(total=len(pairs))
    started = time.perf_counter()
    first = FeatureStore(features)
    second = FeatureStore(features_db) if features_db is not None else first
    attrs = {
        "model": str(first.attrs.get("model", "unknown")),
        "weights_sha256": str(first.attrs.get("weights_sha256", "none")),
        "config": {"matching": config.as_dict(), "features": str(features), "features_db": str(features_db or features)},
    }
    try:
        side0 = _Side(first, 0)
        side1 = _Side(second, 1, side0 if second is first else None)
        with MatchStore(out, "w" if overwrite else "a", attrs=attrs) as store:
            for name0, name1 in pairs:
                status = _match_one(side0, side1, store, name0, name1, config, report, camera_of)
                if on_pair is not None:
                    on_pair((name0, name1), status)
    finally:
        first.close()
        if second is not first:
            second.close()
    report.seconds = time.perf_counter() - started
    return report


def _match_one(side0: _Side, side1: _Side, store, name0: str, name1: str, config: MatchingConfig,
               report: MatchReport, camera_of=None) -> str:  # fmt: skip
    if (name0, name1) in store:
        report.skipped += 1
        return "skipped"
    if name0 not in side0.names:
        report.failures.append((name0, name1, side0.missing))
        return "failed"
    if name1 not in side1.names:
        report.failures.append((name0, name1, side1.missing))
        return "failed"
    try:
        features0, features1 = side0.get(name0), side1.get(name1)
        intrinsics = None
        if config.geometry == "essential" and camera_of is not None:
            intrinsics = (camera_of(name0, features0), camera_of(name1, features1))
        matches = match_features(features0, features1, config, intrinsics)
    except (KeyError, ValueError) as exc:
        report.failures.append((name0, name1, _reason(exc)))
        return "failed"
    store.put(name0, name1, matches)
    report.matched += 1
    report.matches_per_pair.append(len(matches))
    if matches.inliers is not None:
        report.inliers_per_pair.append(matches.num_inliers)
        status = str(matches.meta.get("status", ""))
        report.statuses[status] = report.statuses.get(status, 0) + 1
        report.verified += status == "ok"
    return "done"
