"""``delfi pairs``: which image pairs to match (hloc's `name0 name1` text format)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from delfi.cli.common import fail, stderr_console

app = typer.Typer(help="Make pairs files: exhaustive, from a ranking (top-k per query), or from a list.", no_args_is_help=True)


def _write(pairs, out: Path) -> None:
    from delfi.io.pairs import write_pairs

    try:
        write_pairs(out, pairs)
    except ValueError as exc:
        raise fail(str(exc)) from None
    stderr_console().print(f"{len(pairs)} pairs -> {out}")


@app.command("exhaustive")
def exhaustive(
    features: Path = typer.Option(..., "--features", "-f", help="Feature store whose images are paired."),
    features_db: Optional[Path] = typer.Option(None, "--features-db", help="Pair every image of --features with every one of this store instead."),
    out: Path = typer.Option(Path("pairs.txt"), "--out", "-o"),
) -> None:
    """All pairs of the images in a feature store (or query x database)."""
    from delfi.io.features import FeatureStore
    from delfi.io.pairs import pairs_exhaustive

    try:
        with FeatureStore(features) as store:
            names = store.names()
        names_db = None
        if features_db is not None:
            with FeatureStore(features_db) as store:
                names_db = store.names()
    except (OSError, ValueError) as exc:
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

    try:
        pairs = pairs_from_ranking(ranking, top_k)
    except (OSError, ValueError) as exc:
        raise fail(str(exc)) from None
    _write(pairs, out)


@app.command("from-list")
def from_list(
    listing: Path = typer.Argument(..., help="`name0 name1` or `query db1 db2 ...` per line."),
    out: Path = typer.Option(Path("pairs.txt"), "--out", "-o"),
) -> None:
    """Pairs from a hand-written list."""
    from delfi.io.pairs import pairs_from_list

    try:
        pairs = pairs_from_list(listing)
    except (OSError, ValueError) as exc:
        raise fail(str(exc)) from None
    _write(pairs, out)
