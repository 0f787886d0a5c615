"""Visual place recognition end to end (sf-xs style): extract, index, search, rerank, recall@N
before and after, each query's first-positive rank change, and a sweep over the reranking knobs.

Layout: ``<root>/<split>/{database,queries}/@utm_east@utm_north@...@.jpg`` (or ``<root>/{database,
queries}``). Store names are ``database/<file>`` and ``queries/<file>``; positives are database
images within ``radius`` metres (25 m, inclusive).
"""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from delfi.eval.results import (
    ResultsConflictError,
    check_outside,
    claim_run_dir,
    mark_run_dir,
    results_benchmark,
    write_results,
)
from delfi.eval.retrieval_run import RetrievalSettings, extract_images, run_retrieval

__all__ = ["vpr_layout", "VPRReport", "run_vpr", "positive_rank_moves", "sweep_rerank", "Sweep", "SweepRow", "plot_sweep",
           "store_names", "claim_sweep_dir"]


BENCHMARK = "vpr"
SWEEP = "vpr-sweep"
PRODUCTS = ("ranking.txt", "reranked.txt", "report.html", "sweep.json", "sweep.png")
"""Files a run writes besides results.json, the stores and the index: refused when results.json is not ours."""


def vpr_layout(root: str | os.PathLike, split: str = "test") -> tuple[Path, list[Path], list[Path]]:
    """``(split folder, database paths, query paths)``, sorted."""
    from delfi.datasets.vpr import list_split

    root = Path(root)
    base = root / split if (root / split / "database").is_dir() else root
    db, queries = list_split(base, "")
    if not db or not queries:
        raise FileNotFoundError(f"{base}: no .jpg images in database/ or queries/")
    return base, db, queries


def store_names(base: Path, paths: Sequence[Path]) -> list[str]:
    """Feature-store names of image paths: posix paths relative to the split folder."""
    return [p.relative_to(base).as_posix() for p in paths]


@dataclass
class VPRReport:
    recall_before: dict[int, float]
    recall_after: dict[int, float] | None
    rank_change: dict[str, float | None] = field(default_factory=dict)  # per query: before - after (+ = better)
    files: dict[str, str] = field(default_factory=dict)
    extraction: dict[str, Any] = field(default_factory=dict)
    rerank_seconds_per_query: float = 0.0
    queries_without_positives: int = 0
    missing: list[str] = field(default_factory=list)  # images without features
    positive_ranks: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # per query, each positive
    reasons: dict[str, str] = field(default_factory=dict)  # missing name -> why (when known)

    def summary(self) -> dict[str, int]:
        changes = [v for v in self.rank_change.values() if v is not None]
        return {"improved": sum(v > 0 for v in changes), "worse": sum(v < 0 for v in changes),
                "unchanged": sum(v == 0 for v in changes), "undefined": len(self.rank_change) - len(changes)}

    def to_json(self) -> dict[str, Any]:
        return {"recall_before": self.recall_before, "recall_after": self.recall_after,
                "rank_change": self.rank_change, "rank_change_summary": self.summary(), "files": self.files,
                "extraction": self.extraction, "rerank_seconds_per_query": self.rerank_seconds_per_query,
                "queries_without_positives": self.queries_without_positives, "missing": self.missing,
                "missing_reasons": self.reasons, "positive_ranks": self.positive_ranks}


def ground_truth(base: Path, db_paths: Sequence[Path], q_paths: Sequence[Path], radius: float = 25.0):
    """Positives (database ids within ``radius`` m) per query."""
    from delfi.datasets.vpr import utm_array
    from delfi.eval.vpr import positives_within

    return positives_within(utm_array(db_paths), utm_array(q_paths), radius)


