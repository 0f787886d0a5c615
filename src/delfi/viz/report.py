"""A self-contained HTML page to browse a retrieval run: each query beside its top results.

`write_report` renders everything as static HTML (it reads fine with JavaScript off): one
section per query, the query thumbnail on the left and a grid of result cards on the right.
Each card shows the thumbnail, rank, name and score; with the ranking before reranking also
the global score and the rank change ("12 → 1"), and the inlier count of verified pairs. With
ground truth, results are marked positive (green), junk (grey) or wrong (red), by colour and by
a text label, and each query gets a line such as "3 positives in the top 10; first positive at
rank 1 (was 4)".

The page loads nothing from elsewhere: CSS and a tiny script are inline and thumbnails are
embedded as base64 JPEG. To keep large runs small, each image is embedded **once**, as a CSS
class (``.t7 {background-image: url(data:...)}``) that every card showing it uses, however many
result lists it appears in. Match pictures are not embedded: cards link to them by a path
relative to the report's folder (a missing file keeps its link, with a note).

The script adds a filter box (queries by name) and, once it has run, sets
``document.body.dataset.rendered`` to the number of query sections (tests use it to prove the
page rendered without script errors). The results are also embedded as JSON in
``<script type="application/json" id="delfi-data">`` for tools that want to read them back.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import numbers
import os
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
from PIL import Image, ImageOps

from delfi.io.images import pil_to_rgb_float
from delfi.types import Ranking

__all__ = ["write_report", "is_delfi_report", "ReportPathError"]

GENERATOR = '<meta name="generator" content="delfi report">'  # marks the pages delfi wrote
_DATA_MARK = b'id="delfi-data"'


class ReportPathError(ValueError):
    """A report path holding a file delfi did not write (it is never overwritten)."""


def is_delfi_report(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a page written by `write_report` (its generator tag or its data script)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096)
            if GENERATOR.encode() in head:
                return True
            fh.seek(0)
            return any(_DATA_MARK in block for block in iter(lambda: fh.read(1 << 20), b""))
    except OSError:
        return False

LABELS = {"positive": "✓ positive", "junk": "○ junk", "wrong": "✗ wrong"}
JPEG_QUALITY = 82

CSS = """
*{box-sizing:border-box}
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;padding:16px 24px;
 color:#1f2328;background:#f6f8fa}
