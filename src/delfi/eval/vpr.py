"""Visual place recognition evaluation: positives, recall@N, rank changes.

Conventions
-----------
* A database image is a *positive* for a query if its Euclidean UTM distance
  is ``<= radius`` metres (inclusive: a point exactly at 25 m counts).
* Recall@N is a percentage over **all** queries; a query with no positives in
  the database can never be correct and counts as a failure.
* Ranks are 0-based positions in a prediction list; a query with no positive
  in its list has first-positive rank ``-1`` (see :func:`first_positive_rank`).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["positives_within", "recall_at_n", "first_positive_rank", "rank_changes"]


def positives_within(
    db_utm: np.ndarray,
    query_utm: np.ndarray,
    radius: float = 25.0,
    chunk: int = 256,
) -> list[np.ndarray]:
    """Database indices within ``radius`` metres (inclusive) of each query.

    Computes distances ``chunk`` queries at a time, so memory is
    ``O(chunk * N)`` (100k database x 10k queries fits easily).
    Returns one sorted int64 index array per query.
    """
    db = np.asarray(db_utm, dtype=np.float64).reshape(-1, 2)
    q = np.asarray(query_utm, dtype=np.float64).reshape(-1, 2)
    if chunk < 1:
        raise ValueError("chunk must be >= 1")
    r2 = float(radius) ** 2
    out: list[np.ndarray] = []
    for start in range(0, len(q), chunk):
        qc = q[start : start + chunk]
        diff = qc[:, None, :] - db[None, :, :]
        d2 = np.einsum("qnk,qnk->qn", diff, diff)
        within = d2 <= r2
        for row in within:
            out.append(np.flatnonzero(row).astype(np.int64))
    return out


def _is_positive(predictions: np.ndarray, positives: Sequence[np.ndarray]) -> np.ndarray:
    preds = np.asarray(predictions)
    if preds.ndim != 2:
        raise ValueError(f"predictions must be (Q, K), got shape {preds.shape}")
    if len(positives) != preds.shape[0]:
        raise ValueError(
            f"{preds.shape[0]} prediction rows but {len(positives)} positive lists"
        )
    return np.stack(
        [np.isin(preds[i], np.asarray(positives[i])) for i in range(preds.shape[0])]
    ) if preds.shape[0] else np.zeros(preds.shape, dtype=bool)


def recall_at_n(
    predictions: np.ndarray,
    positives: Sequence[np.ndarray],
    ns: Sequence[int] = (1, 5, 10, 20),
) -> dict[int, float]:
    """Recall@N in percent over all queries.

    ``predictions`` is ``(Q, K)`` database indices ranked best first. A query
    is correct at N if any of its first N predictions is a positive; queries
    without positives count as failures. N larger than K uses all K.
    """
    hits = _is_positive(predictions, positives)
    q = hits.shape[0]
    cum = np.logical_or.accumulate(hits, axis=1) if hits.shape[1] else hits
    res: dict[int, float] = {}
    for n in ns:
        if n < 1:
            raise ValueError(f"N must be >= 1, got {n}")
        if q == 0 or hits.shape[1] == 0:
            res[int(n)] = 0.0
            continue
        col = min(n, hits.shape[1]) - 1
        res[int(n)] = 100.0 * float(cum[:, col].sum()) / q
    return res


def first_positive_rank(predictions: np.ndarray, positives: Sequence[np.ndarray]) -> np.ndarray:
    """0-based rank of the first positive in each row; ``-1`` when there is none."""
    hits = _is_positive(predictions, positives)
    has = hits.any(axis=1)
    return np.where(has, hits.argmax(axis=1), -1).astype(np.int64)


def rank_changes(
    before: np.ndarray, after: np.ndarray, positives: Sequence[np.ndarray]
) -> np.ndarray:
    """First-positive rank before minus after, per query (float ``(Q,)``).

    Positive values are improvements (the first positive moved up), negative
    values regressions, 0 unchanged. ``NaN`` when either list has no positive
    (rank ``-1`` in :func:`first_positive_rank`), since the change is undefined.
    """
    rb = first_positive_rank(before, positives)
    ra = first_positive_rank(after, positives)
    if rb.shape != ra.shape:
        raise ValueError("before and after must have the same number of queries")
    out = (rb - ra).astype(np.float64)
    out[(rb < 0) | (ra < 0)] = np.nan
    return out
