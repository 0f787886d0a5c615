"""From feature stores to rankings: read descriptors, build an index, search it.

Works with any feature type: global descriptors (DELG, VPR) go to a `GlobalIndex`, local
descriptors (DELF, DELG local, R2D2) to an `ASMKIndex`.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import numpy as np

from delfi.types import Ranking

__all__ = ["MissingDescriptorError", "global_descriptors", "local_descriptors", "build_index", "search",
           "ranking_from_scores"]


class MissingDescriptorError(ValueError):
    """A feature store entry without the descriptor the index needs (names store and entry)."""


def _names(store, names: Sequence[str] | None) -> list[str]:
    if names is None:
        return store.names()
    missing = [n for n in names if n not in store]
    if missing:
        raise MissingDescriptorError(f"{store.path}: no features for {len(missing)} image(s), e.g. {missing[:3]}")
    return list(names)


def global_descriptors(store, names: Sequence[str] | None = None,
                       on_item: Callable[[str], None] | None = None) -> tuple[list[str], np.ndarray]:
    """The global descriptors of a `FeatureStore`.

    Returns:
        ``(names, vectors)``: vectors (N, G) float32 in the order of ``names`` (all entries, sorted,
        when ``names`` is None).

    Raises:
        MissingDescriptorError: an entry has no global descriptor (local-only features: use ASMK).
    """
    names = _names(store, names)
    rows = []
    for name in names:
        g = store.get(name).global_descriptor
        if g is None:
            raise MissingDescriptorError(
                f"{store.path}: {name!r} has no global descriptor (extracted with a local-only model?); "
                "index local features with --asmk")
        row = g.numpy().astype(np.float32, copy=False).reshape(-1)
        if rows and row.shape != rows[0].shape:
            raise MissingDescriptorError(f"{store.path}: {name!r} has a {row.shape[0]}-D global descriptor, "
                                         f"{names[0]!r} a {rows[0].shape[0]}-D one (features of different models?)")
        rows.append(row)
        if on_item is not None:
            on_item(name)
    dim = rows[0].shape[0] if rows else 0
    return names, (np.stack(rows) if rows else np.zeros((0, dim), np.float32))


def local_descriptors(store, names: Sequence[str] | None = None,
                      on_item: Callable[[str], None] | None = None) -> tuple[list[str], list[np.ndarray]]:
    """The local descriptors of a `FeatureStore`: ``(names, [ (n_i, D) float32 per image ])``."""
    names = _names(store, names)
    out: list[np.ndarray] = []
    for name in names:
        desc = store.get(name).descriptors.numpy().astype(np.float32, copy=False)
        if out and desc.shape[1] != out[0].shape[1]:
            raise MissingDescriptorError(f"{store.path}: {name!r} has {desc.shape[1]}-D local descriptors, "
                                         f"{names[0]!r} {out[0].shape[1]}-D ones (features of different models?)")
        out.append(desc)
        if on_item is not None:
            on_item(name)
    return names, out


def _training_sample(descriptors: list[np.ndarray], size: int, seed: int) -> np.ndarray:
    """Up to ``size`` local descriptors drawn uniformly from all images (fixed seed), gathered
    without concatenating every image's descriptors first (that copy would double the memory)."""
    counts = np.array([len(d) for d in descriptors], dtype=np.int64)
    total = int(counts.sum())
    if total == 0:
        raise ValueError("no local descriptors to train the ASMK codebook on")
    if total <= size:
        return np.concatenate(descriptors)
    pick = np.sort(np.random.default_rng(seed).choice(total, size, replace=False))
    starts = np.cumsum(counts) - counts
    image = np.searchsorted(starts, pick, side="right") - 1
    return np.stack([descriptors[i][p - starts[i]] for i, p in zip(image, pick)])


def build_index(
    features: str | os.PathLike,
    out: str | os.PathLike,
    *,
    kind: str = "exact",
    names: Sequence[str] | None = None,
    params: dict[str, Any] | None = None,
    train_size: int = 500_000,
    on_item: Callable[[str], None] | None = None,
):
    """Build and save an index over the images of a feature store.

    Args:
        features: the database feature store.
        out: the index directory to write.
        kind: ``exact`` | ``flat`` | ``ivfpq`` (global descriptors) or ``asmk`` (local ones).
        names: the entries to index (default: all, sorted).
        params: index parameters (`GlobalIndex` / `ASMKIndex` keyword arguments).
        train_size: descriptors used to train IVF-PQ / the ASMK codebook.

    Returns:
        The built index (also saved under ``out``).
    """
    from delfi.io.features import FeatureStore

    params = dict(params or {})
    with FeatureStore(features) as store:
        if kind == "asmk":
            from delfi.retrieval.asmk import ASMKIndex

            names, descriptors = local_descriptors(store, names, on_item)
            if not descriptors:
                raise ValueError(f"{features}: the feature store is empty")
            index = ASMKIndex(descriptors[0].shape[1], **params)
            index.train(_training_sample(descriptors, train_size, params.get("seed", 0)))
            index.add(descriptors, names)
        else:
            from delfi.retrieval.index import GlobalIndex

            names, vectors = global_descriptors(store, names, on_item)
            if len(names) == 0:
                raise ValueError(f"{features}: the feature store is empty")
            train = vectors
            if kind == "ivfpq" and len(vectors) > train_size:
                pick = np.sort(np.random.default_rng(params.get("seed", 0)).choice(len(vectors), train_size, replace=False))
                train = vectors[pick]
            index = GlobalIndex.build(vectors, names, kind=kind, train_vectors=train, **params)
    index.save(out)
    return index


def ranking_from_scores(queries: Sequence[str], database: Sequence[str], scores: np.ndarray,
                        ids: np.ndarray) -> Ranking:
    """A `Ranking` from search results: scores and ids (Q, K), ids -1 = no result."""
    scores = np.where(ids >= 0, scores.astype(np.float64), np.nan)
    return Ranking(list(queries), list(database), ids, scores)


def search(
    index,
    query_features: str | os.PathLike,
    *,
    top_k: int = 100,
    names: Sequence[str] | None = None,
    batch_size: int = 1024,
    nprobe: int | None = None,
    on_item: Callable[[str], None] | None = None,
) -> Ranking:
    """Rank the index's images for every query of a feature store (the top ``top_k`` per query);
    ``nprobe`` overrides the IVF-PQ cells scanned per query."""
    from delfi.io.features import FeatureStore
    from delfi.retrieval.asmk import ASMKIndex

    with FeatureStore(query_features) as store:
        if isinstance(index, ASMKIndex):
            names, descriptors = local_descriptors(store, names, on_item)
            scores, ids = index.search(descriptors, top_k)
        else:
            names, vectors = global_descriptors(store, names, on_item)
            scores, ids = index.search(vectors, top_k, batch_size=batch_size, nprobe=nprobe)
    return ranking_from_scores(names, index.names, scores, ids)

