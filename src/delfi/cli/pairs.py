"""``delfi pairs``: which image pairs to match (hloc's `name0 name1` text format)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from delfi.cli.common import fail, prepare_output_file, refuse_output_among_inputs, stderr_console

app = typer.Typer(help="Make pairs files: exhaustive, from a ranking (top-k per query), from a list, or with ground-truth poses from a COLMAP model.", no_args_is_help=True)


def check_pairs_output(out: Path, inputs: list[Path | None], option: str = "--out") -> Path:
    """Exit 2 (nothing done) unless ``out`` may be written as a pairs file.

    Refused: one of the command's ``inputs``, a folder, a parent that cannot be made, and an
    existing file that is not a pairs file (a user's other text or a store is never replaced).
    """
    from delfi.io.pairs import is_pairs_file

    refuse_output_among_inputs(out, inputs, option)
    out = prepare_output_file(out, option)
    if out.exists() and not is_pairs_file(out):
        raise fail(f"{option} {out} exists and is not a pairs file (`name0 name1 [score]` lines): "
                   f"delfi replaces only its own pairs files; choose another output path")
    return out


def os_message(exc: OSError, what: str) -> str:
    """``<what> <file>: <reason>`` for an OSError (no errno noise)."""
    where = f"{what} {exc.filename}" if exc.filename is not None else what
    return f"{where}: {exc.strerror or exc}"


def _write(pairs, out: Path) -> None:
    from delfi.io.pairs import write_pairs

    try:
        write_pairs(out, pairs)
    except ValueError as exc:
        raise fail(str(exc)) from None
    except OSError as exc:
        raise fail(os_message(exc, "cannot write pairs file")) from None
    stderr_console().print(f"{len(pairs)} pairs -> {out}", highlight=False, soft_wrap=True)


@app.command("exhaustive")
def exhaustive(
    features: Path = typer.Option(..., "--features", "-f", help="Feature store whose images are paired."),
    features_db: Optional[Path] = typer.Option(None, "--features-db", help="Pair every image of --features with every one of this store instead."),
    out: Path = typer.Option(Path("pairs.txt"), "--out", "-o"),
) -> None:
    """All pairs of the images in a feature store (or query x database)."""
    from delfi.io.features import FeatureStore
    from delfi.io.pairs import pairs_exhaustive

    out = check_pairs_output(out, [features, features_db])
    try:
        with FeatureStore(features) as store:
            names = store.names()
        names_db = None
        if features_db is not None:
            with FeatureStore(features_db) as store:
                names_db = store.names()
    except OSError as exc:
        raise fail(str(exc) if exc.filename is None else os_message(exc, "cannot read feature store")) from None
    except ValueError as exc:
        raise fail(str(exc)) from None
    _write(pairs_exhaustive(names, names_db), out)


@app.command("from-ranking")
def from_ranking(
    ranking: Path = typer.Option(..., "--ranking", "-r", help="Ranking file: `query db score` per line."),
    top_k: int = typer.Option(20, "--top-k", "-k", help="Pairs per query."),
    out: Path = typer.Option(Path("pairs.txt"), "--out", "-o"),
) -> None:
    """The top-k database images of each query of a retrieval ranking."""
    from delfi.io.pairs import pairs_from_ranking

    if top_k < 1:
        raise fail(f"--top-k must be >= 1, got {top_k}")
    out = check_pairs_output(out, [ranking])
    try:
        pairs = pairs_from_ranking(ranking, top_k)
    except OSError as exc:
        raise fail(os_message(exc, "cannot read ranking file")) from None
    except ValueError as exc:
        raise fail(str(exc)) from None
    _write(pairs, out)


@app.command("from-list")
def from_list(
    listing: Path = typer.Argument(..., help="`name0 name1` or `query db1 db2 ...` per line."),
    out: Path = typer.Option(Path("pairs.txt"), "--out", "-o"),
) -> None:
    """Pairs from a hand-written list."""
    from delfi.io.pairs import pairs_from_list

    out = check_pairs_output(out, [listing])
    try:
        pairs = pairs_from_list(listing)
    except OSError as exc:
        raise fail(os_message(exc, "cannot read list file")) from None
    except ValueError as exc:
        raise fail(str(exc)) from None
    _write(pairs, out)


@app.command("from-colmap")
def from_colmap(
    model: Path = typer.Argument(..., help="COLMAP model folder (cameras / images / points3D, .bin or .txt)."),
    out: Path = typer.Option(Path("pairs_with_gt.txt"), "--out", "-o", help="Pairs file with ground truth (for delfi eval pose)."),
    min_shared: int = typer.Option(50, "--min-shared", help="Pairs of registered images sharing at least this many 3-D points."),
    max_distortion: float = typer.Option(0.0, "--max-distortion", help="Accept cameras with |distortion| up to this (the format has none)."),
) -> None:
    """Pairs with ground-truth poses and intrinsics from a reconstruction: `name0 name1 0 0 K0 K1 T_0to1`."""
    import os

    from delfi.eval.pose import format_pose_pair, read_pose_pairs

    refuse_output_among_inputs(out, [model])
    out = prepare_output_file(out)
    if out.exists():
        try:
            read_pose_pairs(out)
        except (OSError, ValueError):
            raise fail(f"--out {out} exists and is not a pairs file with ground truth: not replaced; choose another "
                       f"output path") from None
    try:
        from delfi.eval.pose_gt import pose_pairs_from_reconstruction

        pairs = pose_pairs_from_reconstruction(model, min_shared_points=min_shared, max_distortion=max_distortion)
    except ImportError:
        raise fail("reading COLMAP models needs pycolmap: pip install delfi[sfm]") from None
    except (OSError, ValueError) as exc:
        raise fail(str(exc)) from None
    if not pairs:
        raise fail(f"{model}: no pair of registered images shares {min_shared} 3-D points")
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text("".join(format_pose_pair(p) + "\n" for p in pairs), encoding="utf-8")
        os.replace(tmp, out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise fail(os_message(exc, "cannot write pairs file")) from None
    stderr_console().print(f"{len(pairs)} pairs with ground truth -> {out}", highlight=False, soft_wrap=True)
