"""``delfi export hloc`` / ``delfi import hloc``: delfi's stores as hloc's ``features.h5`` / ``matches.h5`` and back.

The layouts and delfi's mapping are described in `delfi.io.hloc`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from delfi.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    ProgressBar,
    fail,
    failure_list_path,
    prepare_output_file,
    refuse_output_among_inputs,
    report_failures,
    summary_table,
)

FEATURES_FILE = "features.h5"
GLOBAL_FILE = "global-feats.h5"
MATCHES_FILE = "matches.h5"
PAIRS_FILE = "pairs.txt"


def _output_folder(out: Path) -> Path:
    """Exit 2 unless ``out`` is (or can be made) a folder."""
    if out.exists() and not out.is_dir():
        raise fail(f"--out {out} is a file: give a folder for hloc's files")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise fail(f"--out {out}: cannot create the folder ({exc.strerror or exc})") from None
    return out


def _open_store(kind: str, path: Path, option: str) -> int:
    """Exit 2 unless ``path`` opens as a delfi store of ``kind`` ("feature" / "match"); its size."""
    from delfi.io.features import FeatureStore
    from delfi.io.matches import MatchStore

    cls = FeatureStore if kind == "feature" else MatchStore
    try:
        with cls(path, "r") as store:
            return len(store)
    except (OSError, ValueError) as exc:
        raise fail(f"{option} {path}: not a readable delfi {kind} store ({exc})") from None


def export_hloc(
    features: Path = typer.Option(..., "--features", "-f", help="delfi feature store to export."),
    matches: Optional[Path] = typer.Option(None, "--matches", "-m", help="delfi match store of those features to export (with pairs.txt)."),
    inliers_only: bool = typer.Option(False, "--inliers-only", help="Keep only the inliers of pairs verified 'ok'; other pairs get no matches."),
    half: bool = typer.Option(False, "--half", help="float16 descriptors (hloc's as_half); keypoints stay float32."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for features.h5, global-feats.h5, matches.h5 and pairs.txt."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the files of an earlier delfi export there (never other files)."),
) -> None:
    """Write a feature store (and match store) as hloc's files.

    `delfi export hloc --features feats.h5 --matches matches.h5 --out hloc/` writes hloc/features.h5,
    hloc/matches.h5 and hloc/pairs.txt, and hloc/global-feats.h5 when the store has global descriptors.
    """
    from delfi.io import hloc

    if inliers_only and matches is None:
        raise fail("--inliers-only needs --matches")
    folder = _output_folder(out)
    targets = {"features": folder / FEATURES_FILE, "global": folder / GLOBAL_FILE}
    if matches is not None:
        targets.update(matches=folder / MATCHES_FILE, pairs=folder / PAIRS_FILE)
    for path in targets.values():
        refuse_output_among_inputs(path, [features, matches])
    try:
        for key, path in targets.items():
            if key == "pairs":
                hloc.check_pairs_output(path, overwrite)
            elif key != "global" or path.exists() or path.is_symlink():
                hloc.check_output(path, overwrite)
    except hloc.HlocError as exc:
        raise fail(f"--out {folder}: {exc}") from None
    total = _open_store("feature", features, "--features")
    pair_total = _open_store("match", matches, "--matches") if matches is not None else 0

    try:
        with ProgressBar(total, "exporting features") as bar:
            feats = hloc.export_features(features, targets["features"], global_out=targets["global"], as_half=half,
                                         overwrite=overwrite, on_item=bar.advance)
        exported = None
        if matches is not None:
            with ProgressBar(pair_total, "exporting matches", unit="pairs") as bar:
                exported = hloc.export_matches(matches, targets["matches"], features=feats.num_keypoints,
                                               inliers_only=inliers_only, pairs_out=targets["pairs"],
                                               overwrite=overwrite, on_item=bar.advance)
    except (hloc.HlocError, OSError, ValueError) as exc:
        raise fail(str(exc)) from None

    rows = [("features", f"{feats.entries} images, {feats.keypoints} keypoints ({feats.descriptor_dtype} descriptors) "
                         f"-> {feats.path}"),
            ("global descriptors", f"{feats.global_entries} -> {feats.global_path}" if feats.global_path
             else "none in the store" + (f" (the earlier {GLOBAL_FILE} was removed)" if feats.global_removed else ""))]
    failures = [(name, reason) for name, reason in feats.failures]
    if exported is not None:
        rows.append(("matches", f"{len(exported.pairs)} pairs, {exported.matches} matches -> {exported.path}"))
        if exported.duplicates_dropped:
            rows.append(("dropped", f"{exported.duplicates_dropped} matches sharing a keypoint of image 0 with a "
                                    f"better one (matches0 holds one per keypoint)"))
        if inliers_only:
            rows.append(("not verified", f"{exported.unverified} pairs without status 'ok': written without matches"))
        rows.append(("pairs", f"{len(exported.pairs)} -> {exported.pairs_path}"))
        failures += [(pair, reason) for pair, reason in exported.failures]
    else:
        stale = [name for name in (MATCHES_FILE, PAIRS_FILE) if (folder / name).exists()]
        if stale:
            rows.append(("left as they were", f"{' and '.join(stale)} of an earlier run: they may not fit these "
                                              f"features (export with --matches to replace them)"))
    console = Console()
    console.print(summary_table(f"delfi export hloc -> {folder}", rows))
    report_failures(console, "skipped", ["image / pair", "reason"], failures, failure_list_path(targets["features"]))
    raise typer.Exit(EXIT_FAILED if failures else EXIT_OK)


def import_hloc(
    features: Path = typer.Option(..., "--features", "-f", help="hloc's features file (e.g. feats-superpoint-n4096-r1024.h5)."),
    global_: Optional[Path] = typer.Option(None, "--global", "-g", help="hloc's global descriptor file (e.g. global-feats-netvlad.h5)."),
    matches: Optional[Path] = typer.Option(None, "--matches", "-m", help="hloc's matches file of those features."),
    out: Path = typer.Option(..., "--out", "-o", help="delfi feature store to write or resume."),
    matches_out: Optional[Path] = typer.Option(None, "--matches-out", help="delfi match store to write or resume (default: <out stem>-matches.h5 beside --out)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start the delfi stores afresh (replaces only delfi stores)."),
) -> None:
    """Read hloc's feature (and global descriptor, match) files into delfi stores.

    `delfi import hloc --features feats.h5 --global global-feats.h5 --matches matches.h5 --out f.h5`
    writes the feature store f.h5 and the match store f-matches.h5. Entries already in the stores are
    kept; broken entries are listed and skipped.
    """
    from delfi.cli.match import match_store_output
    from delfi.io import hloc

    if matches_out is not None and matches is None:
        raise fail("--matches-out needs --matches")
    inputs = [features, global_, matches]
    refuse_output_among_inputs(out, inputs)
    out = prepare_output_file(out)
    if out.exists():
        _open_store("feature", out, "--out")
    if matches is not None:
        matches_out = matches_out if matches_out is not None else out.with_name(f"{out.stem}-matches.h5")
        refuse_output_among_inputs(matches_out, [*inputs, out], "--matches-out")
        matches_out = match_store_output(matches_out, inputs, "--matches-out")
    try:
        for given in inputs:
            if given is not None:
                hloc.check_input(given)
    except hloc.HlocError as exc:
        raise fail(str(exc)) from None

    try:
        with ProgressBar(None, "importing features") as bar:
            feats = hloc.import_features(features, out, global_h5=global_, overwrite=overwrite, on_item=bar.advance)
        imported = None
        if matches is not None:
            with ProgressBar(None, "importing matches", unit="pairs") as bar:
                imported = hloc.import_matches(matches, matches_out, list(feats.num_keypoints),
                                               num_keypoints=feats.num_keypoints, overwrite=overwrite,
                                               on_item=bar.advance)
    except (hloc.HlocError, OSError, ValueError) as exc:
        raise fail(str(exc)) from None

    rows = [("features", f"{feats.imported} images imported, {feats.already_present} already present -> {feats.path}")]
    if feats.with_global or global_ is not None:
        only = f", {feats.global_only} without keypoints" if feats.global_only else ""
        rows.append(("global descriptors", f"{feats.with_global} imported{only}"))
    if feats.sizes_from_keypoints:
        rows.append(("image size guessed", f"{len(feats.sizes_from_keypoints)} images without image_size: "
                                           f"taken from the keypoint extent"))
    if feats.scores_defaulted:
        rows.append(("scores set to 1", f"{feats.scores_defaulted} images without scores"))
    failures = list(feats.failures)
    if imported is not None:
        layouts = f"{imported.layouts['/']} in the '/' layout, {imported.layouts['_']} in the old '_' layout"
        rows.append(("matches", f"{imported.imported} pairs imported ({layouts}), {imported.already_present} already "
                                f"present, {imported.matches} matches -> {imported.path}"))
        if imported.scores_defaulted:
            rows.append(("scores set to 1", f"{imported.scores_defaulted} pairs without matching_scores0"))
        failures += imported.failures
    console = Console()
    console.print(summary_table(f"delfi import hloc {features.name} -> {out}", rows))
    report_failures(console, "skipped", ["entry", "reason"], failures, failure_list_path(out))
    raise typer.Exit(EXIT_FAILED if failures else EXIT_OK)
