"""Revisited Oxford / Paris end to end: extract (queries cropped to their boxes), index, search,
rerank, mAP E/M/H and mP@k before and after reranking.

Dataset layout (the revisitop download)::

    <root>/<dataset>/jpg/<name>.jpg  and  <root>/<dataset>/gnd_<dataset>.pkl
    (or <root>/jpg/ and <root>/gnd_<dataset>.pkl)

Feature stores and the index use the dataset's own names (``imlist`` / ``qimlist``, no extension),
database ids follow ``imlist`` (so rankings index the ground truth directly). The whole database is
ranked (the metric needs every position); reranking touches the top K only, skipping each
protocol's junk as TF's DELG script does (see `run_revisitop`'s ``rerank_junk``).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from delfi.eval.results import check_outside, claim_run_dir, mark_run_dir, write_results
from delfi.eval.retrieval_run import RetrievalSettings, extract_images, run_retrieval
from delfi.io.rankings import write_ranking
from delfi.retrieval.rerank import rerank_stores

__all__ = ["DATASETS", "RERANK_JUNK", "dataset_layout", "relevance", "protocol_junk", "RevisitopReport",
           "run_revisitop"]

DATASETS = ("roxford5k", "rparis6k")
RERANK_JUNK = ("protocol", "common")
BENCHMARK = "revisitop"
PRODUCTS = ("ranking.txt", "reranked.txt", "reranked_easy.txt", "reranked_hard.txt", "report.html")
"""Files a run writes besides results.json, the stores and the index: refused when results.json is not ours."""


def dataset_layout(root: str | os.PathLike, dataset: str) -> tuple[Path, Path]:
    """``(image folder, ground-truth pickle)``; FileNotFoundError names what is missing."""
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")
    root = Path(root)
    for base in (root / dataset, root):
        gnd = base / f"gnd_{dataset}.pkl"
        if gnd.is_file():
            images = base / "jpg"
            if not images.is_dir():
                raise FileNotFoundError(f"{images}: image folder missing (next to {gnd.name})")
            return images, gnd
    raise FileNotFoundError(f"gnd_{dataset}.pkl not found in {root / dataset} or {root}")


def relevance(gnd: dict) -> dict[str, dict[str, set[str]]]:
    """Per query name: Medium-protocol ``positive`` (easy + hard) and ``junk`` database names."""
    names = gnd["imlist"]
    out = {}
    for q, entry in zip(gnd["qimlist"], gnd["gnd"]):
        out[q] = {"positive": {names[i] for i in list(entry["easy"]) + list(entry["hard"])},
                  "junk": {names[i] for i in entry["junk"]}}
    return out


def protocol_junk(gnd: dict, protocol: str) -> dict[str, set[str]]:
    """Per query name, the database names that are junk under ``protocol`` (easy | medium | hard)."""
    from delfi.eval.revisitop import protocol_sets

    names = gnd["imlist"]
    return {q: {names[i] for i in protocol_sets(entry, protocol)[1]} for q, entry in zip(gnd["qimlist"], gnd["gnd"])}


@dataclass
class RevisitopReport:
    dataset: str
    before: dict
    after: dict | None
    files: dict[str, str] = field(default_factory=dict)
    extraction: dict[str, Any] = field(default_factory=dict)
    rerank_seconds_per_query: float = 0.0
    missing: list[str] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)  # missing name -> why (when known)

    def to_json(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "before": self.before, "after": self.after, "files": self.files,
                "extraction": self.extraction, "rerank_seconds_per_query": self.rerank_seconds_per_query,
                "missing": self.missing, "missing_reasons": self.reasons}


def _entries(folder: Path, names: Sequence[str]):
    from delfi.io.images import ImageEntry

    return [ImageEntry(folder / f"{name}.jpg", name) for name in names]


def run_revisitop(
    root: str | os.PathLike,
    dataset: str,
    out: str | os.PathLike,
    *,
    model: Any = None,
    config: dict[str, Any] | None = None,
    settings: RetrievalSettings | None = None,
    kappas: Sequence[int] = (1, 5, 10),
    rerank_junk: str = "protocol",
    on_image: Callable | None = None,
    on_query: Callable[[str], None] | None = None,
) -> RevisitopReport:
    """Evaluate one model on roxford5k / rparis6k.

    Args:
        root: the data root (see the module docstring).
        dataset: ``roxford5k`` or ``rparis6k``.
        out: results folder: ``queries.h5``, ``db.h5`` (resumable), ``index/``, ``ranking.txt``,
            ``reranked.txt``, ``results.json``. Never inside ``root``; an existing ``results.json``
            there must be delfi's own revisitop results (`delfi.eval.results.claim_run_dir`).
        model, config: an extractor (``extract(image, bbox=...)``) and its resolved config dict. Without
            a model the stores must already exist in ``out`` (re-scoring only).
        settings: index kind and reranking (`RetrievalSettings`; ``top_k`` is raised to the database
            size so the whole ranking is evaluated).
        rerank_junk: ``"protocol"`` (TF's DELG script): each protocol's score comes from a reranking
            that skips that protocol's junk (E: junk + hard, M: junk, H: junk + easy), so its K
            verified slots go to images that count for it; ``reranked.txt`` is the Medium one,
            ``reranked_easy.txt`` / ``reranked_hard.txt`` the others (pairs verified once, shared).
            ``"common"``: one reranking skipping only ``junk`` (junk under every protocol).

    Returns:
        A `RevisitopReport`; ``results.json`` holds the same.
    """
    from delfi.datasets.revisitop import load_ground_truth, query_bbox
    from delfi.eval.revisitop import evaluate

    images, gnd_path = dataset_layout(root, dataset)
    check_outside(out, root, "revisitop data")
    out = claim_run_dir(out, BENCHMARK, PRODUCTS)
    gnd = load_ground_truth(gnd_path)
    out.mkdir(parents=True, exist_ok=True)
    mark_run_dir(out, BENCHMARK)  # an interrupted run leaves a folder a rerun may use
    queries, database = gnd["qimlist"], gnd["imlist"]
    q_store, db_store = out / "queries.h5", out / "db.h5"
    extraction: dict[str, Any] = {}
    if model is not None:
        boxes = {name: query_bbox(gnd, i) for i, name in enumerate(queries)}
        started = time.perf_counter()
        for label, store, names, crop in (("queries", q_store, queries, boxes), ("database", db_store, database, None)):
            report = extract_images(model, config or {}, _entries(images, names), store, boxes=crop, on_image=on_image)
            extraction[label] = {"extracted": report.extracted, "skipped": report.skipped, "failures": report.failures}
        extraction["seconds"] = time.perf_counter() - started
    for store in (q_store, db_store):
        if not store.exists():
            raise FileNotFoundError(f"{store}: no features (give a model to extract them)")
    settings = settings or RetrievalSettings()
    settings.top_k = len(database)
    if rerank_junk not in RERANK_JUNK:
        raise ValueError(f"rerank_junk must be one of {RERANK_JUNK}, got {rerank_junk!r}")
    memo: dict[tuple[str, str], int] = {}
    junk = protocol_junk(gnd, "medium")  # = each query's junk list, junk under every protocol
    output = run_retrieval(q_store, db_store, out, settings, queries=queries, database=database, junk=junk,
                           on_query=on_query, memo=memo)
    before = evaluate(output.before.ranks(len(database)), gnd["gnd"], kappas)
    after = None
    if output.after is not None:
        after = evaluate(output.after.ranks(len(database)), gnd["gnd"], kappas)
        if rerank_junk == "protocol":  # TF: each protocol reranks its own top K without its junk
            for protocol in ("easy", "hard"):
                ranking = rerank_stores(output.before, q_store, db_store, settings.rerank,
                                        junk=protocol_junk(gnd, protocol), memo=memo)
                output.files[f"reranked_{protocol}"] = str(write_ranking(out / f"reranked_{protocol}.txt", ranking))
                after[protocol] = evaluate(ranking.ranks(len(database)), gnd["gnd"], kappas)[protocol]
    result = RevisitopReport(dataset, before, after, output.files, extraction, output.rerank_seconds_per_query,
                             output.missing, reasons=output.reasons)
    result.files["results"] = str(out / "results.json")
    write_results(out / "results.json", {**result.to_json(), "settings": settings.as_dict(), "rerank_junk": rerank_junk},
                  BENCHMARK)
    return result

