"""The retrieval steps every benchmark shares: extract, index + search, rerank, write rankings.

`run_retrieval` takes a query and a database feature store (made by `extract_images` or by the user)
and produces the rankings before and after spatial-verification reranking; the benchmark runners
(`delfi.eval.revisitop_run`, `delfi.eval.vpr_run`) add their datasets and metrics around it.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from delfi.types import Ranking

__all__ = ["RetrievalSettings", "RetrievalOutput", "extract_images", "run_retrieval", "write_json"]


@dataclass
class RetrievalSettings:
    """How the database is searched and reranked."""

    index: str = "exact"  # exact | flat | ivfpq (global descriptors) | asmk (local descriptors)
    index_params: dict[str, Any] = field(default_factory=dict)
    top_k: int = 100  # results kept per query (at least the rerank depth)
    rerank: Any = None  # a RerankConfig, or None for no reranking
    keep_matches: bool = False  # write the verified matches to <out>/matches.h5 (for the report)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self) if self.rerank is None else {**asdict(self), "rerank": self.rerank.as_dict()}
        return out


@dataclass
class RetrievalOutput:
    before: Ranking
    after: Ranking | None
    files: dict[str, str] = field(default_factory=dict)
    rerank_seconds_per_query: float = 0.0
    missing: list[str] = field(default_factory=list)


def extract_images(model: Any, config: dict[str, Any], entries, out: str | os.PathLike, *,
                   boxes: Mapping[str, tuple[float, float, float, float]] | None = None,
                   on_image: Callable | None = None):
    """Extract (or resume) a feature store; returns the `ExtractionReport`."""
    from delfi.extract.extractor import extract_to_store

    return extract_to_store(model, entries, out, config=config, boxes=dict(boxes) if boxes else None,
                            on_image=on_image)


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """JSON with sorted keys, written atomically."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=float) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def run_retrieval(
    query_store: str | os.PathLike,
    db_store: str | os.PathLike,
    out: str | os.PathLike,
    settings: RetrievalSettings,
    *,
    queries: Sequence[str],
    database: Sequence[str],
    junk: Mapping[str, set[str]] | None = None,
    on_query: Callable[[str], None] | None = None,
) -> RetrievalOutput:
    """Index ``database``, search with ``queries``, rerank; rankings go to ``out``.

    Writes ``out/index/`` (the index), ``out/ranking.txt`` and, with reranking,
    ``out/reranked.txt`` (and ``out/matches.h5`` when ``settings.keep_matches``). Ids of the rankings
    follow the order of ``database``.
    """
    from delfi.io.rankings import write_ranking
    from delfi.retrieval.search import build_index, open_store, search

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    index = build_index(db_store, out / "index", kind=settings.index, names=list(database),
                        params=settings.index_params)
    before = search(index, query_store, top_k=min(settings.top_k, len(database)), names=list(queries))
    files = {"index": str(out / "index"), "ranking": str(write_ranking(out / "ranking.txt", before))}
    result = RetrievalOutput(before, None, files)
    if settings.rerank is None:
        return result
    from delfi.retrieval.rerank import RerankReport, rerank

    report = RerankReport()
    match_store = None
    if settings.keep_matches:
        from delfi.io.matches import MatchStore

        match_store = MatchStore(out / "matches.h5", "w", attrs={
            "model": "rerank", "weights_sha256": "none", "config": {"rerank": settings.rerank.as_dict()}})
        files["matches"] = str(out / "matches.h5")
    qstore, dbstore = open_store(query_store), open_store(db_store)
    try:
        after = rerank(before, qstore, dbstore, settings.rerank, junk=junk, report=report, on_query=on_query,
                       on_pair=(lambda q, d, m: match_store.put(q, d, m)) if match_store is not None else None)
    finally:
        qstore.close()
        dbstore.close()
        if match_store is not None:
            match_store.close()
    files["reranked"] = str(write_ranking(out / "reranked.txt", after))
    result.after = after
    result.rerank_seconds_per_query = report.seconds_per_query
    result.missing = sorted(set(report.missing))
    return result
