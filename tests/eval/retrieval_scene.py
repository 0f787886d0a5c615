"""A synthetic retrieval scene for runner tests: queries, positives and distractors as feature stores.

Each query has local features; its positives hold an affine copy of a share of them (so spatial
verification finds many inliers), distractors hold unrelated features. Global descriptors are made
so that, for every query, one distractor scores ABOVE every positive: the global ranking is imperfect
and reranking must fix it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from delfi.io.features import FeatureStore
from delfi.types import Features

DIM_LOCAL, DIM_GLOBAL, N_LOCAL, SIZE = 32, 16, 200, 320


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _features(kp: np.ndarray, desc: np.ndarray, glob: np.ndarray) -> Features:
    n = len(kp)
    return Features(torch.from_numpy(kp.astype(np.float32)), torch.ones(n), torch.from_numpy(_unit(desc)),
                    global_descriptor=torch.from_numpy(_unit(glob)), image_size=(SIZE, SIZE))


def make_scene(n_queries: int = 3, positives: int = 2, distractors: int = 6, seed: int = 0):
    """Returns (query features dict, db features dict, positives {query: [db names]}) ."""
    rng = np.random.default_rng(seed)
    queries, db, truth = {}, {}, {}
    affine = np.array([[0.95, 0.08, 12.0], [-0.06, 1.02, -7.0]])
    for q in range(n_queries):
        qname = f"q{q}"
        kp = rng.uniform(0, SIZE - 1, (N_LOCAL, 2))
        desc = rng.standard_normal((N_LOCAL, DIM_LOCAL))
        g = rng.standard_normal(DIM_GLOBAL)
        queries[qname] = _features(kp, desc, g)
        truth[qname] = []
        for p in range(positives):
            keep = rng.random(N_LOCAL) < 0.5
            pdesc = np.where(keep[:, None], desc + 0.05 * rng.standard_normal(desc.shape), rng.standard_normal(desc.shape))
            pkp = np.where(keep[:, None], kp @ affine[:, :2].T + affine[:, 2], rng.uniform(0, SIZE - 1, kp.shape))
            name = f"q{q}_pos{p}"
            db[name] = _features(pkp, pdesc, g + 1.2 * rng.standard_normal(DIM_GLOBAL))
            truth[qname].append(name)
        # a distractor very close to the query globally (it outranks the positives)
        db[f"q{q}_lookalike"] = _features(rng.uniform(0, SIZE - 1, kp.shape), rng.standard_normal(desc.shape),
                                          g + 0.1 * rng.standard_normal(DIM_GLOBAL))
    for d in range(distractors):
        db[f"other{d}"] = _features(rng.uniform(0, SIZE - 1, (N_LOCAL, 2)), rng.standard_normal((N_LOCAL, DIM_LOCAL)),
                                    rng.standard_normal(DIM_GLOBAL))
    return queries, db, truth


def write_store(path: Path, features: dict[str, Features]) -> Path:
    with FeatureStore(path, "w", attrs={"model": "synthetic", "weights_sha256": "none", "config": {}}) as store:
        for name, f in features.items():
            store.put(name, f)
    return path


def write_images(folder: Path, names, suffix: str = ".jpg") -> None:
    """Small distinct JPEGs (for reports), one per name."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        colour = ((37 * i) % 256, (91 * i) % 256, (153 * i) % 256)
        path = folder / f"{name}{suffix}"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (SIZE, SIZE), colour).save(path)