def run_vpr(
    root: str | os.PathLike,
    out: str | os.PathLike,
    *,
    split: str = "test",
    model: Any = None,
    config: dict[str, Any] | None = None,
    settings: RetrievalSettings | None = None,
    ns: Sequence[int] = (1, 5, 10, 20),
    radius: float = 25.0,
    on_image: Callable | None = None,
    on_query: Callable[[str], None] | None = None,
) -> VPRReport:
    """Recall@N before / after reranking; writes stores, rankings and ``results.json`` to ``out``
    (never inside ``root``; an existing ``results.json`` there must be delfi's own VPR results)."""
    from delfi.eval.vpr import rank_changes, recall_at_n
    from delfi.io.images import ImageEntry

    base, db_paths, q_paths = vpr_layout(root, split)
    check_outside(out, root, "place-recognition data")
    out = claim_run_dir(out, BENCHMARK, PRODUCTS)
    out.mkdir(parents=True, exist_ok=True)
    mark_run_dir(out, BENCHMARK)  # an interrupted run leaves a folder a rerun may use
    database, queries = store_names(base, db_paths), store_names(base, q_paths)
    positives = ground_truth(base, db_paths, q_paths, radius)
    q_store, db_store = out / "queries.h5", out / "db.h5"
    extraction: dict[str, Any] = {}
    if model is not None:
        started = time.perf_counter()
        for label, store, paths, names in (("queries", q_store, q_paths, queries), ("database", db_store, db_paths, database)):
            entries = [ImageEntry(p, n) for p, n in zip(paths, names)]
            report = extract_images(model, config or {}, entries, store, on_image=on_image)
            extraction[label] = {"extracted": report.extracted, "skipped": report.skipped, "failures": report.failures}
        extraction["seconds"] = time.perf_counter() - started
    settings = settings or RetrievalSettings()
    rerank_k = settings.rerank.top_k if settings.rerank is not None else 0
    settings.top_k = max(settings.top_k, max(ns), rerank_k)
    output = run_retrieval(q_store, db_store, out, settings, queries=queries, database=database, on_query=on_query)
    before = output.before.indices
    after = output.after.indices if output.after is not None else None
    changes = rank_changes(before, after, positives) if after is not None else np.full(len(queries), np.nan)
    report = VPRReport(
        recall_at_n(before, positives, ns), recall_at_n(after, positives, ns) if after is not None else None,
        {q: (None if np.isnan(c) else float(c)) for q, c in zip(queries, changes)} if after is not None else {},
        output.files, extraction, output.rerank_seconds_per_query, int(sum(len(p) == 0 for p in positives)),
        output.missing, reasons=output.reasons,
    )
    if after is not None:
        report.positive_ranks = positive_rank_moves(before, after, positives, queries, database)
    report.files["results"] = str(out / "results.json")
    write_results(out / "results.json", {**report.to_json(), "settings": settings.as_dict(), "radius_m": radius},
                  BENCHMARK)
    return report


