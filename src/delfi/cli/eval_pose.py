"""``delfi eval pose``: relative-pose AUC on pairs with ground-truth poses (SuperGlue / LoFTR protocol)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from delfi.config import DEFAULT_PRESET
from delfi.cli.common import ProgressBar, fail, stderr_console


def pose(
    pairs: Path = typer.Option(..., "--pairs", help="Pairs with ground truth: 'name0 name1 [rot0 rot1] K0(9) K1(9) T_0to1(16)' per line."),
    images: Optional[Path] = typer.Option(None, "--images", help="Folder the pairs' image names are relative to."),
    features: Optional[Path] = typer.Option(None, "--features", "-f", help="Pre-extracted feature store (names as in the pairs file): nothing is extracted."),
    preset: str = typer.Option(DEFAULT_PRESET, "--preset", "-p"),
    weights: Optional[str] = typer.Option(None, "--weights", "-w"),
    out: Path = typer.Option(Path("results"), "--out", "-o", help="Results folder (<out>/pose/<method>/)."),
    method: Optional[str] = typer.Option(None, "--method", help="Name of this run (default: preset-weights-confighash[-resizeN], or the feature store's name)."),
    resize: Optional[int] = typer.Option(None, "--resize", help="Extract from images whose longer side is this many px (default: as stored)."),
    threshold: float = typer.Option(1.0, "--threshold", help="RANSAC threshold (px; OpenCV gets it over the mean focal length)."),
    backend: str = typer.Option("opencv", "--backend", help="RANSAC backend: opencv | poselib."),
    ratio: Optional[float] = typer.Option(None, "--ratio", help="Lowe ratio test of the mutual-NN matcher."),
    max_keypoints: Optional[int] = typer.Option(None, "--max-keypoints", help="Use only each image's best N keypoints."),
    seed: int = typer.Option(0, "--seed"),
    pictures: bool = typer.Option(True, "--pictures/--no-pictures", help="Draw the 3 best and 3 worst pairs (needs --images)."),
    device: str = typer.Option("cpu", "--device"),
    overrides: Optional[List[str]] = typer.Argument(None, help="Config overrides key=value."),
) -> None:
    """Relative pose from mutual-NN matches and an essential matrix: AUC@5/10/20, mAA, median errors.

    Pose error = max(rotation angle, translation direction angle), a pair without a pose counts as
    failed (infinite error); AUC as SuperGlue / LoFTR compute it. The K of the pairs file describe the
    stored images (pixel centres at integer coordinates); features from turned (rot) or resized images
    are mapped back to them. Results in <out>/pose/<method>/: results.json (every pair), features.h5
    (cache), pairs/best-*.png and pairs/worst-*.png. A pair with missing images or bad features is
    listed and left out (exit 1); the rest is scored.
    """
    from delfi.cli.eval import _check_outputs, _extractor, _report_failures
    from delfi.eval.pose import read_pose_pairs
    from delfi.eval.pose_run import BENCHMARK, PRODUCTS, run_pose
    from delfi.eval.results import ResultsConflictError, claim_run_dir
    from delfi.match.verify import MissingBackendError, _check_options, _import_backend

    if images is None and features is None:
        raise fail("give --images (to extract features) or --features (a pre-extracted store)")
    if images is not None and not images.is_dir():
        raise fail(f"--images {images}: not a folder")
    if features is not None and not features.is_file():
        raise fail(f"--features {features}: no such file")
    if features is not None and (overrides or weights):
        raise fail("--features scores a pre-extracted store: --weights and overrides do not apply")
    if resize is not None and (features is not None or resize < 16):
        raise fail("--resize is for extraction (not with --features), at least 16 px" if resize >= 16
                   else f"--resize {resize}: give the longer side in px (>= 16)")
    try:
        _check_options("essential", backend, threshold, 0.99999, 10000, seed)
        _import_backend(backend)
    except (ValueError, MissingBackendError) as exc:
        raise fail(str(exc)) from None
    if images is not None:
        _check_outputs(out, images, method, [pairs, features])
    else:
        _check_outputs(out, features, method, [pairs])  # the store is an input: never the results folder
    try:
        pair_list = read_pose_pairs(pairs)
    except OSError as exc:
        raise fail(f"--pairs {pairs}: cannot read ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise fail(str(exc)) from None
    if not pair_list:
        raise fail(f"--pairs {pairs}: no pairs in the file")
    extract = None
    if features is None:
        model_extract, name = _extractor(preset, weights, list(overrides or []), device, method)
        extract = model_extract
        if method is None and resize:
            name = f"{name}-resize{int(resize)}"
    else:
        name = method or features.stem
    try:
        claim_run_dir(out / BENCHMARK / name, BENCHMARK, PRODUCTS)
    except ResultsConflictError as exc:
        raise fail(str(exc)) from None
    try:
        with ProgressBar(len(pair_list), "pairs", unit="pairs") as bar:
            report = run_pose(
                pair_list, images, extract, out, method=name, features_path=features, resize=resize,
                threshold=threshold, seed=seed, backend=backend, ratio=ratio, max_keypoints=max_keypoints,
                pictures=pictures and images is not None, on_pair=lambda label, status: bar.advance(label, status),
            )  # fmt: skip
    except (ResultsConflictError, FileNotFoundError, ValueError) as exc:
        raise fail(str(exc)) from None
    Console().print(report.table())
    statuses: dict[str, int] = {}
    for p in report.pairs:
        statuses[p.status] = statuses.get(p.status, 0) + 1
    stderr_console().print("verification: " + ", ".join(f"{n} {s}" for s, n in statuses.items()), highlight=False)
    drawn = pictures and images is not None and (report.out_dir / "pairs").is_dir()
    stderr_console().print(f"results -> {report.out_dir}/ (results.json{', pairs/' if drawn else ''})", highlight=False)
    _report_failures("pairs", report.failures, report.out_dir, images if images is not None else Path("."))
