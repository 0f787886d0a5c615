"""Structure from motion on the 10 Sacre Coeur photos: OpenCV SIFT vs delfi's models, printed as JSON.

    python benchmarks/sfm_sacre_coeur.py [--methods sift,r2d2,delfi-lite] [--precision bfloat16]
                                         [--top-k 5000] [--threads 2] [--work DIR] [--reuse]

Per method: features of the 10 photos (``../shared/data/images/sacre_coeur``; ``DELFI_TEST_DATA``
overrides the data root) into a delfi feature store, delfi's matching of all 45 pairs (mutual nearest
neighbours, Lowe ratio, fundamental matrix by RANSAC: `delfi.match.pipeline.match_pairs`), then
`delfi.sfm.run_sfm` (COLMAP database, COLMAP's incremental mapper, seeded). Reported: registered images,
3-D points, mean track length, mean reprojection error (px), verified pairs, keypoints per image and the
extraction / matching / mapping seconds.

Methods: ``sift`` (OpenCV SIFT, 4000 per image, RootSIFT descriptors, ratio 0.8); ``r2d2`` (the
official ``r2d2_WASF_N16`` weights, ``../shared/data/r2d2/models``, the ``r2d2`` preset with
``--top-k`` and ``--precision``); ``delfi-lite`` (delfi's default model, its preset). The learned
methods match with ``--learned-ratio`` (default 0.95; ``none``: mutual nearest neighbours only).
``--work`` keeps the stores (default: a temp folder); with ``--reuse`` a method whose feature store
is already there is not extracted again.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("DELFI_TEST_DATA", ROOT.parent / "shared" / "data"))
IMAGES = DATA / "images" / "sacre_coeur"
R2D2_WEIGHTS = DATA / "r2d2" / "models" / "r2d2_WASF_N16.pt"


def sift_store(names: list[str], out: Path) -> None:
    """OpenCV SIFT (4000 features, RootSIFT descriptors) of each image into a feature store."""
    import cv2

    from delfi.io.features import FeatureStore
    from delfi.types import Features

    sift = cv2.SIFT_create(nfeatures=4000)
    with FeatureStore(out, "w", attrs={"model": "opencv-sift"}) as store:
        for name in names:
            grey = cv2.imread(str(IMAGES / name), cv2.IMREAD_GRAYSCALE)
            found, desc = sift.detectAndCompute(grey, None)
            desc = np.sqrt(desc / np.maximum(desc.sum(1, keepdims=True), 1e-8)).astype(np.float32)
            store.put(name, Features(torch.tensor([k.pt for k in found], dtype=torch.float32),
                                     torch.tensor([k.response for k in found]), torch.from_numpy(desc),
                                     image_size=(grey.shape[1], grey.shape[0])))  # fmt: skip


def model_store(model, names: list[str], out: Path, tag: str) -> None:
    """``model.extract`` of each image into a feature store."""
    from delfi.io.features import FeatureStore

    with FeatureStore(out, "w", attrs={"model": tag}) as store, torch.inference_mode():
        for name in names:
            store.put(name, model.extract(IMAGES / name))


def extract(method: str, names: list[str], out: Path, args) -> None:
    import delfi.models

    if method == "sift":
        sift_store(names, out)
    elif method == "r2d2":
        model = delfi.models.create("r2d2", weights=str(R2D2_WEIGHTS), top_k=args.top_k, precision=args.precision)
        model_store(model.eval(), names, out, f"r2d2_WASF_N16 top_k={args.top_k} {args.precision}")
    elif method == "delfi-lite":
        model_store(delfi.models.create("delfi-lite").eval(), names, out, "delfi-lite")
    else:
        raise SystemExit(f"unknown method {method!r}: sift, r2d2 or delfi-lite")


def run(method: str, names: list[str], work: Path, args) -> dict:
    from delfi.io.features import FeatureStore
    from delfi.match.pipeline import MatchingConfig, match_pairs
    from delfi.sfm import MappingOptions, run_sfm

    folder = work / method
    folder.mkdir(parents=True, exist_ok=True)
    feats = folder / "features.h5"
    started = time.perf_counter()
    extraction = None
    if not (args.reuse and feats.exists()):
        extract(method, names, feats, args)
        extraction = round(time.perf_counter() - started, 1)
    with FeatureStore(feats) as store:
        keypoints = [len(store.get(name)) for name in names]
    ratio = 0.8 if method == "sift" else args.learned_ratio
    started = time.perf_counter()
    matched = match_pairs(feats, list(itertools.combinations(names, 2)), folder / "matches.h5",
                          MatchingConfig(ratio=ratio, geometry="fundamental"), overwrite=True)  # fmt: skip
    matching = round(time.perf_counter() - started, 1)
    shutil.rmtree(folder / "sfm", ignore_errors=True)  # made by an earlier run of this script
    report = run_sfm(feats, folder / "matches.h5", IMAGES, folder / "sfm", mapping=MappingOptions(threads=args.threads))
    result = report.result
    return {
        "registered": result.registered, "images": result.images, "points3D": result.points3D,
        "mean_track_length": round(result.mean_track_length, 3),
        "mean_reprojection_error_px": round(result.mean_reprojection_error, 3),
        "verified_pairs": f"{matched.verified} of {matched.total}", "ratio": ratio,
        "keypoints_per_image": round(float(np.mean(keypoints))),
        "seconds": {"extraction": extraction, "matching": matching, "mapping": round(result.seconds, 1),
                    "export": round(report.export.seconds, 1)},
    }  # fmt: skip


def _ratio(text: str) -> float | None:
    return None if text.lower() == "none" else float(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default="sift,r2d2,delfi-lite")
    parser.add_argument("--precision", default="bfloat16", help="precision of the R2D2 network (float32 | bfloat16)")
    parser.add_argument("--top-k", type=int, default=5000, help="keypoints per image of R2D2")
    parser.add_argument("--learned-ratio", type=_ratio, default=0.95,
                        help="Lowe ratio of the learned descriptors ('none': mutual nearest neighbours only)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--work", type=Path, default=None, help="keep the stores and models here")
    parser.add_argument("--reuse", action="store_true", help="reuse feature stores found in --work")
    args = parser.parse_args()
    if not IMAGES.is_dir():
        raise SystemExit(f"test images not found under {IMAGES} (set DELFI_TEST_DATA)")
    torch.set_num_threads(args.threads)
    names = sorted(p.name for p in IMAGES.glob("*.jpg"))
    work = args.work or Path(tempfile.mkdtemp(prefix="delfi-sfm-bench-"))
    out = {"images": len(names), "threads": args.threads, "r2d2_settings": {"weights": R2D2_WEIGHTS.name, "top_k": args.top_k,
                                                                    "precision": args.precision}}  # fmt: skip
    for method in args.methods.split(","):
        out[method] = run(method, names, work, args)
        print(json.dumps({method: out[method]}), flush=True)
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
