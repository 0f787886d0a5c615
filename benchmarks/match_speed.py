"""Matching speed: mutual nearest neighbours and geometric verification, printed as JSON.

    python benchmarks/match_speed.py                      # everything, defaults below
    python benchmarks/match_speed.py --sizes 5000 --pairs 5 --device cuda

* ``mutual_nn``: random L2-normalised float32 descriptors (N x N x 128 by default), torch threads =
  CPU count, one warm-up call, then the median (and min) of ``--repeat`` timed calls. Target (not
  asserted): 5k x 5k under 0.3 s on CPU.
* ``ransac``: for every installed backend and every geometry it supports, ``--pairs`` synthetic
  pairs of ``--matches`` putative matches (``--inlier-ratio`` of them following a random homography /
  affine map / two-camera epipolar geometry with 1 px Gaussian noise, the rest uniform outliers);
  median time per pair of `estimate_geometry` (threshold 3 px, default options), the found / true
  inlier ratios and the median precision / recall of the inliers against the generated labels
  (with 1 px noise in both images some true inliers lie beyond 3 px: recall < 1 is expected).
  Target (not asserted): homography on 2000 matches under 20 ms with the default backend.

The machine's load average is recorded: on a shared CPU, timings taken under load are inflated.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import time

import numpy as np
import torch

from delfi.match import BACKENDS, GEOMETRIES, estimate_geometry, mutual_nn
from delfi.match.verify import BACKEND_GEOMETRIES

W, H = 1024, 768


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench_mutual_nn(n: int, dim: int, repeat: int, device: str) -> dict:
    g = torch.Generator().manual_seed(n)
    d0 = torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=1).to(device)
    d1 = torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=1).to(device)
    mutual_nn(d0, d1)  # warm-up
    _sync(device)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        matches = mutual_nn(d0, d1)
        _sync(device)
        times.append(time.perf_counter() - start)
    return {"n0": n, "n1": n, "dim": dim, "median_s": statistics.median(times), "min_s": min(times),
            "runs": repeat, "num_matches": len(matches)}  # fmt: skip


def _apply(m: np.ndarray, p: np.ndarray) -> np.ndarray:
    q = np.c_[p, np.ones(len(p))] @ m.T
    return q[:, :2] / q[:, 2:]


def _rotation(rng: np.random.Generator, angle: float) -> np.ndarray:
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    x = np.cross(np.eye(3), axis)
    return np.eye(3) + np.sin(angle) * x + (1 - np.cos(angle)) * x @ x


def synthetic_pair(geometry: str, k: int, inlier_ratio: float, rng: np.random.Generator):
    """(p0, p1, true inlier mask): a random model of the geometry, 1 px noise, uniform outliers."""
    if geometry == "fundamental":
        kk = np.array([[800.0, 0, W / 2], [0, 800, H / 2], [0, 0, 1]])
        pts = np.c_[rng.uniform(-4, 4, k), rng.uniform(-3, 3, k), rng.uniform(6, 14, k)]
        r, t = _rotation(rng, 0.15), np.r_[rng.uniform(0.5, 1.5), rng.normal(0, 0.2, 2)]
        q0, q1 = pts @ kk.T, (pts @ r.T + t) @ kk.T
        p0, p1 = q0[:, :2] / q0[:, 2:], q1[:, :2] / q1[:, 2:]
    else:
        m = np.eye(3)
        m[:2, :2] += rng.normal(0, 0.1, (2, 2))
        m[:2, 2] = rng.normal(0, 30, 2)
        if geometry == "homography":
            m[2, :2] = rng.normal(0, 1e-4, 2)
        p0 = rng.uniform([0, 0], [W, H], (k, 2))
        p1 = _apply(m, p0)
    p0, p1 = p0 + rng.normal(0, 1, p0.shape), p1 + rng.normal(0, 1, p1.shape)
    inlier = rng.random(k) < inlier_ratio
    p1[~inlier] = rng.uniform([0, 0], [W, H], (int((~inlier).sum()), 2))
    return p0, p1, inlier


def bench_ransac(backend: str, geometry: str, k: int, inlier_ratio: float, pairs: int) -> dict:
    rng = np.random.default_rng(0)
    data = [synthetic_pair(geometry, k, inlier_ratio, rng) for _ in range(pairs)]
    estimate_geometry(data[0][0], data[0][1], geometry, backend=backend)  # warm-up (imports, caches)
    times, found, precision, recall, failed = [], [], [], [], 0
    for p0, p1, truth in data:
        start = time.perf_counter()
        model, inliers = estimate_geometry(p0, p1, geometry, backend=backend)
        times.append(time.perf_counter() - start)
        failed += model is None
        found.append(float(inliers.mean()))
        precision.append(float((inliers & truth).sum() / max(inliers.sum(), 1)))
        recall.append(float((inliers & truth).sum() / max(truth.sum(), 1)))
    return {"backend": backend, "geometry": geometry, "matches": k, "pairs": pairs,
            "median_ms": 1e3 * statistics.median(times), "max_ms": 1e3 * max(times),
            "true_inlier_ratio": float(np.mean([d[2].mean() for d in data])),
            "found_inlier_ratio": statistics.median(found), "precision": statistics.median(precision),
            "recall": statistics.median(recall), "failed": failed}  # fmt: skip


def _versions() -> dict:
    out = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__}
    for name in ("cv2", "pydegensac", "poselib"):
        if importlib.util.find_spec(name) is not None:
            module = __import__(name)
            out[name] = getattr(module, "__version__", "installed")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="5000,20000", help="comma-separated N for N x N mutual NN")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=5, help="timed mutual NN runs (after 1 warm-up)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--matches", type=int, default=2000)
    parser.add_argument("--inlier-ratio", type=float, default=0.5)
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--skip-nn", action="store_true")
    parser.add_argument("--skip-ransac", action="store_true")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    report: dict = {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "device": args.device, "versions": _versions(),
                    "load_average_1min": os.getloadavg()[0]}  # fmt: skip
    if not args.skip_nn:
        sizes = [int(s) for s in args.sizes.split(",") if s]
        report["mutual_nn"] = [bench_mutual_nn(n, args.dim, args.repeat, args.device) for n in sizes]
    if not args.skip_ransac:
        available = [b for b in BACKENDS if importlib.util.find_spec("cv2" if b == "opencv" else b) is not None]
        report["ransac"] = [
            bench_ransac(b, g, args.matches, args.inlier_ratio, args.pairs)
            for b in available
            for g in GEOMETRIES
            if g in BACKEND_GEOMETRIES[b]
        ]
        report["ransac_unavailable"] = [b for b in BACKENDS if b not in available]
    targets = {}
    for entry in report.get("mutual_nn", []):
        if entry["n0"] == 5000 and args.device == "cpu":
            targets["mutual_nn_5k_under_0.3s"] = entry["median_s"] < 0.3
    for entry in report.get("ransac", []):
        if (entry["backend"], entry["geometry"], entry["matches"]) == ("opencv", "homography", 2000):
            targets["homography_2000_under_20ms"] = entry["median_ms"] < 20
    report["targets_met"] = targets
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