h1{font-size:22px;margin:0 0 8px}
.meta,.legend{color:#57606a;margin:4px 0}
.legend span{margin-right:14px}
table.summary{border-collapse:collapse;margin:10px 0;background:#fff}
table.summary th,table.summary td{border:1px solid #d0d7de;padding:4px 10px;text-align:left}
table.summary td{font-variant-numeric:tabular-nums}
#filter{font:inherit;padding:6px 10px;width:320px;border:1px solid #d0d7de;border-radius:6px;margin:8px 0}
section.query{display:flex;gap:18px;background:#fff;border:1px solid #d0d7de;border-radius:8px;
 padding:14px;margin:14px 0}
.qside{flex:0 0 var(--side);width:var(--side)}
.qside h2{font-size:15px;margin:6px 0 4px;overflow-wrap:anywhere}
.qside h2 a{color:inherit;text-decoration:none}.qside h2 a:hover{text-decoration:underline}
.qside .stats{color:#57606a;font-size:13px;margin-top:4px}
.results{flex:1;display:grid;grid-template-columns:repeat(auto-fill,minmax(var(--card),1fr));gap:10px;
 list-style:none;margin:0;padding:0}
.card{border:1px solid #d0d7de;border-top:5px solid #d0d7de;border-radius:6px;padding:6px;
 font-size:12px;background:#fff;min-width:0}
.card.positive{border-color:#1a7f37;border-top-color:#1a7f37;background:#f0fff4}
.card.junk{border-color:#8c959f;border-top-color:#8c959f;background:#f6f8fa}
.card.wrong{border-color:#cf222e;border-top-color:#cf222e;background:#fffafa}
.thumb{width:100%;height:var(--thumb-h);background:#eaeef2 center/contain no-repeat;border-radius:4px}
.qside .thumb{height:calc(var(--side) * .75)}
.thumb.missing{display:flex;flex-direction:column;align-items:center;justify-content:center;
 text-align:center;color:#57606a;font-size:11px;padding:6px;overflow-wrap:anywhere;
 border:2px dashed #afb8c1;background:#f6f8fa}
.line{display:flex;flex-wrap:wrap;justify-content:space-between;gap:0 6px;margin-top:3px}
.rank{font-weight:700}
.name{overflow-wrap:anywhere;font-weight:600;margin-top:2px}
.label{font-weight:700;white-space:nowrap}
.positive .label{color:#1a7f37}.junk .label{color:#57606a}.wrong .label{color:#cf222e}
.num{font-variant-numeric:tabular-nums;color:#424a53}
.up{color:#1a7f37}.down{color:#cf222e}
.nomatch{color:#8c959f}
.empty{color:#57606a;font-style:italic}
"""

SCRIPT = """
(function(){
  var data = JSON.parse(document.getElementById('delfi-data').textContent);
  var sections = document.querySelectorAll('section.query');
  var box = document.getElementById('filter'), count = document.getElementById('shown');
  function apply(){
    var text = box.value.trim().toLowerCase(), shown = 0;
    sections.forEach(function(s){
      var hit = s.dataset.name.toLowerCase().indexOf(text) >= 0;
      s.hidden = !hit; if (hit) shown++;
    });
    count.textContent = shown + ' of ' + sections.length + ' queries shown';
  }
  if (box) { box.hidden = false; box.addEventListener('input', apply); apply(); }
  if (data.queries.length !== sections.length) throw new Error('query count mismatch');
  document.body.dataset.rendered = String(sections.length);
})();
"""


def _thumbnail(path: Path | None, size: int) -> str | None:
    """Base64 JPEG of ``path`` (EXIF orientation applied, longest side ``size``), or None when
    there is no file or it cannot be read as an image."""
    if path is None:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the draft keeps it small
            with Image.open(path) as img:
                img.draft("RGB", (2 * size, 2 * size))  # JPEG: decode at a reduced scale, much faster
                img = ImageOps.exif_transpose(img)
                if img.mode in ("I", "F") or img.mode.startswith("I;16"):  # delfi's scaling, not clipping
                    rgb = pil_to_rgb_float(img).permute(1, 2, 0).numpy()
                    img = Image.fromarray((rgb * 255 + 0.5).astype(np.uint8))
                elif img.mode not in ("RGB", "L"):
                    img = img.convert("RGBA") if "transparency" in img.info else img
                    img = img.convert("RGB")
                img.thumbnail((size, size), Image.Resampling.LANCZOS)
                buffer = io.BytesIO()
                img.save(buffer, format="JPEG", quality=JPEG_QUALITY, optimize=True)
    except Exception:  # noqa: BLE001 -- missing, unreadable, corrupt, too large...: a placeholder
        return None
    return base64.b64encode(buffer.getvalue()).decode("ascii")


class _Thumbs:
    """Thumbnails by image name, each encoded once and emitted as one CSS class."""

    def __init__(self, image_path: Callable[[str], Path | None] | None, size: int) -> None:
        self.image_path, self.size = image_path, size
        self.classes: dict[str, str | None] = {}
        self.rules: list[str] = []

    def html(self, name: str) -> str:
        if name not in self.classes:
            path = None
            if self.image_path is not None:
                try:
                    found = self.image_path(name)
                    path = None if found is None else Path(found)
                except Exception:  # noqa: BLE001 -- e.g. a KeyError from a dict lookup: a placeholder
                    path = None
            data = _thumbnail(path, self.size)
            cls = None
            if data is not None:
                cls = f"t{len(self.rules)}"
                self.rules.append(f".{cls}{{background-image:url(data:image/jpeg;base64,{data})}}")
            self.classes[name] = cls
        cls, label = self.classes[name], html.escape(name)
        if cls is None:
            return f'<div class="thumb missing" role="img" aria-label="no image: {label}">{label}<br>(no image)</div>'
        return f'<div class="thumb {cls}" role="img" aria-label="{label}"></div>'


def _number(value: float, digits: int = 3) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _finite(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _before_index(before: Ranking | None) -> dict[str, dict[str, tuple[int, float]]]:
    """query -> db name -> (1-based rank, score) in the ranking before reranking."""
    if before is None:
        return {}
    return {
        query: {name: (rank, score) for rank, (name, score) in enumerate(before.results(q), start=1)}
        for q, query in enumerate(before.queries)
    }


def _label(name: str, truth: dict[str, set[str]] | None) -> str | None:
    if truth is None:
        return None
    if name in truth.get("positive", ()):
        return "positive"
    if name in truth.get("junk", ()):
        return "junk"
    return "wrong"


def _first_positive(names: list[str], positives: set[str]) -> int | None:
    return next((rank for rank, name in enumerate(names, start=1) if name in positives), None)


def _query_stats(results: list[str], truth: dict[str, set[str]] | None, before: dict[str, tuple[int, float]] | None,
                 top_n: int) -> str:
    """The per-query line: positives in the top n and the first positive's rank (and before)."""
    if truth is None:
        return "no ground truth for this query"
    positives = set(truth.get("positive", ()))
    hits = sum(name in positives for name in results[:top_n])
    text = f"{hits} positive{'' if hits == 1 else 's'} in the top {top_n} ({len(positives)} known)"
    first = _first_positive(results, positives)
    text += f"; first positive at rank {first}" if first else "; no positive ranked"
    if before is not None:
        old = _first_positive(sorted(before, key=lambda n: before[n][0]), positives)
        text += f" (was {old})" if old else " (none ranked before)"
    return text


def _href(picture: str | os.PathLike, folder: Path) -> tuple[str, bool]:
    """A relative, URL-quoted link from ``folder`` to ``picture`` and whether the file exists."""
    absolute = os.path.abspath(picture)
    try:
        href = quote(Path(os.path.relpath(absolute, os.path.abspath(folder))).as_posix())
    except ValueError:  # another drive (Windows): no relative path exists
        href = Path(absolute).as_uri()
    return href, os.path.isfile(absolute)


def _card(rank: int, name: str, score: float, ctx: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """One result card (HTML) and its JSON record."""
    thumbs: _Thumbs = ctx["thumbs"]
    label = _label(name, ctx["truth"])
    record: dict[str, Any] = {"rank": rank, "name": name, "score": _finite(score), "label": label}
    lines = [(f'<div class="line"><span class="rank">#{rank}</span>'
              f'<span class="num" title="score">{_number(score)}</span></div>')]
    if label is not None:
        lines.append(f'<div class="label">{LABELS[label]}</div>')
    lines.append(f'<div class="name">{html.escape(name)}</div>')
    global_score = ctx["global"]
    if ctx["before"] is not None:
        old_rank, old_score = ctx["before"].get(name, (None, math.nan))
        global_score = old_score if global_score is None else global_score
        record["rank_before"] = old_rank
        if old_rank is None:
            change = f'<span title="not in the ranking before reranking">– → {rank}</span>'
        else:
            arrow = "up" if old_rank > rank else "down" if old_rank < rank else ""
            change = f'<span class="{arrow}" title="rank before → after reranking">{old_rank} → {rank}</span>'
        lines.append(f'<div class="line">{change}</div>')
    if global_score is not None:
        record["global_score"] = _finite(global_score)
        lines.append(f'<div class="line"><span>global</span><span class="num">{_number(global_score)}</span></div>')
    if ctx["inliers"] is not None and ctx["inliers"] >= 0:
        record["inliers"] = int(ctx["inliers"])
        lines.append(f'<div class="line"><span>inliers</span><span class="num">{int(ctx["inliers"])}</span></div>')
    picture = ctx["pictures"].get((ctx["query"], name))
    if picture is not None:
        href, exists = _href(picture, ctx["folder"])
        record["match"] = href
        note = "" if exists else ' <span class="nomatch">(file missing)</span>'
        lines.append(f'<div class="line"><a href="{html.escape(href)}" target="_blank">matches ↗</a>{note}</div>')
    cls = f"card {label}" if label else "card"
    data_label = f' data-label="{label}"' if label else ""
    body = thumbs.html(name) + "".join(lines)
    item = f'<li class="{cls}" data-rank="{rank}" data-name="{html.escape(name)}"{data_label}>{body}</li>'
    return item, record


def _section(q: int, ranking: Ranking, ctx: dict[str, Any], top_n: int) -> tuple[str, dict[str, Any]]:
    """One query section (HTML) and its JSON record."""
    query = ranking.queries[q]
    ctx = {**ctx, "query": query, "truth": None, "before": ctx["before_index"].get(query) if ctx["has_before"] else None}
    if ctx["relevance"] is not None:
        ctx["truth"] = ctx["relevance"].get(query)
    query_thumb = ctx["thumbs"].html(query)  # first, so the CSS lists thumbnails in page order
    all_results = ranking.results(q)
    columns = [k for k, idx in enumerate(ranking.indices[q]) if idx >= 0]
    cards, records = [], []
    for rank, ((name, score), k) in enumerate(zip(all_results[:top_n], columns), start=1):
        ctx["global"] = None if ranking.global_scores is None else float(ranking.global_scores[q, k])
        ctx["inliers"] = None if ranking.inliers is None else int(ranking.inliers[q, k])
        card, record = _card(rank, name, score, ctx)
        cards.append(card)
        records.append(record)
    stats = ""
    if ctx["relevance"] is not None:
        text = _query_stats([n for n, _ in all_results], ctx["truth"], ctx["before"], top_n)
        stats = f'<div class="stats">{html.escape(text)}</div>'
    results = (f'<ol class="results">{"".join(cards)}</ol>' if cards
               else '<p class="empty">no results for this query</p>')
    name = html.escape(query)
    section = (f'<section class="query" id="q{q}" data-name="{name}"><div class="qside">'
               f'{query_thumb}<h2><a href="#q{q}">{name}</a></h2>'
               f'<div class="stats">{len(all_results)} results, top {min(top_n, len(all_results))} shown</div>'
               f'{stats}</div>{results}</section>')
    return section, {"name": query, "results": records}


def _summary_table(summary: dict[str, Any] | None) -> str:
    if not summary:
        return ""
    rows = []
    for key, value in summary.items():
        real = isinstance(value, numbers.Real) and not isinstance(value, (bool, int))
        text = format(float(value), ".4g") if real else str(value)
        rows.append(f"<tr><th>{html.escape(str(key))}</th><td>{html.escape(text)}</td></tr>")
    return f'<table class="summary">{"".join(rows)}</table>'


def _legend(relevance: bool, before: bool) -> str:
    parts = []
    if relevance:
        parts += [f'<span class="{k}"><span class="label">{v}</span></span>' for k, v in LABELS.items()]
    if before:
        parts.append("<span>rank before → after reranking</span>")
    return f'<p class="legend">{"".join(parts)}</p>' if parts else ""


def _json_value(value: Any) -> Any:
    if isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, numbers.Real):  # float, numpy scalars
        return _finite(value)
    return str(value)


def _json_script(data: dict[str, Any]) -> str:
    """``data`` as JSON that cannot close its <script> element early."""
    text = json.dumps(data, ensure_ascii=False, allow_nan=False)
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return f'<script type="application/json" id="delfi-data">{text}</script>'


def write_report(
    out: str | os.PathLike,
    ranking: Ranking,
    *,
    image_path: Callable[[str], Path | None] | None = None,
    before: Ranking | None = None,
    relevance: dict[str, dict[str, set[str]]] | None = None,
    match_pictures: dict[tuple[str, str], str | Path] | None = None,
    top_n: int = 10,
    thumb_size: int = 160,
    title: str = "delfi retrieval report",
    summary: dict[str, Any] | None = None,
    extra_html: str = "",
) -> Path:
    """Write a self-contained HTML page showing each query's top ``top_n`` results.

    Args:
        out: the ``.html`` file to write (its folder is created; written atomically).
        ranking: the final (e.g. reranked) ranking.
        image_path: maps a query or database name to its image file; None (or an exception
            from it), a missing or an unreadable file gives a placeholder box with the name.
            Each name is looked up and encoded once, however many lists it appears in.
        before: the ranking before reranking: cards then show "rank before → after" and the
            global score (``ranking.global_scores`` when present, else the score in ``before``).
        relevance: per query ``{"positive": names, "junk": names}``; results are marked positive,
            junk or wrong (every other name). A query missing from it is left unmarked.
        match_pictures: ``(query, db name) -> PNG`` of the verified pair, linked from the card by
            a path relative to the report's folder.
        extra_html: trusted HTML (e.g. figure sections; the caller escapes what it interpolates),
            placed after the summary and legend, before the filter box and the query sections.
        top_n: results shown per query.
        thumb_size: longest side of the embedded thumbnails, in pixels.
        title: page title and heading.
        summary: name -> value pairs (e.g. mAP before and after) shown in a table at the top.

    Returns:
        The path of the written report.

    Raises:
        ReportPathError: ``out`` is a folder, or an existing file that is not a delfi report.
    """
    if top_n < 1 or thumb_size < 8:
        raise ValueError(f"top_n must be >= 1 and thumb_size >= 8, got {top_n} and {thumb_size}")
    out = Path(out)
    if out.is_dir():
        raise ReportPathError(f"{out} is a folder: give the report's file name, e.g. {out / 'report.html'}")
    if out.exists() and not is_delfi_report(out):
        raise ReportPathError(f"{out} exists and is not a delfi report: refusing to overwrite it; choose another path")
    out.parent.mkdir(parents=True, exist_ok=True)
    thumbs = _Thumbs(image_path, thumb_size)
    ctx: dict[str, Any] = {
        "thumbs": thumbs, "relevance": relevance, "pictures": dict(match_pictures or {}),
        "folder": out.parent, "has_before": before is not None, "before_index": _before_index(before),
    }
    sections, records = [], []
    for q in range(len(ranking)):
        section, record = _section(q, ranking, ctx, top_n)
        sections.append(section)
        records.append(record)
    body = "".join(sections) if sections else '<p class="empty" id="no-queries">no queries in this ranking</p>'
    data = {"title": title, "top_n": top_n, "summary": {str(k): _json_value(v) for k, v in (summary or {}).items()},
            "queries": records}
    side, card = max(thumb_size + 30, 170), max(thumb_size + 16, 150)  # room for the text lines
    variables = f":root{{--side:{side}px;--card:{card}px;--thumb-h:{round(thumb_size * 0.75)}px}}"
    head_title = html.escape(title)
    page = (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">{GENERATOR}'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{head_title}</title><style>{variables}{CSS}{''.join(thumbs.rules)}</style></head>\n"
        f"<body><h1>{head_title}</h1>"
        f'<p class="meta">{len(ranking)} queries, {len(ranking.database)} database images, '
        f'top {top_n} results per query. <span id="shown"></span></p>'
        f"{_summary_table(summary)}{_legend(relevance is not None, before is not None)}{extra_html}"
        '<input id="filter" type="search" placeholder="filter queries by name" aria-label="filter queries" hidden>'
        f"\n<main>{body}</main>\n{_json_script(data)}\n<script>{SCRIPT}</script></body></html>\n"
    )
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex}.tmp")
    try:
        tmp.write_text(page, encoding="utf-8")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out