def positive_rank_moves(before: np.ndarray, after: np.ndarray, positives, queries: Sequence[str],
                        database: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """Per query, every positive found in either list: ``{"db", "before", "after"}`` with 0-based
    ranks (None when outside the list), sorted by the rank after reranking."""
    out = {}
    for q, name in enumerate(queries):
        where_b = {int(i): r for r, i in enumerate(before[q]) if i >= 0}
        where_a = {int(i): r for r, i in enumerate(after[q]) if i >= 0}
        found = [int(p) for p in positives[q] if int(p) in where_b or int(p) in where_a]
        moves = [{"db": database[p], "before": where_b.get(p), "after": where_a.get(p)} for p in found]
        out[name] = sorted(moves, key=lambda m: (m["after"] is None, m["after"] or 0))
    return out


@dataclass
class SweepRow:
    top_k: int
    max_distance: float | None
    threshold: float
    recall: dict[int, float]
    seconds_per_query: float


@dataclass
class Sweep:
    recall_before: dict[int, float]  # the global ranking's recall@N
    rows: list[SweepRow]  # one per (K, matching threshold, residual)

    @property
    def best(self) -> SweepRow | None:
        """The row with the highest recall@1 (then @5); the first such row on ties."""
        return max(self.rows, key=lambda r: (r.recall[1], r.recall[5])) if self.rows else None


def sweep_rerank(
    root: str | os.PathLike,
    out: str | os.PathLike,
    *,
    split: str = "test",
    top_ks: Sequence[int] = (10, 20, 50, 100),
    max_distances: Sequence[float | None] = (0.8, 1.0, 1.2),
    thresholds: Sequence[float] = (10.0, 20.0, 40.0),
    base_config: Any = None,
    ns: Sequence[int] = (1, 5, 10, 20),
    radius: float = 25.0,
    on_step: Callable[[str], None] | None = None,
) -> Sweep:
    """Rerank the stored ranking of a `run_vpr` output folder for every (K, matching threshold,
    RANSAC residual) combination: recall@N of the global ranking and after each reranking
    (also written to ``sweep.json``).

    The folder must hold ``queries.h5``, ``db.h5``, ``ranking.txt`` and delfi's VPR ``results.json``
    (run `run_vpr` first); see `claim_sweep_dir`.
    """
    from delfi.eval.vpr import recall_at_n
    from delfi.io.features import FeatureStore
    from delfi.io.rankings import read_ranking
    from delfi.retrieval.rerank import RerankConfig, RerankReport, rerank

    base, db_paths, q_paths = vpr_layout(root, split)
    out = claim_sweep_dir(out)
    positives = ground_truth(base, db_paths, q_paths, radius)
    ranking = read_ranking(out / "ranking.txt", database=store_names(base, db_paths))
    order = {q: i for i, q in enumerate(store_names(base, q_paths))}
    pos = [positives[order[q]] for q in ranking.queries]
    base_config = base_config or RerankConfig()
    sweep = Sweep(recall_at_n(ranking.indices, pos, ns), [])
    with FeatureStore(out / "queries.h5") as qstore, FeatureStore(out / "db.h5") as dbstore:
        for k, dist, thr in itertools.product(top_ks, max_distances, thresholds):
            config = replace(base_config, top_k=int(k), matching=replace(base_config.matching, max_distance=dist,
                                                                         threshold=float(thr)))
            report = RerankReport()
            after = rerank(ranking, qstore, dbstore, config, report=report)
            sweep.rows.append(SweepRow(int(k), dist, float(thr), recall_at_n(after.indices, pos, ns),
                                       report.seconds_per_query))
            if on_step is not None:
                on_step(f"K={k} d<{dist} r={thr}")
    write_results(out / "sweep.json", {"recall_before": sweep.recall_before, "rows": [r.__dict__ for r in sweep.rows]},
                  SWEEP)
    return sweep


def claim_sweep_dir(out: str | os.PathLike) -> Path:
    """Check that ``out`` is a finished `run_vpr` folder where a sweep may write ``sweep.json`` /
    ``sweep.png`` (absent, or written by an earlier sweep). Raises `ResultsConflictError` naming the file."""
    out = Path(out)
    results = out / "results.json"
    if not out.is_dir() or results_benchmark(results) != BENCHMARK:
        raise ResultsConflictError(f"{out}: not a folder written by `delfi eval vpr` (no VPR {results}): run it first")
    return claim_run_dir(out, SWEEP, ("sweep.png",), results="sweep.json")


def plot_sweep(rows: Sequence[SweepRow], out: str | os.PathLike, n: int = 1, before: float | None = None) -> Path:
    """Recall@n against K, one line per (matching threshold, residual); the global recall dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    groups: dict[tuple, list[SweepRow]] = {}
    for row in rows:
        groups.setdefault((row.max_distance, row.threshold), []).append(row)
    for (dist, thr), group in sorted(groups.items(), key=lambda g: (g[0][0] is None, g[0][0] or 0, g[0][1])):
        group = sorted(group, key=lambda r: r.top_k)
        ax.plot([r.top_k for r in group], [r.recall[n] for r in group], marker="o",
                label=f"match d < {dist}, residual {thr:g} px")
    if before is not None:
        ax.axhline(before, color="black", linestyle="--", label="global only")
    ax.set_xlabel("K (reranked candidates)")
    ax.set_ylabel(f"recall@{n} (%)")
    ax.set_title(f"Reranking sweep: recall@{n}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out)
    plt.close(fig)
    return out
