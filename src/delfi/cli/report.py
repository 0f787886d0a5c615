"""``delfi report``: a self-contained HTML page of a retrieval run (queries, results, matches)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, List, Optional
from urllib.parse import quote

import typer

from delfi.cli.common import fail, stderr_console

IMAGE_SUFFIXES = ("", ".jpg", ".jpeg", ".png", ".ppm")


def resolver(*folders: Path) -> Callable[[str], Optional[Path]]:
    """name -> the first existing ``folder/name[suffix]`` (None when there is none)."""

    def find(name: str) -> Optional[Path]:
        for folder in folders:
            for suffix in IMAGE_SUFFIXES:
                path = folder / f"{name}{suffix}"
                if path.is_file():
                    return path
        return None

    return find


def match_pictures(ranking, matches_path: Path, query_store: Path, db_store: Path, image_path, out_dir: Path,
                   per_query: int = 3) -> dict[tuple[str, str], Path]:
    """Draw the verified matches of the first ``per_query`` results of each query (PNG files)."""
    from delfi.io.features import FeatureStore
    from delfi.io.matches import MatchStore
    from delfi.viz.matches import plot_matches

    out_dir.mkdir(parents=True, exist_ok=True)
    pictures: dict[tuple[str, str], Path] = {}
    with MatchStore(matches_path) as store, FeatureStore(query_store) as qs, FeatureStore(db_store) as ds:
        for q, query in enumerate(ranking.queries):
            drawn = 0
            for idx in ranking.indices[q]:
                if drawn >= per_query or idx < 0:
                    break
                db = ranking.database[idx]
                qpath, dpath = image_path(query), image_path(db)
                if (query, db) not in store or qpath is None or dpath is None or query not in qs or db not in ds:
                    continue
                # quote() encodes '+', so the separator cannot occur inside either name
                target = out_dir / f"{quote(query, safe='')}+{quote(db, safe='')}.png"
                plot_matches(qpath, dpath, qs[query], ds[db], store.get(query, db), out=target,
                             names=(query, db), max_lines=300)  # always redrawn: a rerun may verify differently
                pictures[(query, db)] = target
                drawn += 1
    return pictures


def write_run_report(out: Path, image_path, relevance: dict | None, summary: dict[str, Any], *, title: str,
                     per_query: int = 3) -> Path:
    """``out/report.html`` for a benchmark folder (ranking.txt, reranked.txt, matches.h5, stores)."""
    from delfi.io.rankings import read_ranking
    from delfi.viz.report import write_report

    before = read_ranking(out / "ranking.txt")
    after = read_ranking(out / "reranked.txt", database=before.database) if (out / "reranked.txt").exists() else None
    pictures = {}
    if after is not None and (out / "matches.h5").exists():
        pictures = match_pictures(after, out / "matches.h5", out / "queries.h5", out / "db.h5", image_path,
                                  out / "matches", per_query)
    return write_report(out / "report.html", after or before, image_path=image_path,
                        before=before if after is not None else None, relevance=relevance,
                        match_pictures=pictures, title=title, summary=summary)


def report(
    ranking: Path = typer.Option(..., "--ranking", "-r", help="Ranking file (reranked or not)."),
    images: List[Path] = typer.Option(..., "--images", help="Folder of the images, names as in the ranking (repeatable: searched in order)."),
    query_images: Optional[Path] = typer.Option(None, "--query-images", help="Folder searched first (e.g. the query images)."),
    before: Optional[Path] = typer.Option(None, "--before", help="The ranking before reranking (rank changes)."),
    matches: Optional[Path] = typer.Option(None, "--matches", help="Match store from `delfi rerank --matches` (pictures)."),
    query_features: Optional[Path] = typer.Option(None, "--query-features", help="Needed with --matches."),
    db_features: Optional[Path] = typer.Option(None, "--db-features", help="Needed with --matches."),
    gnd: Optional[Path] = typer.Option(None, "--gnd", help="Revisited Oxford/Paris ground truth: mark positives and junk."),
    top_n: int = typer.Option(10, "--top-n", help="Results shown per query."),
    out: Path = typer.Option(Path("report.html"), "--out", "-o"),
) -> None:
    """Browse a ranking: each query with its top results, scores before/after, inliers, match pictures."""
    from delfi.io.rankings import RankingFormatError, read_ranking
    from delfi.viz.report import write_report

    find = resolver(*(p for p in (query_images, *images) if p is not None))
    try:
        final = read_ranking(ranking)
        first = read_ranking(before) if before else None  # matched to the final ranking by names
        relevance = None
        if gnd is not None:
            from delfi.datasets.revisitop import load_ground_truth
            from delfi.eval.revisitop_run import relevance as gnd_relevance

            relevance = gnd_relevance(load_ground_truth(gnd))
    except (RankingFormatError, OSError, ValueError) as exc:
        raise fail(str(exc)) from None
    pictures = {}
    if matches is not None:
        if query_features is None or db_features is None:
            raise fail("--matches needs --query-features and --db-features (keypoints for the pictures)")
        pictures = match_pictures(final, matches, query_features, db_features, find, out.parent / f"{out.stem}_matches")
    path = write_report(out, final, image_path=find, before=first, relevance=relevance, match_pictures=pictures,
                        top_n=top_n)
    stderr_console().print(f"report -> {path} ({len(final)} queries, {len(pictures)} match pictures)")

