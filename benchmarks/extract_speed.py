"""Extraction speed and peak memory of a preset, printed as JSON.

Each configuration runs in its own subprocess so that peak RSS is that configuration's alone.

    python benchmarks/extract_speed.py --preset r2d2 --weights r2d2-wasf-n16 IMAGE...
    python benchmarks/extract_speed.py --modes reference,float32,bfloat16 --size 1024x768

``--modes``: ``float32`` / ``bfloat16`` are delfi's fast path (folded BN, channels-last, strips);
``reference`` runs the network as the official code does (unfused, NCHW, whole levels) in the same
process set-up, as the baseline for speed-up and memory ratios. Without images, the brooklyn photo
of ../shared/data (DELFI_TEST_DATA) is used, resized to ``--size``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODES = {
    # R2D2
    "float32": {"precision": "float32"},
    "bfloat16": {"precision": "bfloat16"},
    "reference": {"fuse_batchnorm": False, "channels_last": False, "tile_pixels": 0},
    # DELF / DELG: the whole extraction, or only the network forward passes of the pyramid
    "full": {},
    "network": {"__network_only__": True},
}
DEFAULT_MODES = {"r2d2": "reference,float32,bfloat16", "delf": "network,full", "delg": "network,full"}


def network_only(model, image) -> int:
    """The bare forward passes of a DELF / DELG pyramid (backbone + heads, no selection)."""
    limited, *_ = model.prepare(image)
    layers = ("layer3", "layer4") if getattr(model.config, "extract_global", False) else ("layer3",)
    scales = sorted(set(model.config.scales) | set(getattr(model.config, "global_scales", [])))
    with model.autocast():
        for _, _, out in model.levels(limited, scales, layers):
            if hasattr(model, "local_outputs"):
                model.local_outputs(model.layer3(out))
            else:
                model.attention(model.layer3(out))
    return 0


def default_images(size: str, workdir: Path) -> list[str]:
    from PIL import Image

    root = Path(os.environ.get("DELFI_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    source = root / "r2d2" / "imgs" / "brooklyn.png"
    if not source.is_file():
        sys.exit(f"no images given and {source} not found (set DELFI_TEST_DATA or pass images)")
    width, height = (int(v) for v in size.split("x"))
    target = workdir / f"brooklyn_{width}x{height}.png"
    Image.open(source).convert("RGB").resize((width, height), Image.BILINEAR).save(target)
    return [str(target)]


def run_one(preset: str, weights: str | None, images: list[str], options: dict, repeat: int, threads: int) -> dict:
    """Runs inside the child process: load, warm up, time, report."""
    import resource

    import torch

    import delfi
    from delfi.io.images import read_image
    from delfi.runtime import limit_heap_fragmentation

    limit_heap_fragmentation()  # as the command line does
    torch.set_num_threads(threads)
    bare = options.pop("__network_only__", False)
    load = options.pop("__random__", None) is None
    model = delfi.models.create(preset, weights=weights, load=load, **options)
    decoded = [read_image(p) for p in images]
    model.extract(decoded[0][:, :256, :256])  # warm-up (oneDNN primitive creation)
    counts, started = [], time.perf_counter()
    with torch.inference_mode():
        for _ in range(repeat):
            for image in decoded:
                counts.append(network_only(model, image) if bare else len(model.extract(image)))
    seconds = time.perf_counter() - started
    n = repeat * len(decoded)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux: kilobytes
    return {
        "images": n,
        "seconds_per_image": seconds / n,
        "images_per_second": n / seconds,
        "features_per_image": sum(counts) / len(counts),
        "peak_rss_mb": peak_kb / 1024,
        "threads": threads,
        "torch": torch.__version__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="*")
    parser.add_argument("--preset", default="r2d2")
    parser.add_argument("--weights", default=None, help="weights name or path (default: the preset's; random if none)")
    parser.add_argument("--modes", default=None, help="default: reference,float32,bfloat16 (R2D2); network,full (DELF / DELG)")
    parser.add_argument("--random", action="store_true", help="random weights (DELF / DELG timing without a checkpoint)")
    parser.add_argument("--size", default="1024x768", help="resize of the default image")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--set", action="append", default=[], help="extra config override key=value")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        options = json.loads(args.child)
        print(json.dumps(run_one(args.preset, args.weights, args.images, options, args.repeat, args.threads)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        images = args.images or default_images(args.size, Path(tmp))
        extra = dict(item.split("=", 1) for item in args.set)
        if args.random:
            extra["__random__"] = True
        from delfi.models import resolve_config

        family = resolve_config(args.preset).model
        results = {}
        for mode in (args.modes or DEFAULT_MODES[family]).split(","):
            options = {**MODES[mode], **extra}
            command = [sys.executable, __file__, *images, "--preset", args.preset, "--repeat", str(args.repeat),
                       "--threads", str(args.threads), "--child", json.dumps(options)]  # fmt: skip
            if args.weights:
                command += ["--weights", args.weights]
            out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            results[mode] = json.loads(out.strip().splitlines()[-1])
    report = {"preset": args.preset, "weights": args.weights, "images": [Path(p).name for p in images], "results": results}
    if "network" in results and "full" in results:
        report["full_over_network_time"] = results["full"]["seconds_per_image"] / results["network"]["seconds_per_image"]
    if "reference" in results:
        base = results["reference"]
        report["speedup_vs_reference"] = {
            m: base["seconds_per_image"] / r["seconds_per_image"] for m, r in results.items() if m != "reference"
        }
        report["memory_ratio_vs_reference"] = {
            m: r["peak_rss_mb"] / base["peak_rss_mb"] for m, r in results.items() if m != "reference"
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
