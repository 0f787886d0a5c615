"""A small VLAD global descriptor for local-only features: the demo's fallback index when the ``asmk``
package (ASMK, `delfi.retrieval.asmk`) is not installed.

VLAD (Jegou et al., CVPR 2010) with the usual normalisations (Arandjelovic and Zisserman, CVPR
2013): a k-means codebook of ``k`` words (seeded Lloyd iterations in numpy, trained on the
database's descriptors), per word the sum of residuals ``x - c`` of the descriptors assigned to it,
each word's sum L2-normalised (intra-normalisation), the whole (k * D) vector signed-square-rooted
and L2-normalised. Two images compare by the dot product of their vectors (`GlobalIndex` "exact").
It is a demo-sized stand-in, not a tuned retrieval method: with 32 words and a few thousand
descriptors per image it separates the demo's scenes, not a million-image database.
"""

from __future__ import annotations

import numpy as np

__all__ = ["train_codebook", "vlad", "vlad_vectors"]


def train_codebook(descriptors: list[np.ndarray], k: int = 32, *, iterations: int = 15, sample: int = 50_000,
                   seed: int = 0) -> np.ndarray:
    """(k, D) float32 k-means centroids of (up to ``sample``) descriptors drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    data = np.concatenate([d for d in descriptors if len(d)]).astype(np.float32) if descriptors else np.zeros((0, 1))
    if len(data) == 0:
        raise ValueError("no local descriptors to train the VLAD codebook on")
    if len(data) > sample:
        data = data[np.sort(rng.choice(len(data), sample, replace=False))]
    k = max(1, min(int(k), len(data)))
    centroids = data[rng.choice(len(data), k, replace=False)].copy()
    for _ in range(iterations):
        assign = _assign(data, centroids)
        for j in range(k):
            members = data[assign == j]
            centroids[j] = members.mean(0) if len(members) else data[rng.integers(len(data))]
    return centroids


def _assign(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    distances = (x * x).sum(1, keepdims=True) - 2 * x @ centroids.T + (centroids * centroids).sum(1)
    return np.argmin(distances, axis=1)


def vlad(descriptors: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """The (k * D,) float32 VLAD vector of one image's (N, D) descriptors (zeros when N = 0)."""
    k, dim = centroids.shape
    out = np.zeros((k, dim), np.float32)
    if len(descriptors):
        x = descriptors.astype(np.float32)
        assign = _assign(x, centroids)
        np.add.at(out, assign, x - centroids[assign])
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    out = np.where(norms > 0, out / np.maximum(norms, 1e-12), 0).reshape(-1)
    out = np.sign(out) * np.sqrt(np.abs(out))
    total = np.linalg.norm(out)
    return (out / total if total > 0 else out).astype(np.float32)


def vlad_vectors(descriptors: list[np.ndarray], centroids: np.ndarray) -> np.ndarray:
    """(N_images, k * D) VLAD vectors."""
    dim = centroids.size
    return np.stack([vlad(d, centroids) for d in descriptors]) if descriptors else np.zeros((0, dim), np.float32)
