"""The demo's closing summary: rows of (what, value), as a Rich table and in the report."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from delfi.demo.run import DemoResult

__all__ = ["summary_rows", "summary_table"]


def summary_rows(result: "DemoResult", timings: bool = True) -> list[tuple[str, str]]:
    """The (what, value) rows: images, features / image, index, mAP and recall@1 before -> after
    reranking (percent), MMA@1/3/5 on the known homographies, and (``timings``) seconds per step."""
    rows = [
        ("images", f"{result.n_queries} queries, {result.n_database} database "
                   f"({result.n_database - sum(len(v) for v in result.positives.values())} distractors)"),
        ("features / image", f"{result.features_per_image:.0f}"),
        ("index", result.index_kind),
        ("mAP before -> after reranking", f"{result.before['map']:.1f} -> {result.after['map']:.1f}"),
        ("recall@1 before -> after reranking", f"{result.before['recall@1']:.1f} -> {result.after['recall@1']:.1f}"),
    ]
    rows += [(f"MMA@{t} (known homographies)", f"{v:.3f}") for t, v in result.mma.items()]
    rows.append(("mutual NN matches / view", f"{result.mean_matches:.0f}"))
    if timings:
        rows += [(f"time: {step}", f"{seconds:.1f} s") for step, seconds in result.timings.items()]
        rows.append(("time: total", f"{sum(result.timings.values()):.1f} s"))
    return rows


def summary_table(result: "DemoResult", title: str):
    """A two-column Rich table of `summary_rows`."""
    from rich.table import Table

    table = Table(title=title, title_justify="left", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    for key, value in summary_rows(result):
        table.add_row(key, value)
    return table
