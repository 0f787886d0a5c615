"""Validation metrics of the landmark methods, from descriptors computed during training.

- `leave_one_out_map`: each held-out image queries the other held-out images by cosine similarity;
  its positives are the images of its class (queries without any are left out); mean of the
  revisited-Oxford average precision (`delfi.eval.revisitop.average_precision`), as a fraction.
- `place_recalls`: recall@N (percent) of the queries against the database by global descriptor,
  positives within ``radius`` metres (`delfi.eval.vpr`, the code of ``delfi eval vpr``).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

__all__ = ["leave_one_out_map", "place_recalls", "RECALL_NS"]

RECALL_NS = (1, 5, 10, 20)


def leave_one_out_map(descriptors: torch.Tensor, labels: torch.Tensor) -> float:
    """mAP (0..1) of (N, D) L2-normalised descriptors with (N,) class labels; NaN without any
    query that has a positive."""
    from delfi.eval.revisitop import average_precision

    x = torch.nn.functional.normalize(descriptors.float(), dim=1).numpy()
    similarity = x @ x.T  # numpy: unaffected by an autocast context
    labels_np = labels.numpy()
    aps = []
    for q in range(len(labels_np)):
        others = np.delete(np.arange(len(labels_np)), q)
        positives = labels_np[others] == labels_np[q]
        if not positives.any():
            continue
        order = others[np.argsort(-similarity[q, others], kind="stable")]
        ranks = np.flatnonzero(labels_np[order] == labels_np[q])
        aps.append(average_precision(ranks, int(positives.sum())))
    return float(np.mean(aps)) if aps else float("nan")


def place_recalls(descriptors: torch.Tensor, kinds: torch.Tensor, utm: np.ndarray, radius: float = 25.0,
                  ns: Sequence[int] = RECALL_NS) -> dict[str, float]:
    """``{"recall@N": percent}`` of queries (``kinds == 1``) against the database (``kinds == 0``).

    Args:
        descriptors: (N, D) global descriptors of the validation images (database and queries).
        kinds: (N,) 0 database, 1 query.
        utm: (N, 2) UTM (east, north) of the same images.
    """
    from delfi.eval.vpr import positives_within, recall_at_n

    kinds_np = kinds.numpy()
    db, q = np.flatnonzero(kinds_np == 0), np.flatnonzero(kinds_np == 1)
    x = torch.nn.functional.normalize(descriptors.float(), dim=1).numpy()
    similarity = x[q] @ x[db].T  # numpy: unaffected by an autocast context
    k = min(max(ns), len(db))
    predictions = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
    positives = positives_within(utm[db], utm[q], radius)
    return {f"recall@{n}": value for n, value in recall_at_n(predictions, positives, ns).items()}
