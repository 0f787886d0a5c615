"""The retrieval steps every benchmark shares: extract, index + search, rerank, write rankings.

`run_retrieval` takes a query and a database feature store (made by `extract_images` or by the user)
and produces the rankings before and after spatial-verification reranking; the benchmark runners
(`delfi.eval.revisitop_run`, `delfi.eval.vpr_run`) add their datasets and metrics around it.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from delfi.types import Ranking

__all__ = ["RetrievalSettings", "RetrievalOutput", "extract_images", "run_retrieval", "expand_ranking"]


@dataclass
class RetrievalSettings:
    """How the database is searched and reranked."""

    index: str = "exact"  # exact | flat | ivfpq (global descriptors) | asmk (local descriptors)
    index_params: dict[str, Any] = field(default_factory=dict)
    top_k: int = 100  # results kept per query (at least the rerank depth)
    rerank: Any = None  # a RerankConfig, or None for no reranking
    keep_matches: bool = False  # write the verified matches to <out>/matches.h5 (for the report)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RetrievalOutput:
    before: Ranking
    after: Ranking | None
    files: dict[str, str] = field(default_factory=dict)
    rerank_seconds_per_query: float = 0.0
    missing: list[str] = field(default_factory=list)  # images without features (never ranked / unverified)
    reasons: dict[str, str] = field(default_factory=dict)  # name -> why its features were left out


def extract_images(model: Any, config: dict[str, Any], entries, out: str | os.PathLike, *,
                   boxes: Mapping[str, tuple[float, float, float, float]] | None = None,
                   on_image: Callable | None = None):
    """Extract (or resume) a feature store; returns the `ExtractionReport`."""
    from delfi.extract.extractor import extract_to_store

    return extract_to_store(model, entries, out, config=config, boxes=dict(boxes) if boxes else None,
                            on_image=on_image)


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
    memo: dict[tuple[str, str], int] | None = None,
) -> RetrievalOutput:
    """Index ``database``, search with ``queries``, rerank; rankings go to ``out``.

    Writes ``out/index/`` (the index), ``out/ranking.txt`` and, with reranking,
    ``out/reranked.txt`` (and ``out/matches.h5`` when ``settings.keep_matches``). Ids of the rankings
    follow the order of ``database``. Images without features (failed extraction) are left out of the
    index and listed in ``missing``; a query without features gets an empty ranking (a miss).
    """
    from delfi.io.features import FeatureStore
    from delfi.io.rankings import write_ranking
    from delfi.retrieval.rerank import RerankReport, rerank_stores
    from delfi.retrieval.search import build_index, search

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with FeatureStore(db_store) as store:
        db_used = [n for n in database if n in store]
    with FeatureStore(query_store) as store:
        q_used = [q for q in queries if q in store]
    missing = [n for n in database if n not in set(db_used)] + [q for q in queries if q not in set(q_used)]
    if not db_used or not q_used:
        raise ValueError(f"{db_store if not db_used else query_store}: none of the {'database' if not db_used else 'query'} "
                         "images has features (see the extraction failures)")
    reasons: dict[str, str] = {}
    left_out = reasons.__setitem__  # (name, reason): an unreadable or non-finite entry is left out, not fatal
    index = build_index(db_store, out / "index", kind=settings.index, names=db_used, params=settings.index_params,
                        on_failure=left_out)
    if len(reasons) == len(db_used):
        raise ValueError(f"{db_store}: none of the database images has usable features ({len(reasons)} left out)")
    indexed = len(db_used) - sum(name in reasons for name in db_used)
    found = search(index, query_store, top_k=min(settings.top_k, indexed), names=q_used, on_failure=left_out)
    missing += [name for name in reasons if name not in missing]
    before = expand_ranking(found, queries, database)
    files = {"index": str(out / "index"), "ranking": str(write_ranking(out / "ranking.txt", before))}
    result = RetrievalOutput(before, None, files, missing=missing, reasons=reasons)
    if settings.rerank is None:
        return result
    report = RerankReport()
    matches_out = out / "matches.h5" if settings.keep_matches else None
    result.after = rerank_stores(before, query_store, db_store, settings.rerank, matches_out=matches_out, junk=junk,
                                 report=report, on_query=on_query, memo=memo)
    files["reranked"] = str(write_ranking(out / "reranked.txt", result.after))
    if matches_out is not None:
        files["matches"] = str(matches_out)
    result.rerank_seconds_per_query = report.seconds_per_query
    result.missing = list(dict.fromkeys(missing + report.missing))
    result.reasons.update({name: why for name, why in report.failed.items() if name not in result.reasons})
    return result


def expand_ranking(ranking: Ranking, queries: Sequence[str], database: Sequence[str]) -> Ranking:
    """``ranking`` re-expressed over the full ``database`` id space, one row per name of ``queries``
    (in that order); queries without results get empty rows (all -1)."""
    import numpy as np

    ids = {name: i for i, name in enumerate(database)}
    rows = {q: r for r, q in enumerate(ranking.queries)}
    shape = (len(queries), ranking.depth)
    indices = np.full(shape, -1, dtype=np.int64)
    scores = np.full(shape, np.nan)
    remap = np.array([ids[name] for name in ranking.database] + [-1], dtype=np.int64)  # -1 maps to -1
    for q, name in enumerate(queries):
        if name in rows:
            indices[q] = remap[ranking.indices[rows[name]]]
            scores[q] = ranking.scores[rows[name]]
    return Ranking(list(queries), list(database), indices, scores)
