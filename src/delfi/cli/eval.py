"""``delfi eval``: standard benchmarks (HPatches, EVD) for any preset and weights."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from delfi.config import DEFAULT_PRESET
from delfi.cli.common import FAILURES_SHOWN, ProgressBar, fail, load_model, refuse_output_among_inputs, stderr_console

app = typer.Typer(help="Benchmarks: HPatches (MMA, homography accuracy), EVD, relative pose (AUC), revisited Oxford/Paris, place recognition.", no_args_is_help=True)


CONTENT_KEYS = ("weights", "backbone_weights", "pca")
"""Config fields naming files: the method name depends on their content, not on their spelling."""


def method_name(preset: str, config, weights_sha256: Optional[str] = None) -> str:
    """A name that encodes the settings, so cached features never mix configurations.

    ``<preset>-<weights>-<config hash>``: the weights part is the known weights' name when the file's
    content is a known entry's, else ``sha-<first 10 hex digits of its sha256>``; the hash covers
    the config with every file it names (weights, backbone weights, PCA) replaced by the file's
    sha256. So ``r2d2-wasf-n16``, ``/path/r2d2_WASF_N16.pt``, a copy or a link to it give one
    method name and share one feature cache.

    Args:
        weights_sha256: the weights' digest when already known (a loaded model's), else computed.
    """
    from delfi.config import config_to_dict
    from delfi.models.weights import known_weights_by_sha256

    settings = config_to_dict(config)
    label = "random"
    for key in CONTENT_KEYS:
        value = settings.get(key)
        if not value:
            continue
        digest = weights_sha256 if key == "weights" and weights_sha256 else _content_digest(key, value)
        settings[key] = {"sha256": digest}
        if key == "weights":
            known = known_weights_by_sha256(digest)
            label = known.name if known is not None else f"sha-{digest[:10]}"
    digest = hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return f"{Path(preset).stem}-{label}-{digest}"


def _content_digest(key: str, value) -> str:
    """sha256 of the file a config field names (weights by name or path, a PCA file by path)."""
    from delfi.models.weights import sha256_file, weights_sha256

    if key == "pca":
        return sha256_file(Path(str(value)).expanduser())
    return weights_sha256(str(value))


def _extractor(preset: str, weights: Optional[str], settings: list[str], device: str, method: Optional[str]):
    model, config = load_model(preset, weights, settings, device)
    return model.extract, method or method_name(preset, config, getattr(model, "weights_sha256", None))


def _check_outputs(out: Path, root: Path, method: Optional[str], inputs: list) -> None:
    """Exit 2 (nothing done) for an --out that is an input, inside the dataset, or a bad --method."""
    from delfi.eval.results import ResultsConflictError, check_outside

    refuse_output_among_inputs(out, [root, *inputs])
    if out.exists() and not out.is_dir():
        raise fail(f"--out {out} is a file: give a results folder")
    try:
        check_outside(out, root)
    except ResultsConflictError as exc:
        raise fail(str(exc)) from None
    if method is not None and (not method or "/" in method or "\\" in method or method in (".", "..")):
        raise fail(f"--method {method!r}: give a plain name (it becomes a folder)")


def _check_compare(compare: list[Path]) -> None:
    """Exit 2 (nothing done) when a --compare item is not a D2-Net cache or a delfi HPatches results.json."""
    from delfi.eval.hpatches_run import summary_of

    for item in compare:
        try:
            summary_of(item)
        except (FileNotFoundError, ValueError, OSError) as exc:
            raise fail(f"--compare {item}: {exc}") from None


def _report_failures(what: str, rows: list[tuple[str, str]], run_dir: Path, root: Path) -> None:
    """List the left-out items (all of them in a file when many) and exit 1.

    On screen, files inside ``root`` are named relative to it (``v_x/H_1_3``), so the table's
    narrow reason column keeps the file's name; the list file keeps the full paths.
    """
    if not rows:
        return
    from delfi.cli.common import EXIT_FAILED, report_failures

    prefix = f"{root}{os.sep}"
    shown = [(item, reason.replace(prefix, "")) for item, reason in rows]
    console = stderr_console()
    report_failures(console, f"{what} left out of {root}", [what.rstrip("s"), "reason"], shown, list_file=None)
    if len(rows) > FAILURES_SHOWN:
        from delfi.cli.common import write_failure_list

        written = write_failure_list(run_dir / "failures.tsv", [what.rstrip("s"), "reason"], rows)
        if written is not None:
            console.print(f"all {len(rows)} {what} left out: {written}", highlight=False, soft_wrap=True)
    raise typer.Exit(EXIT_FAILED)


def _status_line(counts: dict) -> str:
    return "verification: " + ", ".join(f"{n} {status}" for status, n in counts.items())


@app.command("hpatches")
def hpatches(
    root: Path = typer.Option(..., "--root", help="HPatches-sequences folder (<seq>/1.ppm..6.ppm, H_1_k)."),
    preset: str = typer.Option(DEFAULT_PRESET, "--preset", "-p"),
    weights: Optional[str] = typer.Option(None, "--weights", "-w"),
    out: Path = typer.Option(Path("results"), "--out", "-o", help="Results folder (<out>/hpatches/<method>/)."),
    method: Optional[str] = typer.Option(None, "--method", help="Name of this run (default: preset-weights-confighash, from the weights' content)."),
    sequences: Optional[List[str]] = typer.Option(None, "--sequence", "-s", help="Only these sequences (repeatable)."),
    image_list: Optional[Path] = typer.Option(None, "--image-list", help="D2-Net image list (the 108-sequence protocol)."),
    convention: str = typer.Option("raw", "--homography-convention", help="raw (as published) | centre (delfi's pixel centres)."),
    threshold: float = typer.Option(3.0, "--ransac-threshold", help="RANSAC threshold for homography accuracy (px)."),
    compare: Optional[List[Path]] = typer.Option(None, "--compare", help="Published caches / results.json to tabulate beside."),
    refined: bool = typer.Option(False, "--refined", help="Also score only the RANSAC-homography inliers of the same matches (hpatches-refined.npy)."),
    refine_threshold: Optional[float] = typer.Option(None, "--refine-threshold", help="Inlier threshold of --refined (px, default 4)."),
    device: str = typer.Option("cpu", "--device"),
    overrides: Optional[List[str]] = typer.Argument(None, help="Config overrides key=value."),
) -> None:
    """MMA@1..10 (overall / illumination / viewpoint), homography accuracy, features and matches.

    Features are cached per method, so a second run only re-scores. Results in <out>/hpatches/<method>/:
    hpatches.npy (the D2-Net cache format, comparable with published caches), results.json and mma.png.
    --refined also scores the refined protocol (the same mutual-NN matches filtered by a RANSAC
    homography, only its inliers scored): a second table row, a "refined" section in results.json and
    hpatches-refined.npy (comparable with published *_RANSAC.npy caches).
    A sequence with missing or malformed files is listed and left out (exit 1); the rest is scored.
    """
    from delfi.datasets.hpatches import HPatchesError, list_sequences
    from delfi.eval.hpatches import REFINE_THRESHOLD
    from delfi.eval.hpatches_run import (
        BENCHMARK, PRODUCTS, REFINED_CACHE, MissingFeaturesError, compare_table, run_hpatches,
    )  # fmt: skip
    from delfi.eval.results import ResultsConflictError, claim_run_dir

    if refine_threshold is not None and not refined:
        raise fail("--refine-threshold is the threshold of --refined: add --refined")
    if refine_threshold is not None and not (refine_threshold > 0 and refine_threshold < float("inf")):
        raise fail(f"--refine-threshold {refine_threshold}: give a positive number of pixels")
    _check_outputs(out, root, method, [image_list, *(compare or [])])
    _check_compare(list(compare or []))
    try:
        if not list_sequences(root):
            raise fail(f"--root {root}: no HPatches sequences (i_* / v_* folders with 1.ppm..6.ppm and H_1_2..H_1_6)")
        if method is not None:
            claim_run_dir(out / BENCHMARK / method, BENCHMARK, PRODUCTS)
    except (HPatchesError, ResultsConflictError) as exc:
        raise fail(str(exc)) from None
    extract, name = _extractor(preset, weights, list(overrides or []), device, method)
    try:
        with ProgressBar(None, "extracting") as bar:
            report = run_hpatches(
                root, extract, out, method=name, sequences=sequences or None, image_list=image_list,
                homography_convention=convention, ransac_threshold=threshold, on_image=bar.advance,
                refined=refined, refine_threshold=REFINE_THRESHOLD if refine_threshold is None else refine_threshold,
            )  # fmt: skip
    except (HPatchesError, MissingFeaturesError, ResultsConflictError, FileNotFoundError, ValueError) as exc:
        raise fail(str(exc)) from None
    console = Console()
    console.print(compare_table([report, *(compare or [])]))
    console.print(_status_line(report.status_counts), highlight=False)
    files = ", ".join(["hpatches.npy", *([REFINED_CACHE] if refined else []), "results.json", "mma.png"])
    stderr_console().print(f"results -> {report.out_dir}/ ({files})", highlight=False)
    _report_failures("sequences", report.failures, report.out_dir, root)


@app.command("evd")
def evd(
    root: Path = typer.Option(..., "--root", help="EVD folder (1/, 2/, h/)."),
    preset: str = typer.Option(DEFAULT_PRESET, "--preset", "-p"),
    weights: Optional[str] = typer.Option(None, "--weights", "-w"),
    out: Path = typer.Option(Path("results"), "--out", "-o", help="Results folder (<out>/evd/<method>/)."),
    method: Optional[str] = typer.Option(None, "--method"),
    threshold: float = typer.Option(3.0, "--ransac-threshold"),
    success_px: float = typer.Option(10.0, "--success-px", help="A pair succeeds when the mean corner error is below this."),
    pictures: bool = typer.Option(True, "--pictures/--no-pictures", help="Write a match picture per pair."),
    device: str = typer.Option("cpu", "--device"),
    overrides: Optional[List[str]] = typer.Argument(None, help="Config overrides key=value."),
) -> None:
    """The 15 extreme-viewpoint pairs: inliers, corner error, verification status and success rate per pair.

    A pair with missing or malformed files is listed and left out (exit 1); the rest is scored.
    """
    from delfi.datasets.evd import EVDError, list_pairs
    from delfi.eval.evd import BENCHMARK, run_evd
    from delfi.eval.results import ResultsConflictError, claim_run_dir

    _check_outputs(out, root, method, [])
    try:
        list_pairs(root)
        if method is not None:
            claim_run_dir(out / BENCHMARK / method, BENCHMARK, ("pairs",))
    except (EVDError, ResultsConflictError) as exc:
        raise fail(f"--root {root}: {exc}" if isinstance(exc, EVDError) else str(exc)) from None
    extract, name = _extractor(preset, weights, list(overrides or []), device, method)
    try:
        with ProgressBar(None, "extracting") as bar:
            report = run_evd(
                root, extract, out, method=name, ransac_threshold=threshold, success_px=success_px,
                pictures=pictures, on_image=bar.advance,
            )  # fmt: skip
    except (EVDError, ResultsConflictError, FileNotFoundError, ValueError) as exc:
        raise fail(str(exc)) from None
    Console().print(report.table())
    stderr_console().print(f"results -> {report.out_dir}/", highlight=False)
    _report_failures("pairs", report.failures, report.out_dir, root)


def _register_retrieval() -> None:
    from delfi.cli import eval_retrieval

    app.command("revisitop")(eval_retrieval.revisitop)
    app.command("vpr")(eval_retrieval.vpr)
    app.command("vpr-sweep")(eval_retrieval.vpr_sweep)


def _register_pose() -> None:
    from delfi.cli import eval_pose

    app.command("pose")(eval_pose.pose)


_register_retrieval()
_register_pose()
