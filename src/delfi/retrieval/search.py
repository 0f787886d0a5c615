"""From feature stores to rankings: read descriptors, build an index, search it.

Works with any feature type: global descriptors (DELG, VPR) go to a `GlobalIndex`, local
descriptors (DELF, DELG local, R2D2) to an `ASMKIndex`.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import numpy as np

from delfi.types import Ranking

__all__ = ["MissingDescriptorError", "BadEntryError", "global_descriptors", "local_descriptors", "build_index", "search",
           "ranking_from_scores"]


class MissingDescriptorError(ValueError):
    """A feature store entry without the descriptor the index needs (names store and entry)."""


class BadEntryError(ValueError):
    """A feature store entry that cannot be used (unreadable, non-finite values); names store and entry."""


OnFailure = Callable[[str, str], None]
"""Called with (entry name, reason) for an entry that is left out; without it the entry raises."""


def _names(store, names: Sequence[str] | None) -> list[str]:
    if names is None:
        return store.names()
    missing = [n for n in names if n not in store]
    if missing:
        raise MissingDescriptorError(f"{store.path}: no features for {len(missing)} image(s), e.g. {missing[:3]}")
    return list(names)


def _reason(exc: BaseException) -> str:
    """The message of an exception (a KeyError's without the quotes repr adds)."""
    if isinstance(exc, KeyError) and exc.args:
        return str(exc.args[0])
    return str(exc) or type(exc).__name__


def _left_out(store, name: str, reason: str, on_failure: OnFailure | None) -> None:
    """Report an unusable entry to ``on_failure``, or raise `BadEntryError` without one."""
    if on_failure is None:
        raise BadEntryError(reason if str(store.path) in reason else f"{store.path}: {name!r}: {reason}")
    on_failure(name, reason)


def _read(store, name: str, on_failure: OnFailure | None):
    """``store.get(name)``, or None (reported) when the entry is missing or bad."""
    try:
        return store.get(name)
    except (KeyError, ValueError) as exc:  # the stores raise these for missing / bad entries
        _left_out(store, name, _reason(exc), on_failure)
        return None


def global_descriptors(store, names: Sequence[str] | None = None,
                       on_item: Callable[[str], None] | None = None,
                       on_failure: OnFailure | None = None) -> tuple[list[str], np.ndarray]:
    """The global descriptors of a `FeatureStore`.

    Args:
        store: the feature store.
        names: entries to read (all, sorted, when None).
        on_item: called with each name read.
        on_failure: called with (name, reason) for an entry that is unreadable or holds NaN or
            infinite values; the entry is left out. Without it such an entry raises `BadEntryError`.

    Returns:
        ``(names, vectors)``: the usable names and their vectors (N, G) float32, in that order.

    Raises:
        MissingDescriptorError: an entry has no global descriptor (local-only features: use ASMK), or
            the dimensions differ (features of different models).
    """
    names = _names(store, names)
    kept: list[str] = []
    rows = []
    for name in names:
        features = _read(store, name, on_failure)
        if features is None:
            continue
        g = features.global_descriptor
        if g is None:
            raise MissingDescriptorError(
                f"{store.path}: {name!r} has no global descriptor (extracted with a local-only model?); "
                "index local features with --asmk")
        row = g.numpy().astype(np.float32, copy=False).reshape(-1)
        if rows and row.shape != rows[0].shape:
            raise MissingDescriptorError(f"{store.path}: {name!r} has a {row.shape[0]}-D global descriptor, "
                                         f"{kept[0]!r} a {rows[0].shape[0]}-D one (features of different models?)")
        if not np.isfinite(row).all():
            _left_out(store, name, f"{store.path}: {name!r}: NaN or infinite values in the global descriptor",
                      on_failure)
            continue
        rows.append(row)
        kept.append(name)
        if on_item is not None:
            on_item(name)
    dim = rows[0].shape[0] if rows else 0
    return kept, (np.stack(rows) if rows else np.zeros((0, dim), np.float32))


def local_descriptors(store, names: Sequence[str] | None = None,
                      on_item: Callable[[str], None] | None = None,
                      on_failure: OnFailure | None = None) -> tuple[list[str], list[np.ndarray]]:
    """The local descriptors of a `FeatureStore`: ``(names, [ (n_i, D) float32 per image ])``.

    Unreadable entries and entries with NaN or infinite values go to ``on_failure`` and are left
    out (without it they raise `BadEntryError`); different dimensions raise `MissingDescriptorError`.
    """
    names = _names(store, names)
    kept: list[str] = []
    out: list[np.ndarray] = []
    for name in names:
        features = _read(store, name, on_failure)
        if features is None:
            continue
        desc = features.descriptors.numpy().astype(np.float32, copy=False)
        if out and desc.shape[1] != out[0].shape[1]:
            raise MissingDescriptorError(f"{store.path}: {name!r} has {desc.shape[1]}-D local descriptors, "
                                         f"{kept[0]!r} {out[0].shape[1]}-D ones (features of different models?)")
        if not np.isfinite(desc).all():
            _left_out(store, name, f"{store.path}: {name!r}: NaN or infinite values in the local descriptors",
                      on_failure)
            continue
        out.append(desc)
        kept.append(name)
        if on_item is not None:
            on_item(name)
    return kept, out


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
    on_failure: OnFailure | None = None,
    overwrite: bool = True,
):
    """Build and save an index over the images of a feature store.

    Args:
        features: the database feature store.
        out: the index directory to write (an existing delfi index there is replaced when
            ``overwrite``; any other existing path is refused before anything is read).
        kind: ``exact`` | ``flat`` | ``ivfpq`` (global descriptors) or ``asmk`` (local ones).
        names: the entries to index (default: all, sorted).
        params: index settings (`GlobalIndex` / `ASMKIndex` keyword arguments), checked by
            `delfi.retrieval.settings.check_index_settings` first.
        train_size: descriptors used to train IVF-PQ / the ASMK codebook.
        on_item: called with each entry name read.
        on_failure: called with (name, reason) for each entry left out (unreadable, non-finite);
            without it such an entry raises `BadEntryError`.
        overwrite: replace an existing delfi index at ``out``.

    Returns:
        The built index (also saved under ``out``); it holds the entries that could be used.

    Raises:
        IndexSettingsError: an unknown kind or setting. IndexPathError: ``out`` cannot be replaced.
        ValueError: no usable entry.
    """
    from delfi.io.features import FeatureStore
    from delfi.retrieval.settings import check_index_settings
    from delfi.retrieval.storage import check_index_target

    params = check_index_settings(kind, params)
    check_index_target(out, overwrite)
    with FeatureStore(features) as store:
        if kind == "asmk":
            from delfi.retrieval.asmk import ASMKIndex

            names, descriptors = local_descriptors(store, names, on_item, on_failure)
            if not descriptors:
                raise ValueError(f"{features}: no usable entry in the feature store")
            index = ASMKIndex(descriptors[0].shape[1], **params)
            index.train(_training_sample(descriptors, train_size, params.get("seed", 0)))
            index.add(descriptors, names)
        else:
            from delfi.retrieval.index import GlobalIndex

            names, vectors = global_descriptors(store, names, on_item, on_failure)
            if len(names) == 0:
                raise ValueError(f"{features}: no usable entry in the feature store")
            train = vectors
            if kind == "ivfpq" and len(vectors) > train_size:
                pick = np.sort(np.random.default_rng(params.get("seed", 0)).choice(len(vectors), train_size, replace=False))
                train = vectors[pick]
            index = GlobalIndex.build(vectors, names, kind=kind, train_vectors=train, **params)
    index.save(out, overwrite=overwrite)
    return index


