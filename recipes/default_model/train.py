"""Train delfi's default local-feature model ("delfi-lite") from scratch, exactly as it was made.

    python recipes/default_model/train.py --out RUN [key=value ...]

Data: the public-domain / CC0 photographs that scikit-image ships (``delfi.demo.photos.PHOTOS``, in
that order) for training and ``cell.png`` (CC0) for validation; no other data, no other weights. The
script checks every file against ``photos.tsv`` (sha256), then trains in two stages (seed, steps,
schedule: ``src/delfi/configs/train/delfi-lite.yaml`` and ``delfi-lite-reliability.yaml``):

1. ``delfi train r2d2 --preset delfi-lite`` into ``RUN/stage1``: descriptors and repeatability;
2. ``delfi train r2d2 --preset delfi-lite-reliability net.init_from=RUN/stage1/last.ckpt`` into
   ``RUN/stage2``: the same network with its reliability head reset and trained again;

and exports the last checkpoint of stage 2 as ``RUN/delfi-lite.pt`` (`delfi.train.export`, with the
photos named by file name instead of this machine's paths, so that the file does not depend on
where things are installed), then prints its sha256. ``key=value`` overrides go to ``delfi train`` (the recorded file is made without
any). The image list is written to a temporary folder that is removed at the end.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
VAL_PHOTO = "cell.png"  # CC0 (skimage.data.cell: "This image is CC0, dedicated to the public domain")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def training_photos() -> tuple[list[Path], Path]:
    """(training photo files in recipe order, the validation photo), from the installed scikit-image."""
    from delfi.demo.photos import PHOTOS, data_dir, photo_path

    return [photo_path(p) for p in PHOTOS], data_dir() / VAL_PHOTO


def check_against_record(files: list[Path]) -> list[str]:
    """Differences between the files and ``photos.tsv`` (name, sha256): empty when all match."""
    with open(HERE / "photos.tsv", newline="") as fh:
        recorded = {row["file"]: row["sha256"] for row in csv.DictReader(fh, delimiter="\t")}
    problems = [f"{f.name}: sha256 {sha256(f)[:12]}…, recorded {recorded[f.name][:12]}…"
                for f in files if f.name in recorded and sha256(f) != recorded[f.name]]
    problems += [f"{f.name}: not in photos.tsv" for f in files if f.name not in recorded]
    return problems


def export(checkpoint: Path, out: Path, train: list[Path], val: Path, stage1: Path) -> Path:
    """The weights file of ``checkpoint`` (stage 2, which started from ``stage1``), its provenance
    naming the photos by file name and listing both stages."""
    import skimage

    from delfi.models.checkpoints import load_checkpoint
    from delfi.train.export import export_weights

    provenance = load_checkpoint(checkpoint).provenance
    first = load_checkpoint(stage1).provenance
    stages = [{"preset": "delfi-lite", "seed": first["seed"], "steps": first["steps"]},
              {"preset": "delfi-lite-reliability", "seed": provenance["seed"], "steps": provenance["steps"]}]
    names = {"images": [p.name for p in train], "val_images": [val.name],
             "source": f"scikit-image {skimage.__version__} skimage/data (recipes/default_model/photos.tsv)"}
    config = dict(provenance.get("train_config") or {})
    config["data"] = {**config.get("data", {}), "images": "photos.tsv (train)", "val_images": "photos.tsv (validation)"}
    if config.get("net", {}).get("init_from"):
        config["net"] = {**config["net"], "init_from": "RUN/stage1/last.ckpt"}
    return export_weights(checkpoint, out, provenance={
        "stages": stages, "data": names, "train_config": config, "command": ["python", "recipes/default_model/train.py", "--out", "RUN"]})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="the run folder (new or empty)")
    parser.add_argument("overrides", nargs="*", help="key=value settings for delfi train")
    args = parser.parse_args(argv)
    train, val = training_photos()
    problems = check_against_record(train + [val])
    if problems:
        print("warning: these photos differ from the recorded ones; the model will not be the recorded file:\n  "
              + "\n  ".join(problems), file=sys.stderr)
    if args.out.exists() and (not args.out.is_dir() or any(args.out.iterdir())):
        parser.error(f"--out {args.out}: give a new or empty folder")
    delfi = [sys.executable, "-m", "delfi"]
    stage1, stage2 = args.out / "stage1", args.out / "stage2"
    with tempfile.TemporaryDirectory(prefix="delfi-recipe-") as tmp:
        listing = Path(tmp) / "photos.txt"
        listing.write_text("".join(f"{p}\n" for p in train))
        start = time.time()
        common = ["--images", str(listing), "--val-images", str(val), "--no-progress"]
        subprocess.run([*delfi, "train", "r2d2", "--preset", "delfi-lite", *common, "--out", str(stage1),
                        *args.overrides], check=True)
        subprocess.run([*delfi, "train", "r2d2", "--preset", "delfi-lite-reliability", *common, "--out", str(stage2),
                        f"net.init_from={stage1 / 'last.ckpt'}", *args.overrides], check=True)
        minutes = (time.time() - start) / 60
    weights = export(stage2 / "last.ckpt", args.out / "delfi-lite.pt", train, val, stage1 / "last.ckpt")
    print(f"trained in {minutes:.1f} min; weights {weights} sha256 {sha256(weights)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
