"""``delfi index build``, ``delfi search`` and ``delfi rerank``: retrieval from feature stores.

Exit codes: 0 ok; 1 the output was written but some images failed (unreadable entries, NaN or
infinite descriptors, missing features: listed, all of them in ``<out>.failures.tsv`` when many);
2 usage error (bad options or settings, an output that is an input or cannot be replaced): nothing
was written.
"""

from __future__ import annotations

import json
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
    stderr_console,
    summary_table,
)

index_app = typer.Typer(help="Build and inspect retrieval indexes.", no_args_is_help=True)

KINDS = ("exact", "flat", "ivfpq")


def _params(settings: list[str] | None) -> dict:
    """``key=value`` index parameters (values parsed as JSON when possible: numbers, true/false)."""
    out = {}
    for item in settings or []:
        if "=" not in item:
            raise fail(f"index parameters are key=value, got {item!r}")
        key, value = item.split("=", 1)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


@index_app.command("build")
def build(
    features: Path = typer.Option(..., "--features", "-f", help="Database feature store."),
    out: Path = typer.Option(..., "--out", "-o", help="Index directory to write."),
    kind: str = typer.Option("exact", "--kind", help="Global index: exact | flat | ivfpq (FAISS for flat/ivfpq)."),
    asmk: bool = typer.Option(False, "--asmk", help="Index the LOCAL descriptors with ASMK instead."),
    train_size: int = typer.Option(500_000, "--train-size", help="Descriptors used to train IVF-PQ / the ASMK codebook."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing delfi index at --out (only its own files)."),
    params: Optional[list[str]] = typer.Argument(None, help="Index parameters key=value (e.g. nlist=4096 m=64, codebook_size=65536)."),
) -> None:
    """Index the global descriptors of a feature store (or its local ones with --asmk)."""
    from delfi.retrieval.search import build_index
    from delfi.retrieval.settings import check_index_settings
    from delfi.retrieval.storage import check_index_target

    if not asmk and kind not in KINDS:
        raise fail(f"--kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if not features.exists():
        raise fail(f"{features}: no such feature store")
    refuse_output_among_inputs(out, [features], "--out")
    chosen = "asmk" if asmk else kind
    settings = _params(params)
    try:  # before reading anything
        check_index_settings(chosen, settings)
        check_index_target(out, overwrite)
    except ValueError as exc:
        raise fail(str(exc)) from None
    failures: list[tuple[str, str]] = []
    try:
        with ProgressBar(None, "reading", unit="img") as bar:
            index = build_index(features, out, kind=chosen, params=settings, train_size=train_size,
                                on_item=lambda name: bar.advance(name, "done"), overwrite=overwrite,
                                on_failure=lambda name, why: (failures.append((name, why)), bar.advance(name, "failed")))
    except (ValueError, TypeError, ImportError, OSError) as exc:
        _report(failures, "images left out", out)
        raise fail(str(exc)) from None
    Console().print(summary_table(f"delfi index build -> {out}", [
        ("kind", chosen), ("images", str(len(index))), ("dim", str(index.dim)),
    ] + ([("left out", str(len(failures)))] if failures else [])))
    _report(failures, "images left out of the index", out)
    raise typer.Exit(EXIT_FAILED if failures else EXIT_OK)


def _report(failures: list[tuple[str, str]], title: str, out: Path) -> None:
    """The failed images on stderr (the full list in ``<out>.failures.tsv`` when long)."""
    report_failures(stderr_console(), title, ["name", "reason"], failures, failure_list_path(out))


def _refuse_inside_index(out: Path, index: Path) -> None:
    """Exit 2 when ``out`` would be written inside the index directory (it would break the index)."""
    try:
        inside = out.resolve().parent == index.resolve()
    except OSError:
        inside = False
    if inside:
        raise fail(f"--out {out} lies inside the index directory {index}: choose a path outside it")


@index_app.command("info")
def info(index: Path = typer.Argument(..., help="Index directory.")) -> None:
    """Print an index's meta.json (checksums verified)."""
    from delfi.retrieval.storage import IndexFormatError, read_index_meta

    try:
        meta = read_index_meta(index)
    except IndexFormatError as exc:
        raise fail(str(exc)) from None
    Console().print_json(json.dumps(meta))


def search_command(
    index: Path = typer.Option(..., "--index", "-i", help="Index directory (`delfi index build`)."),
    features: Path = typer.Option(..., "--features", "-f", help="Query feature store."),
    top_k: int = typer.Option(100, "--top-k", "-k", help="Results per query."),
    out: Path = typer.Option(Path("ranking.txt"), "--out", "-o", help="Ranking file: `query db score` lines."),
    nprobe: Optional[int] = typer.Option(None, "--nprobe", help="IVF lists visited per query (IVF-PQ only)."),
) -> None:
    """Rank the indexed database for every query of a feature store."""
    from delfi.io.rankings import write_ranking
    from delfi.retrieval.search import MissingDescriptorError, search
    from delfi.retrieval.storage import IndexFormatError, load_index

    if top_k < 1:
        raise fail(f"--top-k must be >= 1, got {top_k}")
    if not features.exists():
        raise fail(f"{features}: no such feature store")
    refuse_output_among_inputs(out, [index, features], "--out")
    _refuse_inside_index(out, index)
    prepare_output_file(out, "--out")
    _check_ranking_replaceable(out)
    failures: list[tuple[str, str]] = []
    try:
        loaded = load_index(index)
        if nprobe is not None and getattr(loaded, "kind", None) != "ivfpq":
            raise fail("--nprobe applies to an ivfpq index only")
        ranking = search(loaded, features, top_k=top_k, nprobe=nprobe,
                         on_failure=lambda name, why: failures.append((name, why)))
    except (IndexFormatError, MissingDescriptorError, ValueError, ImportError, OSError) as exc:
        _report(failures, "queries left out", out)
        raise fail(str(exc)) from None
    write_ranking(out, ranking)
    Console().print(summary_table(f"delfi search -> {out}", [
        ("queries", str(len(ranking))), ("database", str(len(ranking.database))), ("top-k", str(ranking.depth)),
    ] + ([("left out", str(len(failures)))] if failures else [])))
    _report(failures, "queries left out of the ranking", out)
    raise typer.Exit(EXIT_FAILED if failures else EXIT_OK)


def rerank_command(
    ranking: Path = typer.Option(..., "--ranking", "-r", help="Ranking file from `delfi search`."),
    query_features: Path = typer.Option(..., "--query-features", help="Query feature store (local features)."),
    db_features: Path = typer.Option(..., "--db-features", help="Database feature store (local features)."),
    top_k: int = typer.Option(100, "--top-k", "-k", help="Verify this many results per query."),
    out: Path = typer.Option(Path("reranked.txt"), "--out", "-o", help="Reranked ranking file."),
    fusion: str = typer.Option("lexicographic", "--fusion", help="lexicographic (inliers, global) | weighted | min_inliers."),
    weight: float = typer.Option(0.01, "--weight", help="weighted: score = global + weight * inliers."),
    min_inliers: int = typer.Option(10, "--min-inliers", help="min_inliers: verified when >= this many inliers."),
    geometry: str = typer.Option("affine", "--geometry", "-g", help="affine | homography | fundamental."),
    threshold: float = typer.Option(20.0, "--threshold", help="RANSAC residual threshold (pixels)."),
    rule: str = typer.Option("auto", "--putative", help="Putative matches: auto (tf for DELF/DELG stores, mutual otherwise) | tf (NN at distance < 1.0) | mutual (mutual NN)."),
    max_distance: Optional[float] = typer.Option(None, "--max-distance", help="Override: keep matches with L2 descriptor distance below this."),
    ratio: Optional[float] = typer.Option(None, "--ratio", help="Lowe ratio test (off by default)."),
    backend: str = typer.Option("opencv", "--backend"),
    max_iters: int = typer.Option(1000, "--max-iters"),
    seed: int = typer.Option(0, "--seed"),
    workers: int = typer.Option(0, "--workers", help="Threads (0: one per core)."),
    exclude: Optional[Path] = typer.Option(None, "--exclude", help="Pairs file `query db` of results to skip (e.g. junk)."),
    matches: Optional[Path] = typer.Option(None, "--matches", help="Also keep the verified matches in this match store (for `delfi report`)."),
) -> None:
    """Rerank the top-K of each query by local matching + RANSAC (TF DELG defaults)."""
    from dataclasses import replace

    from delfi.io.features import FeatureStore
    from delfi.io.rankings import RankingFormatError, read_ranking, write_ranking
    from delfi.retrieval.rerank import FUSIONS, PUTATIVE_RULES, RerankConfig, RerankReport, rerank_stores, rule_for

    if fusion not in FUSIONS:
        raise fail(f"--fusion must be one of {', '.join(FUSIONS)}, got {fusion!r}")
    refuse_output_among_inputs(out, [ranking, query_features, db_features, exclude, matches], "--out")
    refuse_output_among_inputs(matches, [ranking, query_features, db_features, exclude], "--matches")
    prepare_output_file(out, "--out")
    _check_ranking_replaceable(out)
    if matches is not None:
        prepare_output_file(matches, "--matches")
        _check_match_store_replaceable(matches)
    if rule != "auto" and rule not in PUTATIVE_RULES:
        raise fail(f"--putative must be auto, {' or '.join(PUTATIVE_RULES)}, got {rule!r}")
    try:
        before = read_ranking(ranking)
        skip = _exclusions(exclude) if exclude else None
        with FeatureStore(query_features) as store:
            family = str(store.attrs.get("model", ""))
        if not Path(db_features).exists():
            raise FileNotFoundError(f"feature store {db_features} does not exist")
    except (RankingFormatError, ValueError, OSError) as exc:
        raise fail(str(exc)) from None
    rule = rule_for(family) if rule == "auto" else rule
    base = PUTATIVE_RULES[rule]()
    try:
        config = RerankConfig(
            top_k=top_k, fusion=fusion, weight=weight, min_inliers=min_inliers, workers=workers,
            matching=replace(base, ratio=ratio, max_distance=base.max_distance if max_distance is None else max_distance,
                             geometry=geometry, threshold=threshold, max_iters=max_iters, seed=seed, backend=backend),
        )  # fmt: skip
    except ValueError as exc:
        raise fail(str(exc)) from None
    report = RerankReport()
    try:
        with ProgressBar(len(before), "reranking", unit="queries") as bar:
            after = rerank_stores(before, query_features, db_features, config, matches_out=matches, junk=skip,
                                  report=report, on_query=lambda q: bar.advance(q, "done"))
    except (ValueError, OSError) as exc:
        raise fail(f"{query_features} / {db_features}: {exc}") from None
    write_ranking(out, after)
    m = config.matching
    putative = ("mutual NN" if m.mutual else "NN") + (f", distance < {m.max_distance:g}" if m.max_distance is not None else "")
    Console().print(summary_table(f"delfi rerank -> {out}", [
        ("queries", str(report.queries)), ("putative matches", f"{putative} ({rule}, features: {family or 'unknown'})"),
        ("verification", f"{m.geometry}, {m.threshold:g} px, {m.max_iters} iterations"),
        ("pairs verified", str(report.pairs)),
        ("time", f"{report.seconds:.1f} s ({report.seconds_per_query:.2f} s / query)"),
    ] + ([("matches", str(matches))] if matches else [])))
    failed = [(n, report.failed.get(n, "not in the feature store")) for n in sorted(set(report.missing))]
    _report(failed, "images without usable features (left unverified)", out)
    raise typer.Exit(EXIT_FAILED if failed else EXIT_OK)


def _check_ranking_replaceable(path: Path) -> None:
    """Exit 2 unless ``path`` is new or a ranking file delfi wrote (its first line is the header)."""
    from delfi.io.rankings import HEADER

    if not path.exists():
        return
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            first = fh.readline().rstrip("\n")
    except OSError as exc:
        raise fail(f"--out {path}: cannot read it ({exc.strerror or exc})") from None
    if first != HEADER:
        raise fail(f"--out {path} exists and is not a delfi ranking: refusing to overwrite it; choose another path")


def _check_match_store_replaceable(path: Path) -> None:
    """Exit 2 unless ``path`` is new or a match store written by ``delfi rerank`` (it is started afresh)."""
    from delfi.io.matches import MatchStore

    if not path.exists() and not Path(f"{path}.journal").exists():
        return
    try:
        with MatchStore(path) as store:
            model = store.attrs.get("model")
    except (OSError, ValueError, KeyError) as exc:
        raise fail(f"--matches {path} exists and is not a delfi match store ({exc}): refusing to replace it; "
                   "choose another path") from None
    if model != "rerank":
        raise fail(f"--matches {path} holds the matches of another command (model {model!r}), not of "
                   "`delfi rerank`: refusing to replace it; choose another path")


def _exclusions(path: Path) -> dict[str, set[str]]:
    from delfi.io.pairs import read_pairs

    out: dict[str, set[str]] = {}
    for query, db in read_pairs(path):
        out.setdefault(query, set()).add(db)
    return out

