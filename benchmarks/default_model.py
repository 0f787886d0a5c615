"""Benchmark of candidate default models against OpenCV SIFT and the official R2D2 weights, as JSON.

    python benchmarks/default_model.py [--official PATH] [--weights W ...] [--no-default] [--no-sift] [--no-official]
                                       [--out results.json] [key=value ...]

Methods: delfi's default model (the embedded ``delfi-lite`` weights with the ``delfi-lite`` preset;
``--no-default`` leaves it out); OpenCV SIFT (5000 features, L2-normalised descriptors, mutual nearest neighbours); the
official ``r2d2_WASF_N16`` weights (``--official``, default ``../shared/data/r2d2/models/...``,
``DELFI_TEST_DATA`` overrides the data root); every ``--weights`` (name or path: e.g. the future
default model) with ``--preset`` (default r2d2) and the trailing ``key=value`` settings.

Per method:
- HPatches ``v_wormhole`` (`delfi.eval.hpatches_run.run_hpatches`: D2-Net protocol, mutual NN):
  MMA@1/3/5 and homography accuracy at 1/3/5 px (RANSAC 3 px, corner error);
- EVD (`delfi.eval.evd.run_evd`): success rate (corner error <= 10 px), homography accuracy at
  5/10/20 px, median corner error of the solved pairs;
- extraction time per 1024x768 image (HPatches v_wormhole/1.ppm resized, one warm-up then the
  median of 3) and peak memory (max RSS) of a fresh process that only loads the method and
  extracts that image, with the allocator setting of the ``delfi`` command
  (`delfi.runtime.limit_heap_fragmentation`) (``extraction_rss_mib``: above the baseline of the libraries every method
  imports, torch, OpenCV and delfi, measured in the same process before the model loads); the
  benchmarks run in a second fresh process. Each method runs in its own
  subprocesses, so every peak RSS is that method's alone.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("DELFI_TEST_DATA", ROOT.parent / "shared" / "data"))
SEQUENCE = "v_wormhole"


# ----------------------------------------------------------------------------------- extractors


def sift_extractor(n_features: int = 5000):
    import cv2
    import numpy as np
    import torch
    from PIL import Image

    from delfi.types import Features

    sift = cv2.SIFT_create(nfeatures=n_features)

    def extract(path) -> Features:
        rgb = np.asarray(Image.open(path).convert("RGB"))
        grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        keypoints, descriptors = sift.detectAndCompute(grey, None)
        if descriptors is None:
            descriptors = np.zeros((0, 128), np.float32)
        keypoints = keypoints[:n_features]
        descriptors = descriptors[:n_features].astype(np.float32)
        descriptors /= np.maximum(np.linalg.norm(descriptors, axis=1, keepdims=True), 1e-12)
        xy = np.array([k.pt for k in keypoints], np.float32).reshape(-1, 2)  # OpenCV: pixel centres at integers
        return Features(torch.from_numpy(xy), torch.tensor([k.response for k in keypoints], dtype=torch.float32),
                        torch.from_numpy(descriptors), torch.tensor([k.size for k in keypoints], dtype=torch.float32),
                        None, (grey.shape[1], grey.shape[0]))

    return extract


def delfi_extractor(preset: str, weights: str, settings: list[str]):
    from delfi.config import config_to_dict
    from delfi.models import create, resolve_config

    config = resolve_config(preset, list(settings) + [f"weights={weights}"])
    model = create(preset, device="cpu", **config_to_dict(config))
    return model.extract


def make_extractor(spec: dict):
    if spec["kind"] == "sift":
        return sift_extractor()
    return delfi_extractor(spec["preset"], spec["weights"], spec["settings"])


# ------------------------------------------------------------------------------- worker processes


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def speed_worker(spec: dict, work: Path) -> dict:
    from PIL import Image

    image = work / "speed_1024x768.png"
    if not image.exists():
        Image.open(DATA / "hpatches" / SEQUENCE / "1.ppm").convert("RGB").resize((1024, 768), Image.Resampling.LANCZOS).save(image)
    from delfi.runtime import limit_heap_fragmentation

    limit_heap_fragmentation()  # as the `delfi` command does before any work
    import cv2  # noqa: F401  the libraries every method loads: their memory is the baseline
    import torch  # noqa: F401

    import delfi.models  # noqa: F401
    import delfi.types  # noqa: F401

    baseline = peak_rss_mib()
    started = time.perf_counter()
    extract = make_extractor(spec)
    load_seconds = time.perf_counter() - started
    extract(image)  # warm-up
    times, n = [], 0
    for _ in range(3):
        t0 = time.perf_counter()
        n = len(extract(image))
        times.append(time.perf_counter() - t0)
    return {"seconds_per_1024x768_image": sorted(times)[1], "load_seconds": load_seconds, "features": n,
            "peak_rss_mib": peak_rss_mib(), "baseline_rss_mib": baseline,
            "extraction_rss_mib": peak_rss_mib() - baseline}


def eval_worker(spec: dict, work: Path) -> dict:
    from delfi.eval.evd import run_evd
    from delfi.eval.homography import homography_accuracy
    from delfi.eval.hpatches_run import run_hpatches

    extract = make_extractor(spec)
    name = spec["name"]
    hp = run_hpatches(DATA / "hpatches", extract, work, method=name, sequences=[SEQUENCE], plot=False)
    summary = hp.summary()
    evd = run_evd(DATA / "evd", extract, work, method=name, pictures=False)
    es = evd.summary()
    return {
        "hpatches_v_wormhole": {
            "mma": {str(t): summary["mma"][t] for t in (1, 3, 5)},
            "homography_accuracy": {str(t): v for t, v in summary["homography_accuracy"]["overall"].items()},
            "features_per_image": summary["n_feats"], "matches_per_pair": summary["n_matches"],
            "n_pairs": summary["n_pairs"],
        },
        "evd": {
            "success_rate@10px": es["success_rate"],
            "homography_accuracy": {str(t): v for t, v in
                                    homography_accuracy([p.corner_error for p in evd.pairs], (5, 10, 20)).items()},
            "median_corner_error_solved": es["median_corner_error_solved"], "n_pairs": es["n_pairs"],
            "n_solved": es["n_solved"], "features_per_image": es["mean_feats"],
        },
        "eval_peak_rss_mib": peak_rss_mib(),
    }


def run_worker(mode: str, spec: dict, work: Path) -> dict:
    command = [sys.executable, __file__, "--worker", mode, "--spec", json.dumps(spec), "--work", str(work)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1][:500]}
    return json.loads(done.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------- main


def main() -> None:
    from delfi.eval.results import json_safe

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official", default=str(DATA / "r2d2" / "models" / "r2d2_WASF_N16.pt"))
    parser.add_argument("--weights", action="append", default=[], help="more R2D2-family weights (repeatable)")
    parser.add_argument("--preset", default="r2d2", help="preset of the official and --weights methods")
    parser.add_argument("--no-default", action="store_true", help="leave out delfi's default model (delfi-lite)")
    parser.add_argument("--no-sift", action="store_true")
    parser.add_argument("--no-official", action="store_true")
    parser.add_argument("--speed-only", action="store_true", help="only the time and memory of one 1024x768 image")
    parser.add_argument("--out", type=Path, help="write the JSON here too")
    parser.add_argument("--work", type=Path, help="folder for the eval runs (default: a temporary one)")
    parser.add_argument("--worker", choices=("speed", "eval"), help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    parser.add_argument("settings", nargs="*", help="key=value settings of the delfi methods")
    args = parser.parse_args()

    if args.worker:
        print(json.dumps(json_safe((speed_worker if args.worker == "speed" else eval_worker)(json.loads(args.spec), args.work))))
        return
    if not (DATA / "hpatches" / SEQUENCE).is_dir() or not (DATA / "evd").is_dir():
        sys.exit(f"test data not found under {DATA} (set DELFI_TEST_DATA)")
    specs = []
    if not args.no_default:
        specs.append({"name": "delfi-lite (default)", "kind": "delfi", "preset": "delfi-lite", "weights": "delfi-lite",
                      "settings": args.settings})
    if not args.no_sift:
        specs.append({"name": "sift-5000", "kind": "sift"})
    if not args.no_official:
        specs.append({"name": "r2d2_WASF_N16-official", "kind": "delfi", "preset": args.preset, "weights": args.official,
                      "settings": args.settings})
    for i, weights in enumerate(args.weights):
        stem = Path(weights).stem if Path(weights).suffix else weights
        specs.append({"name": f"{stem}" if stem not in [s["name"] for s in specs] else f"{stem}-{i}", "kind": "delfi",
                      "preset": args.preset, "weights": weights, "settings": args.settings})
    with tempfile.TemporaryDirectory(prefix="delfi-bench-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        results = {"data": str(DATA), "cpu_threads": os.cpu_count(), "methods": {}}
        for spec in specs:
            started = time.perf_counter()
            entry = {"spec": spec, "speed": run_worker("speed", spec, work)}
            if not args.speed_only:
                entry.update(run_worker("eval", spec, work))
            entry["wall_seconds"] = time.perf_counter() - started
            results["methods"][spec["name"]] = entry
            print(f"{spec['name']}: done in {entry['wall_seconds']:.0f} s", file=sys.stderr)
    text = json.dumps(json_safe(results), indent=2)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
