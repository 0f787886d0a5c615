"""``delfi pca``: fit the PCA that reduces local descriptors (DELF: to 40-D) on a feature store.

Exit codes: 0 ok; 1 the PCA was written but some entries were skipped (unreadable, NaN or infinite
descriptors; listed, all of them in ``<out>.failures.tsv`` when many); 2 usage error (missing or
unreadable store, no usable descriptor, bad numbers, an --out that is the store or an existing file
that is not a delfi PCA): nothing was written. The summary table and the sha256 of the written file
go to stdout; progress and errors to stderr.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from delfi.cli.common import (
    EXIT_FAILED,
    ProgressBar,
    fail,
    failure_list_path,
    prepare_output_file,
    refuse_output_among_inputs,
    report_failures,
    stderr_console,
    summary_table,
)

app = typer.Typer(
    help="PCA of local descriptors: fit it on a feature store (then apply it at extraction).",
    no_args_is_help=True,
)


@app.command("fit")
def fit(
    features: Path = typer.Option(..., "--features", help="Feature store (.h5) whose descriptors to fit on."),
    dims: int = typer.Option(40, "--dims", min=1, help="Output dimension the PCA is meant for (recorded)."),
    out: Path = typer.Option(..., "--out", help="PCA file to write (.h5, or .npz by suffix)."),
    max_per_image: Optional[int] = typer.Option(
        None, "--max-per-image", min=1, help="Use at most N random descriptors per image (default all)."
    ),
    max_images: Optional[int] = typer.Option(
        None, "--max-images", min=1, help="Use at most N random images of the store (default all)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the random subsets."),
) -> None:
    """Fit a PCA on a feature store's descriptors in one streaming pass, save it and print its sha256."""
    from delfi.extract.pca import fit_pca_from_store, pca_sha256, save_pca
    from delfi.io.features import FeatureStore

    refuse_output_among_inputs(out, [features], "--out")
    _check_replaceable(out)
    prepare_output_file(out, "--out")
    try:
        with FeatureStore(features, "r") as store:
            total = len(store) if max_images is None else min(len(store), max_images)
    except FileNotFoundError as exc:
        raise fail(str(exc)) from None
    except (OSError, ValueError, KeyError) as exc:
        raise fail(f"cannot read feature store {features}: {exc}") from None

    failures: list[tuple[str, str]] = []

    def failed(name: str, reason: str) -> None:
        failures.append((name, reason))
        bar.advance(name, "failed")

    try:
        with ProgressBar(total, "pca fit") as bar:
            pca = fit_pca_from_store(
                features, max_per_image=max_per_image, max_images=max_images, seed=seed,
                progress=lambda name: bar.advance(name, "done"), on_failure=failed,
            )
    except (OSError, ValueError) as exc:
        report_failures(stderr_console(), "entries skipped", ["entry", "reason"], failures, failure_list_path(out))
        raise fail(str(exc)) from None
    if dims > pca.input_dim:
        raise fail(f"--dims {dims} exceeds the descriptor dimension {pca.input_dim} of {features}")
    pca.dims = dims
    try:
        save_pca(pca, out)
    except OSError as exc:
        raise fail(f"--out {out}: cannot write it ({exc.strerror or exc})") from None
    digest = pca_sha256(out)

    rows = [
        ("feature store", escape(str(features))),
        ("images", str(pca.source.get("images", "?"))),
        ("samples", str(pca.n_samples)),
        ("input dim", str(pca.input_dim)),
        ("kept dims", str(dims)),
        ("explained variance", f"{100.0 * pca.explained_variance_ratio(dims):.2f} %"),
        ("max per image", "all" if max_per_image is None else str(max_per_image)),
        ("max images", "all" if max_images is None else str(max_images)),
        ("seed", str(seed)),
        ("written", escape(str(out))),
    ]
    if failures:
        rows.insert(2, ("entries skipped", str(len(failures))))
    Console().print(summary_table(f"delfi pca fit -> {escape(out.name)}", rows))
    typer.echo(f"sha256: {digest}")
    if failures:
        report_failures(stderr_console(), "entries skipped", ["entry", "reason"], failures, failure_list_path(out))
        raise typer.Exit(EXIT_FAILED)


def _check_replaceable(out: Path) -> None:
    """Exit 2 unless ``out`` is new or a delfi PCA file (only delfi's own files are replaced)."""
    from delfi.extract.pca import PCAFileError, load_pca

    if out.is_dir() or not out.exists():
        return  # a folder: prepare_output_file says so; a new file: fine
    try:
        load_pca(out)
    except (PCAFileError, OSError) as exc:
        raise fail(f"--out {out} exists and is not a delfi PCA file ({exc}): refusing to overwrite it; "
                   "choose another path") from None