def ranking_from_scores(queries: Sequence[str], database: Sequence[str], scores: np.ndarray,
                        ids: np.ndarray) -> Ranking:
    """A `Ranking` from search results: scores and ids (Q, K), ids -1 = no result.

    Raises:
        ValueError: the shapes disagree with each other or with the Q names of ``queries``.
    """
    scores, ids = np.asarray(scores), np.asarray(ids)
    if ids.ndim != 2 or scores.shape != ids.shape or len(ids) != len(queries):
        raise ValueError(f"search results for {len(queries)} queries need (Q, K) scores and ids with Q = "
                         f"{len(queries)}, got scores {scores.shape} and ids {ids.shape}")
    if ids.size and (ids.min() < -1 or ids.max() >= len(database)):
        raise ValueError(f"result ids must lie in [-1, {len(database)}), got [{ids.min()}, {ids.max()}]")
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
    on_failure: OnFailure | None = None,
) -> Ranking:
    """Rank the index's images for every query of a feature store (the top ``top_k`` per query);
    ``nprobe`` overrides the IVF-PQ cells scanned per query. A query that is unreadable or holds
    NaN or infinite values goes to ``on_failure`` (name, reason) and is left out of the ranking;
    without ``on_failure`` it raises `BadEntryError`."""
    from delfi.io.features import FeatureStore
    from delfi.retrieval.asmk import ASMKIndex

    with FeatureStore(query_features) as store:
        if isinstance(index, ASMKIndex):
            names, descriptors = local_descriptors(store, names, on_item, on_failure)
            scores, ids = index.search(descriptors, top_k)
        else:
            names, vectors = global_descriptors(store, names, on_item, on_failure)
            if len(vectors) and vectors.shape[1] != index.dim:
                raise MissingDescriptorError(f"{query_features}: {vectors.shape[1]}-D global descriptors but the "
                                             f"index holds {index.dim}-D ones (features of different models?)")
            scores, ids = index.search(vectors, top_k, batch_size=batch_size, nprobe=nprobe)
    return ranking_from_scores(names, index.names, scores, ids)
