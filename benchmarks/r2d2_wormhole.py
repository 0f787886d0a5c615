"""R2D2 on the real HPatches sequence v_wormhole: MMA@1..10 of delfi's variants next to the official
extractor's own outputs, printed as JSON.

    python benchmarks/r2d2_wormhole.py [--weights r2d2_WASF_N16.pt] [--reference wasf]

Variants: float32 with delfi's pixel-centre keypoint mapping (the default), float32 with the
official ``x * W / w`` mapping, bfloat16; the official ``.r2d2`` files as written and converted to
the pixel-centre convention; and the pixel-centre keypoints scored with the homographies read as
corner-origin (``T(-0.5) H T(+0.5)``), to test which convention the HPatches homographies follow.
Data: ../shared/data (DELFI_TEST_DATA).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from delfi.eval.hpatches import evaluate_sequences
from delfi.io.npz import official_r2d2_to_pixel_centre, read_r2d2_npz
from delfi.models.r2d2 import R2D2, R2D2Config

SEQUENCE = "v_wormhole"


def corner_origin(h: np.ndarray) -> np.ndarray:
    """A homography defined on corner-origin pixel coordinates, expressed on pixel-centre ones."""
    shift = np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1]])
    return np.linalg.inv(shift) @ h @ shift


def mma(features: dict[int, object], root: Path, corner: bool = False) -> dict[str, float]:
    if corner:
        import delfi.eval.hpatches as hp

        original = hp.load_homography
        hp.load_homography = lambda *a, **k: corner_origin(original(*a, **k))
        try:
            result = evaluate_sequences(lambda seq, k: features[k], root, [SEQUENCE])
        finally:
            hp.load_homography = original
    else:
        result = evaluate_sequences(lambda seq, k: features[k], root, [SEQUENCE])
    return {f"mma@{t}": round(result.mma(t), 4) for t in range(1, 11)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default="r2d2_WASF_N16.pt")
    parser.add_argument("--reference", default="wasf", help="folder of official outputs under r2d2/reference")
    args = parser.parse_args()
    data = Path(os.environ.get("DELFI_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    root = data / "hpatches"
    weights = data / "r2d2" / "models" / args.weights
    report, timings = {}, {}
    for name, options in {
        "float32_pixel_centre": {},
        "float32_official_mapping": {"keypoint_mapping": "official"},
        "bfloat16_pixel_centre": {"precision": "bfloat16"},
    }.items():
        model = R2D2(R2D2Config(**options)).load_weights(weights)
        started = time.perf_counter()
        features = {k: model.extract(root / SEQUENCE / f"{k}.ppm") for k in range(1, 7)}
        timings[name] = round((time.perf_counter() - started) / 6, 2)
        report[name] = mma(features, root)
        if name == "float32_pixel_centre":
            report["float32_pixel_centre_corner_origin_H"] = mma(features, root, corner=True)
    official = {k: read_r2d2_npz(data / "r2d2/reference" / args.reference / f"wormhole_{k}.ppm.r2d2") for k in range(1, 7)}
    report["official_files"] = mma(official, root)
    report["official_files_pixel_centre"] = mma({k: official_r2d2_to_pixel_centre(f) for k, f in official.items()}, root)
    print(json.dumps({"weights": args.weights, "seconds_per_image": timings, "mma": report}, indent=2))


if __name__ == "__main__":
    torch.set_num_threads(os.cpu_count() or 1)
    main()
