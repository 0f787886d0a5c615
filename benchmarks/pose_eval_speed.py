"""Time of `delfi eval pose` on pre-extracted features: 100 synthetic pairs, printed as JSON.

    python benchmarks/pose_eval_speed.py [--pairs 100] [--points 1500] [--backend opencv]

Each pair is a synthetic two-view scene (`delfi.datasets.synthetic_two_view`, 0.5 px noise, 30 %
outliers, 128-D descriptors) whose keypoints and descriptors are stored in a feature store; the timed
part is `delfi.eval.pose_run.run_pose` on that store (mutual NN, essential matrix by RANSAC, pose
errors, AUC, results.json; no pictures), like ``delfi eval pose --features STORE``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=100)
    parser.add_argument("--points", type=int, default=1500, help="true correspondences per pair")
    parser.add_argument("--backend", default="opencv")
    args = parser.parse_args()

    from delfi.datasets.synthetic_two_view import make_two_view_scene
    from delfi.eval.pose import PosePair
    from delfi.eval.pose_run import run_pose
    from delfi.io.features import FeatureStore
    from delfi.types import Features

    with tempfile.TemporaryDirectory() as tmp:
        store_path, pairs = Path(tmp) / "feats.h5", []
        with FeatureStore(store_path, "w") as store:
            for k in range(args.pairs):
                scene = make_two_view_scene(args.points, noise_px=0.5, outlier_ratio=0.3, seed=k,
                                            rotation_deg=5 + k % 20)  # fmt: skip
                for side, (kp, desc) in enumerate(((scene.keypoints0, scene.descriptors0),
                                                   (scene.keypoints1, scene.descriptors1))):  # fmt: skip
                    n = len(kp)
                    store.put(f"{k}/{side}.png", Features(torch.from_numpy(kp).float(), torch.ones(n),
                                                          torch.from_numpy(desc), image_size=scene.image_size))
                pairs.append(PosePair(f"{k}/0.png", f"{k}/1.png", 0, 0, scene.K0, scene.K1, scene.T_0to1))
        started = time.perf_counter()
        report = run_pose(pairs, None, None, Path(tmp) / "out", method="bench", features_path=store_path,
                          backend=args.backend, pictures=False)  # fmt: skip
        seconds = time.perf_counter() - started
    summary = report.summary()
    print(json.dumps({
        "pairs": args.pairs, "keypoints_per_image": round(args.points / 0.7), "backend": args.backend,
        "threads": torch.get_num_threads(), "seconds": round(seconds, 2),
        "seconds_per_pair": round(seconds / args.pairs, 4), "auc@5": round(summary["auc@5"], 4),
        "median_pose_error_deg": round(summary["median_pose_error"], 3),
    }, indent=2))


if __name__ == "__main__":
    main()
