"""Matching many pairs: descriptors from a feature store, mutual NN (+ ratio / distance), optional
geometric verification, results into a resumable, crash-safe match store."""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional, Sequence

from delfi.types import Features, Matches


@dataclass
class MatchingConfig:
    """How two feature sets are matched and verified (any feature type)."""

    mutual: bool = True
    ratio: Optional[float] = None  # Lowe ratio test on descriptor distances
    max_distance: Optional[float] = None  # keep matches with L2 distance <= this
    geometry: Optional[str] = "homography"  # homography | fundamental | affine | None (no verification)
    threshold: float = 3.0  # RANSAC residual threshold, pixels
    confidence: float = 0.9999
    max_iters: int = 10000
    seed: int = 0
    backend: str = "opencv"  # opencv | pydegensac | poselib

    def as_dict(self) -> dict:
        return asdict(self)


def match_features(features0: Features, features1: Features, config: MatchingConfig | None = None) -> Matches:
    """Putative matches by nearest neighbours, then (optionally) geometric verification.

    Returns:
        `Matches` with indices (K, 2) into the two keypoint sets; with a geometry, also inliers
        (K,), the model (3, 3) and ``meta["status"]``.
    """
    from delfi.match.nn import mutual_nn
    from delfi.match.verify import verify

    config = config or MatchingConfig()
    matches = mutual_nn(
        features0.descriptors, features1.descriptors, ratio=config.ratio, max_distance=config.max_distance, mutual=config.mutual
    )
    if config.geometry is None:
        return matches
    return verify(
        features0, features1, matches, config.geometry, threshold=config.threshold, confidence=config.confidence,
        max_iters=config.max_iters, seed=config.seed, backend=config.backend,
    )  # fmt: skip


@dataclass
class MatchReport:
    """What a matching run did."""

    total: int = 0
    matched: int = 0
    skipped: int = 0  # already in the match store
    failures: list[tuple[str, str, str]] = field(default_factory=list)  # (name0, name1, reason)
    matches_per_pair: list[int] = field(default_factory=list)
    inliers_per_pair: list[int] = field(default_factory=list)
    seconds: float = 0.0


def match_pairs(
    features: str | os.PathLike,
    pairs: Sequence[tuple[str, str]],
    out: str | os.PathLike,
    config: MatchingConfig | None = None,
    *,
    features_db: str | os.PathLike | None = None,
    overwrite: bool = False,
    on_pair: Callable[[tuple[str, str], str], None] | None = None,
) -> MatchReport:
    """Match every pair of ``pairs`` (names in the feature store(s)) into the match store ``out``.

    Pairs already in ``out`` are skipped; a pair whose features are missing is reported and skipped.
    ``features_db`` holds the second image of each pair when it differs from ``features``.
    """
    from delfi.io.features import FeatureStore
    from delfi.io.matches import MatchStore

    config = config or MatchingConfig()
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
        with MatchStore(out, "w" if overwrite else "a", attrs=attrs) as store:
            for name0, name1 in pairs:
                status = _match_one(first, second, store, name0, name1, config, report)
                if on_pair is not None:
                    on_pair((name0, name1), status)
    finally:
        first.close()
        if second is not first:
            second.close()
    report.seconds = time.perf_counter() - started
    return report


def _match_one(first, second, store, name0: str, name1: str, config: MatchingConfig, report: MatchReport) -> str:
    if (name0, name1) in store:
        report.skipped += 1
        return "skipped"
    missing = [n for n, s in ((name0, first), (name1, second)) if n not in s]
    if missing:
        report.failures.append((name0, name1, f"no features for {', '.join(missing)}"))
        return "failed"
    matches = match_features(first[name0], second[name1], config)
    store.put(name0, name1, matches)
    report.matched += 1
    report.matches_per_pair.append(len(matches))
    if matches.inliers is not None:
        report.inliers_per_pair.append(matches.num_inliers)
    return "done"
