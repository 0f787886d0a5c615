"""Reranking a global ranking by spatial verification of local features.

For each query the top-K database images (default 100, database junk skipped when the evaluation
says so) are matched with the query by nearest neighbours and verified with RANSAC; the new order
comes from fusing the inlier count with the global score. The defaults follow the TF DELG retrieval
code (ALGORITHMS.md section 2): putative matches = each query descriptor's nearest database
descriptor with L2 distance < 1.0 (no mutual check, no ratio test), an affine model, residual
threshold 20 px, 1000 iterations, seed 0, fewer than 4 putative matches -> 0 inliers.

Fusion rules (``RerankConfig.fusion``), for a result with global score g and inliers n:

* ``lexicographic`` (default, TF): sort by (n, g), exactly (the sort uses n and g themselves).
  Written as the score ``n + (1 + tanh g) / 2``, which never increases along that order (the
  second term lies in [0, 1]; where tanh rounds to +-1 scores may tie, and ranking readers keep
  the file order of ties).
* ``weighted``: ``g + weight * n``.
* ``min_inliers``: results with n >= ``min_inliers`` first, each group by g; written as
  ``g + 2 * [n >= min_inliers] * (1 + max |g|)``.

Global scores must be finite: `rerank` and `fuse_scores` refuse NaN or infinite ones (an infinite
score would outweigh every inlier count). Results after the top-K are not verified and keep their global order below the verified ones
(``lexicographic`` counts them as n = -1, the other rules as n = 0: the top-K have the highest g, so
they never fall below an unverified result). Junk results are neither verified nor counted in K.

Pairs run in a thread pool (OpenCV's RANSAC and torch's matmul release the GIL); every pair's RANSAC
has its own fixed seed, so the result does not depend on the number of workers or their timing.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Mapping, Protocol

import numpy as np
import torch

from delfi.match.pipeline import MatchingConfig
from delfi.types import Features, Matches, Ranking

__all__ = ["RerankConfig", "FUSIONS", "rerank", "rerank_stores", "fuse_scores", "verify_pair", "FeatureCache", "tf_matching",
           "mutual_matching", "matching_for", "rule_for", "PUTATIVE_RULES"]

FUSIONS = ("lexicographic", "weighted", "min_inliers")


def tf_matching() -> MatchingConfig:
    """The TF DELG reranking settings: NN with L2 distance < 1.0, affine RANSAC, 20 px, 1000 trials."""
    return MatchingConfig(mutual=False, ratio=None, max_distance=1.0, geometry="affine", threshold=20.0,
                          max_iters=1000, seed=0)


def mutual_matching() -> MatchingConfig:
    """Mutual nearest neighbours (no distance bound), affine RANSAC 20 px, 1000 trials: for local
    features without attention selection, e.g. R2D2, whose descriptors are not separated by the TF
    distance rule (on real photos it gives wrong images ~100 "inliers")."""
    return MatchingConfig(mutual=True, ratio=None, max_distance=None, geometry="affine", threshold=20.0,
                          max_iters=1000, seed=0)


TF_RULE_FAMILIES = ("delf", "delg")
"""Model families whose descriptors the TF distance-1.0 rule was made for."""


PUTATIVE_RULES = {"tf": tf_matching, "mutual": mutual_matching}


def rule_for(family: str | None) -> str:
    """The default putative-matching rule for features of a model family (a feature store's
    ``model`` attribute): ``"tf"`` for DELF / DELG, ``"mutual"`` otherwise."""
    return "tf" if family in TF_RULE_FAMILIES else "mutual"


def matching_for(family: str | None) -> MatchingConfig:
    """The matching settings of `rule_for` ``family``."""
    return PUTATIVE_RULES[rule_for(family)]()


@dataclass
class RerankConfig:
    """How a ranking is reranked."""

    top_k: int = 100
    fusion: str = "lexicographic"
    weight: float = 0.01  # fusion "weighted": score = global + weight * inliers
    min_inliers: int = 10  # fusion "min_inliers"
    min_matches: int = 4  # fewer putative matches -> 0 inliers without running RANSAC
    workers: int = 0  # threads; 0 = one per CPU core
    cache_size: int = 4096  # database images whose features stay in memory
    matching: MatchingConfig = field(default_factory=tf_matching)

    def __post_init__(self) -> None:
        if isinstance(self.matching, Mapping):
            self.matching = MatchingConfig(**self.matching)
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {self.fusion!r}")
        if self.top_k < 0 or self.min_matches < 0 or self.workers < 0 or self.cache_size < 0:
            raise ValueError("top_k, min_matches, workers and cache_size must be >= 0")
        if self.matching.geometry is None:
            raise ValueError("reranking needs a geometry (homography, fundamental or affine)")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class FeatureSource(Protocol):
    def get(self, name: str) -> Features: ...


class FeatureCache:
    """Least-recently-used cache in front of a feature store (``get(name) -> Features``).

    Thread-safe enough for the reranker: h5py serialises reads with its own lock, and a race at
    worst reads an entry twice.
    """

    def __init__(self, source: FeatureSource | Callable[[str], Features], capacity: int = 4096) -> None:
        self._get = source.get if hasattr(source, "get") else source
        self.capacity = int(capacity)
        self._items: OrderedDict[str, Features] = OrderedDict()

    def get(self, name: str) -> Features:
        if name in self._items:
            self._items.move_to_end(name)
            return self._items[name]
        features = self._get(name)
        if self.capacity > 0:
            self._items[name] = features
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return features


def verify_pair(query: Features, db: Features, matching: MatchingConfig, min_matches: int = 4) -> Matches:
    """`match_features` (putative matches query -> db, then RANSAC), with TF's rule that fewer than
    ``min_matches`` putative matches count as 0 inliers; ``meta["status"]`` explains a zero."""
    from delfi.match.pipeline import match_features

    matches = match_features(query, db, matching)
    if len(matches) >= min_matches:
        return matches
    return replace(matches, inliers=torch.zeros(len(matches), dtype=torch.bool), model=None,
                   meta={**matches.meta, "status": "not enough matches", "required": min_matches, "num_inliers": 0})


def fuse_scores(global_scores: np.ndarray, inliers: np.ndarray, config: RerankConfig) -> np.ndarray:
    """Fused scores (higher is better) for results with global scores g and inlier counts n.

    Args:
        global_scores: (...,) float global similarity.
        inliers: (...,) int inlier counts, -1 for results that were not verified.

    Raises:
        ValueError: a global score is NaN or infinite.
    """
    g = np.asarray(global_scores, dtype=np.float64)
    n = np.asarray(inliers, dtype=np.int64)
    if not np.isfinite(g).all():
        raise ValueError("global scores must be finite (NaN or infinite scores cannot be fused)")
    if config.fusion == "lexicographic":
        return n + (1.0 + np.tanh(g)) / 2.0
    counted = np.maximum(n, 0)
    if config.fusion == "weighted":
        return g + config.weight * counted
    finite = np.abs(g[np.isfinite(g)])
    lift = 2.0 * (1.0 + (finite.max() if finite.size else 0.0))
    return g + lift * (counted >= config.min_inliers)


@dataclass
class RerankReport:
    """What a reranking run did."""

    queries: int = 0
    pairs: int = 0
    seconds: float = 0.0
    missing: list[str] = field(default_factory=list)  # names without usable features (left unverified)
    failed: dict[str, str] = field(default_factory=dict)  # name -> why its features could not be used

    @property
    def seconds_per_query(self) -> float:
        return self.seconds / self.queries if self.queries else 0.0


def _candidates(row: np.ndarray, names: list[str], junk: set[str], top_k: int) -> list[int]:
    """Positions (columns) of the first ``top_k`` non-junk results of a ranking row."""
    out: list[int] = []
    for k, idx in enumerate(row):
        if len(out) >= top_k:
            break
        if idx >= 0 and names[idx] not in junk:
            out.append(k)
    return out


def rerank(
    ranking: Ranking,
    query_features: FeatureSource,
    db_features: FeatureSource,
    config: RerankConfig | None = None,
    *,
    junk: Mapping[str, set[str]] | None = None,
    on_pair: Callable[[str, str, Matches], None] | None = None,
    on_query: Callable[[str], None] | None = None,
    report: RerankReport | None = None,
    memo: dict[tuple[str, str], int] | None = None,
) -> Ranking:
    """Rerank the top-K of every query of ``ranking`` by spatial verification.

    Args:
        ranking: the global ranking; its ``scores`` are the global similarities.
        query_features, db_features: anything with ``get(name) -> Features`` (e.g. `FeatureStore`).
        config: `RerankConfig` (TF DELG defaults).
        junk: per query, database names to skip (neither verified nor counted in K).
        on_pair: called with (query, db, verified matches) for every verified pair, in ranking
            order (e.g. to keep the matches for the report).
        on_query: called with each query name when it is done (progress).
        report: filled with counts and timing when given.
        memo: inlier counts of pairs verified before with the same config, ``(query, db) -> n``;
            known pairs are not verified again (nor passed to ``on_pair``), new ones are added. For
            several rerankings of one ranking that differ only in the junk they skip.

    Returns:
        A new `Ranking` with the same results per query in the fused order: ``scores`` fused,
        ``global_scores`` the input scores, ``inliers`` (-1 where not verified).
    """
    config = config or RerankConfig()
    report = report if report is not None else RerankReport()
    _check_scores(ranking)
    started = time.perf_counter()
    cache = FeatureCache(db_features, config.cache_size)
    workers = config.workers or os.cpu_count() or 1
    shape = ranking.indices.shape
    inliers = np.full(shape, -1, dtype=np.int64)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for q, query in enumerate(ranking.queries):
            row = ranking.indices[q]
            columns = _candidates(row, ranking.database, (junk or {}).get(query, set()), config.top_k)
            if columns:
                qf, reason = _features_or_none(query_features.get, query)
                if qf is None:
                    _record_failure(report, query, reason)
                if qf is not None:
                    _verify_row(pool, qf, query, row, columns, ranking.database, cache, config, inliers[q],
                                on_pair, report, memo)
            report.queries += 1
            if on_query is not None:
                on_query(query)
    result = _reorder(ranking, inliers, config)
    report.seconds += time.perf_counter() - started
    return result


def rerank_stores(
    ranking: Ranking,
    query_store: str | os.PathLike,
    db_store: str | os.PathLike,
    config: RerankConfig | None = None,
    *,
    matches_out: str | os.PathLike | None = None,
    **options: Any,
) -> Ranking:
    """`rerank` with the features read from two feature stores (``options``: those of `rerank`).

    ``matches_out``: a match store (created afresh) that keeps every verified pair's matches.
    """
    from delfi.io.features import FeatureStore
    from delfi.io.matches import MatchStore

    config = config or RerankConfig()
    with contextlib.ExitStack() as stack:
        queries = stack.enter_context(FeatureStore(query_store))
        database = stack.enter_context(FeatureStore(db_store))
        if matches_out is not None:
            store = stack.enter_context(MatchStore(matches_out, "w", attrs={
                "model": "rerank", "weights_sha256": "none", "config": {"rerank": config.as_dict()}}))
            options["on_pair"] = store.put
        return rerank(ranking, queries, database, config, **options)


def _verify_row(pool, qf, query, row, columns, database, cache, config, inliers_row, on_pair, report, memo) -> None:
    def work(k: int) -> tuple[int, Matches | str]:
        name = database[row[k]]
        dbf, reason = _features_or_none(cache.get, name)
        if dbf is None:
            return k, reason
        if dbf.descriptors.shape[1] != qf.descriptors.shape[1]:
            raise ValueError(f"{query!r} has {qf.descriptors.shape[1]}-D descriptors but {name!r} "
                             f"{dbf.descriptors.shape[1]}-D ones: query and database features come from different models")
        return k, verify_pair(qf, dbf, config.matching, config.min_matches)

    if memo is not None:
        for k in columns:
            inliers_row[k] = memo.get((query, database[row[k]]), -1)
        columns = [k for k in columns if inliers_row[k] < 0]
    for k, matches in pool.map(work, columns):
        if isinstance(matches, str):  # recorded here, in ranking order (the workers' order varies)
            _record_failure(report, database[row[k]], matches)
            continue
        inliers_row[k] = matches.num_inliers
        report.pairs += 1
        if memo is not None:
            memo[(query, database[row[k]])] = matches.num_inliers
        if on_pair is not None:
            on_pair(query, database[row[k]], matches)


def _check_scores(ranking: Ranking) -> None:
    """Refuse NaN or infinite global scores of real results (they would misorder the fusion)."""
    bad = (ranking.indices >= 0) & ~np.isfinite(ranking.scores)
    if bad.any():
        q, k = (int(v[0]) for v in np.nonzero(bad))
        raise ValueError(f"the ranking has {int(bad.sum())} NaN or infinite score(s), e.g. query "
                         f"{ranking.queries[q]!r}, result {ranking.database[ranking.indices[q, k]]!r}: "
                         "scores must be finite to be reranked")


def _features_or_none(get: Callable[[str], Features], name: str) -> tuple[Features | None, str]:
    """``(get(name), "")``, or ``(None, reason)`` when the entry is missing or bad."""
    try:
        return get(name), ""
    except KeyError:
        return None, "not in the feature store"
    except ValueError as exc:  # a bad entry: the store's message names the store and entry
        return None, str(exc) or type(exc).__name__


def _record_failure(report: RerankReport, name: str, reason: str) -> None:
    report.missing.append(name)
    report.failed.setdefault(name, reason)


def _reorder(ranking: Ranking, inliers: np.ndarray, config: RerankConfig) -> Ranking:
    valid = ranking.indices >= 0
    g = np.where(valid, ranking.scores, 0.0)
    fused = np.where(valid, fuse_scores(g, inliers, config), -np.inf)
    if config.fusion == "lexicographic":  # by (n, g) themselves: tanh saturates for |g| > ~19
        position = np.broadcast_to(np.arange(fused.shape[1]), fused.shape)
        order = np.lexsort((position, -g, -inliers, ~valid), axis=1) if fused.size else np.zeros(fused.shape, np.int64)
    else:
        order = np.argsort(-fused, axis=1, kind="stable")
    take = lambda a: np.take_along_axis(a, order, axis=1)  # noqa: E731
    scores = take(fused)
    scores[~np.isfinite(scores)] = np.nan
    return Ranking(ranking.queries, ranking.database, take(ranking.indices), scores,
                   global_scores=take(ranking.scores), inliers=take(inliers))
