"""Revisited Oxford / Paris evaluation (Radenovic et al., CVPR 2018): mAP and mP@k for the
Easy, Medium and Hard protocols, as in docs/ALGORITHMS.md section 6.

- ``ranks`` is (n_db, n_q): column ``i`` lists database indices, best first, for query ``i``.
- Easy: positives = easy, junk = junk + hard. Medium: positives = easy + hard, junk = junk.
  Hard: positives = hard, junk = junk + easy.
- Junk images are removed from the ranking; AP uses the trapezoidal rule
  ``sum_j ((j / r_j if r_j > 0 else 1) + (j + 1) / (r_j + 1)) / 2 / n_pos`` with ``r_j`` the 0-based
  rank of the j-th positive after junk removal and ``n_pos`` the number of ground-truth positives.
- mP@k: with 1-based positive ranks after junk removal, ``kq = min(max rank, k)`` and
  precision = #(ranks <= kq) / kq.
- Queries without positives for a protocol are skipped; means are over the remaining queries.
All results are percentages.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["PROTOCOLS", "evaluate", "ranks_from_scores", "format_results", "average_precision", "protocol_sets"]

PROTOCOLS = ("easy", "medium", "hard")


def protocol_sets(q: dict, protocol: str) -> tuple[np.ndarray, np.ndarray]:
    """(positives, junk) index arrays of one query's ground truth for a protocol."""
    easy = np.asarray(q.get("easy", []), dtype=np.int64).ravel()
    hard = np.asarray(q.get("hard", []), dtype=np.int64).ravel()
    junk = np.asarray(q.get("junk", []), dtype=np.int64).ravel()
    if protocol == "easy":
        return easy, np.concatenate([junk, hard])
    if protocol == "medium":
        return np.concatenate([easy, hard]), junk
    if protocol == "hard":
        return hard, np.concatenate([junk, easy])
    raise ValueError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")


def _positive_ranks(order: np.ndarray, positives: np.ndarray, junk: np.ndarray) -> np.ndarray:
    """0-based ranks of the positives found in ``order`` after removing junk, ascending."""
    pos_at = np.flatnonzero(np.isin(order, positives))
    junk_at = np.flatnonzero(np.isin(order, junk))
    # each positive moves up by the number of junk images ranked strictly above it
    return pos_at - np.searchsorted(junk_at, pos_at, side="left")


def average_precision(pos_ranks: np.ndarray, n_pos: int) -> float:
    """Trapezoidal AP (fraction, 0..1) from 0-based, ascending positive ranks (junk already removed)."""
    if n_pos <= 0:
        raise ValueError("average_precision needs at least one positive")
    ap = 0.0
    for j, r in enumerate(np.asarray(pos_ranks).tolist()):
        prec_before = 1.0 if r == 0 else j / r
        prec_after = (j + 1) / (r + 1)
        ap += (prec_before + prec_after) / 2.0
    return ap / n_pos


def _precision_at(pos_ranks: np.ndarray, kappas: Sequence[int]) -> np.ndarray:
    out = np.zeros(len(kappas))
    if len(pos_ranks) == 0:
        return out
    ranks1 = np.asarray(pos_ranks) + 1
    top = int(ranks1.max())
    for t, k in enumerate(kappas):
        kq = min(top, int(k))
        out[t] = np.count_nonzero(ranks1 <= kq) / kq
    return out


def evaluate(ranks: np.ndarray, gnd: list[dict], kappas: Sequence[int] = (1, 5, 10)) -> dict:
    """mAP and mP@k (percent) for the Easy, Medium and Hard protocols.

    Returns ``{"easy"|"medium"|"hard": {"map": float, "mp@k": {k: float}, "n_queries": int}}``
    where ``n_queries`` counts the queries with positives (the others are skipped).
    """
    ranks = np.asarray(ranks)
    if ranks.ndim != 2:
        raise ValueError(f"ranks must be (n_db, n_q), got shape {ranks.shape}")
    if ranks.shape[1] != len(gnd):
        raise ValueError(f"ranks has {ranks.shape[1]} query columns but gnd has {len(gnd)} queries")
    kappas = tuple(int(k) for k in kappas)
    if any(k < 1 for k in kappas):
        raise ValueError("kappas must be >= 1")

    results = {}
    for protocol in PROTOCOLS:
        aps, prs = [], []
        for i, q in enumerate(gnd):
            positives, junk = protocol_sets(q, protocol)
            if positives.size == 0:
                continue
            pr = _positive_ranks(ranks[:, i], positives, junk)
            aps.append(average_precision(pr, positives.size))
            prs.append(_precision_at(pr, kappas))
        if aps:
            m_ap = float(np.mean(aps)) * 100.0
            m_pr = np.mean(np.stack(prs), axis=0) * 100.0
        else:
            m_ap = float("nan")
            m_pr = np.full(len(kappas), np.nan)
        results[protocol] = {
            "map": m_ap,
            "mp@k": {k: float(v) for k, v in zip(kappas, m_pr)},
            "n_queries": len(aps),
        }
    return results


def ranks_from_scores(scores: np.ndarray) -> np.ndarray:
    """(n_q, n_db) similarity scores -> (n_db, n_q) ranks, best first; ties keep database order."""
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores must be (n_q, n_db), got shape {scores.shape}")
    return np.argsort(-scores, axis=1, kind="stable").T


def format_results(results: dict) -> str:
    """One line: ``mAP E 84.3 M 65.1 H 40.2 | mP@1/5/10 E a/b/c M a/b/c H a/b/c``."""
    tags = (("easy", "E"), ("medium", "M"), ("hard", "H"))
    maps = " ".join(f"{t} {results[p]['map']:.1f}" for p, t in tags)
    kappas = list(results["easy"]["mp@k"].keys())
    head = "mP@" + "/".join(str(k) for k in kappas)
    prs = " ".join(f"{t} " + "/".join(f"{results[p]['mp@k'][k]:.1f}" for k in kappas) for p, t in tags)
    return f"mAP {maps} | {head} {prs}"
