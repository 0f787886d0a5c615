"""``delfi report``: a self-contained HTML page of a retrieval run (queries, results, matches).

Exit codes: 0 ok; 1 the page was written but some match pictures could not be drawn (listed);
2 usage error (a missing --images folder, an unreadable ranking, an --out that is an input or a
file delfi did not write): nothing was written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, List, Optional
from urllib.parse import quote

import typer

from delfi.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    fail,
    failure_list_path,
    prepare_output_file,
    refuse_output_among_inputs,
    report_failures,
    stderr_console,
)

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
                   per_query: int = 3,
                   on_failure: Optional[Callable[[str, str], None]] = None) -> dict[tuple[str, str], Path]:
    """Draw the verified matches of the first ``per_query`` results of each query (PNG files).

    A pair whose entries or images cannot be read goes to ``on_failure`` (``"query -> db"``,
    reason) and gets no picture; without ``on_failure`` the error propagates.
    """
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
                try:
                    plot_matches(qpath, dpath, qs[query], ds[db], store.get(query, db), out=target,
                                 names=(query, db), max_lines=300)  # always redrawn: a rerun may verify differently
                except (KeyError, ValueError, OSError) as exc:  # a bad entry or image: no picture
                    if on_failure is None:
                        raise
                    on_failure(f"{query} -> {db}", str(exc) or type(exc).__name__)
                    continue
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
    from delfi.viz.report import ReportPathError, is_delfi_report, write_report

    folders = [(opt, p) for opt, p in (("--query-images", query_images), *(("--images", p) for p in images))
               if p is not None]
    for option, folder in folders:
        if not folder.is_dir():
            raise fail(f"{option} {folder}: {'not a folder' if folder.exists() else 'no such folder'}")
    refuse_output_among_inputs(out, [ranking, before, matches, query_features, db_features, gnd,
                                     *(p for _, p in folders)], "--out")
    prepare_output_file(out, "--out")
    if out.exists() and not is_delfi_report(out):
        raise fail(f"--out {out} exists and is not a delfi report: refusing to overwrite it; choose another path")
    if matches is not None:
        if query_features is None or db_features is None:
            raise fail("--matches needs --query-features and --db-features (keypoints for the pictures)")
        for option, path in (("--matches", matches), ("--query-features", query_features),
                             ("--db-features", db_features)):
            if not path.is_file():
                raise fail(f"{option} {path}: no such file")
    find = resolver(*(p for _, p in folders))
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
    failures: list[tuple[str, str]] = []
    if matches is not None:
        try:
            pictures = match_pictures(final, matches, query_features, db_features, find,
                                      out.parent / f"{out.stem}_matches",
                                      on_failure=lambda pair, why: failures.append((pair, why)))
        except (OSError, ValueError, KeyError) as exc:  # a store that cannot be opened
            raise fail(f"match pictures: {exc}") from None
    try:
        path = write_report(out, final, image_path=find, before=first, relevance=relevance, match_pictures=pictures,
                            top_n=top_n)
    except ReportPathError as exc:
        raise fail(str(exc)) from None
    except OSError as exc:
        raise fail(f"--out {out}: cannot write it ({exc.strerror or exc})") from None
    stderr_console().print(f"report -> {path} ({len(final)} queries, {len(pictures)} match pictures)")
    report_failures(stderr_console(), "match pictures not drawn", ["pair", "reason"], failures, failure_list_path(out))
    raise typer.Exit(EXIT_FAILED if failures else EXIT_OK)

