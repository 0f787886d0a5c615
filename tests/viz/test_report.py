"""delfi.viz.report: the HTML retrieval report, parsed as HTML and rendered by headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

Image = pytest.importorskip("PIL.Image")
pytest.importorskip("matplotlib")  # delfi.viz needs the viz extra

from delfi.types import Ranking  # noqa: E402
from delfi.viz.report import write_report  # noqa: E402

WEIRD = 'x<&">.jpg'  # a name that must be escaped
MAGENTA = (255, 0, 255)  # d3's colour, found in the screenshot
POSITIVE_BORDER = (26, 127, 55)  # #1a7f37
WRONG_BORDER = (207, 34, 46)  # #cf222e
DB = ["d0.jpg", "d1.jpg", "d2.jpg", "d3.jpg", "d4.jpg", WEIRD]
QUERIES = ["q/a.jpg", 'q/b<&">.jpg', "q/none.jpg"]
# Before reranking q/a ranks d0 d1 d2 d3 d4; after: d3 d0 d4 d1 d2 (top 4 shown). q/b gains d3.
BEFORE = [[0, 1, 2, 3, 4], [5, 1, -1, -1, -1], [-1] * 5]
AFTER = [[3, 0, 4, 1, 2], [3, 5, 1, -1, -1], [-1] * 5]
RELEVANCE = {"q/a.jpg": {"positive": {"d3.jpg", "d1.jpg"}, "junk": {"d4.jpg"}},
             'q/b<&">.jpg': {"positive": {WEIRD}, "junk": set()}}
TOP_N = 4


def _scores(indices) -> np.ndarray:
    idx = np.asarray(indices)
    return np.where(idx >= 0, 1.0 - 0.1 * np.arange(idx.shape[1]), np.nan)


def _global_scores() -> np.ndarray:
    """AFTER's global scores: each result keeps its score before reranking."""
    before = {(q, d): s for q, row in enumerate(BEFORE) for d, s in zip(row, _scores(BEFORE)[q]) if d >= 0}
    return np.array([[before.get((q, d), np.nan) for d in row] for q, row in enumerate(AFTER)])


class _Page(HTMLParser):
    """Query sections in order, each with its result cards (attributes and text) and its text."""

    def __init__(self) -> None:
        super().__init__()
        self.body: dict[str, str] = {}
        self.sections: list[dict] = []
        self.card: dict | None = None
        self.hrefs: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        classes = (a.get("class") or "").split()
        if tag == "body":
            self.body = a
        elif tag == "section" and "query" in classes:
            self.sections.append({"name": a["data-name"], "cards": [], "text": ""})
        elif tag == "li" and "card" in classes:
            self.card = {"attrs": a, "text": ""}
            self.sections[-1]["cards"].append(self.card)
        elif tag == "a" and a.get("href", "").endswith(".png"):
            self.hrefs.append(a["href"])

    def handle_endtag(self, tag):
        if tag == "li":
            self.card = None

    def handle_data(self, data):
        if self.sections:
            self.sections[-1]["text"] += data
        if self.card is not None:
            self.card["text"] += data


def _parse(text: str) -> _Page:
    page = _Page()
    page.feed(text)
    return page


@pytest.fixture
def report(tmp_path):
    """A report on 3 queries (one without results), with before/after, relevance, a match picture
    (and a missing one), and images: d3 magenta, d2 missing, d4 not an image, the weird name None."""
    images = tmp_path / "images"
    images.mkdir()
    paths: dict[str, Path | None] = {}
    for i, name in enumerate(DB[:5] + QUERIES):
        path = images / f"img{i}.png"
        colour = MAGENTA if name == "d3.jpg" else (40 * i % 200, 90, 160)
        Image.new("RGB", (80 + 10 * i, 60), colour).save(path)
        paths[name] = path
    paths["d2.jpg"] = images / "gone.png"
    (images / "bad.png").write_bytes(b"not an image")
    paths["d4.jpg"] = images / "bad.png"
    paths[WEIRD] = None
    pairs = tmp_path / "pairs"
    pairs.mkdir()
    Image.new("RGB", (40, 20)).save(pairs / "a_d3.png")
    pictures = {("q/a.jpg", "d3.jpg"): pairs / "a_d3.png", ("q/a.jpg", "d0.jpg"): pairs / "missing.png"}
    before = Ranking(QUERIES, DB, BEFORE, _scores(BEFORE))
    inliers = np.where(np.asarray(AFTER) >= 0, 30, -1)
    inliers[0, 1] = -1  # d0 not verified
    after = Ranking(QUERIES, DB, AFTER, _scores(AFTER), global_scores=_global_scores(), inliers=inliers)
    out = write_report(tmp_path / "out" / "report.html", after, image_path=paths.get, before=before,
                       relevance=RELEVANCE, match_pictures=pictures, top_n=TOP_N, thumb_size=64,
                       summary={"mAP M before": 60.1, "mAP M after": np.float32(65.25)})
    return out


def test_report_content(report):
    text = report.read_text(encoding="utf-8")
    page = _parse(text)
    assert [s["name"] for s in page.sections] == QUERIES
    a, b, none = page.sections
    assert [c["attrs"]["data-name"] for c in a["cards"]] == ["d3.jpg", "d0.jpg", "d4.jpg", "d1.jpg"]
    assert [c["attrs"]["data-rank"] for c in a["cards"]] == ["1", "2", "3", "4"]
    assert [c["attrs"]["data-label"] for c in a["cards"]] == ["positive", "wrong", "junk", "positive"]
    for card, label in zip(a["cards"], ["positive", "wrong", "junk", "positive"]):
        assert label in card["text"]  # a text label, not colour alone
    d3, d0, d4, d1 = (c["text"] for c in a["cards"])
    assert "4 → 1" in d3 and "1 → 2" in d0 and "5 → 3" in d4 and "2 → 4" in d1
    assert "inliers30" in d3.replace(" ", "") and "inliers" not in d0  # d0 was not verified
    assert "global0.700" in d3.replace(" ", "") and "global1.000" in d0.replace(" ", "")
    assert "2 positives in the top 4" in a["text"] and "first positive at rank 1 (was 2)" in a["text"]
    assert [c["attrs"]["data-name"] for c in b["cards"]] == ["d3.jpg", WEIRD, "d1.jpg"]
    assert [c["attrs"]["data-label"] for c in b["cards"]] == ["wrong", "positive", "wrong"]
    assert "first positive at rank 2 (was 1)" in b["text"]
    assert "– → 1" in b["cards"][0]["text"] and "global–" in b["cards"][0]["text"].replace(" ", "")
    assert none["cards"] == [] and "no results for this query" in none["text"]
    assert "no ground truth for this query" in none["text"]
    # placeholders for a missing file, a non-image and no path; names escaped in the page
    for card in (a["cards"][2], b["cards"][1]):  # d4 (not an image), the weird name (None)
        assert "(no image)" in card["text"]
    assert text.count("(no image)") == 2  # d2 is below the top 4, so it is not shown
    assert WEIRD not in text and 'b<&">' not in text
    assert "x&lt;&amp;&quot;&gt;.jpg" in text and "q/b&lt;&amp;&quot;&gt;.jpg" in text
    # match pictures: relative links, from the report's folder; a missing one is noted
    assert page.hrefs == ["../pairs/a_d3.png", "../pairs/missing.png"]
    assert (report.parent / page.hrefs[0]).is_file() and "(file missing)" in d0
    # self-contained: no remote or file resources, each thumbnail embedded once (d3 is shown twice)
    assert not re.search(r"https?://|src=\"file:|<link|<img", text)
    assert all(u.startswith("data:image/jpeg;base64,") for u in re.findall(r"url\(([^)]*)\)", text))
    assert text.count("data:image/jpeg;base64,") == 6  # the 3 queries, d3, d0 and d1
    assert "mAP M after" in text and "65.25" in text
    data = json.loads(re.search(r'<script type="application/json" id="delfi-data">(.*?)</script>', text, re.DOTALL)[1])
    assert [q["name"] for q in data["queries"]] == QUERIES
    assert [r["rank_before"] for r in data["queries"][0]["results"]] == [4, 1, 5, 2]


def test_report_without_extras(tmp_path):
    ranking = Ranking(["q"], ["a", "b"], [[1, 0]], [[0.9, 0.5]])
    page = _parse(write_report(tmp_path / "r.html", ranking).read_text(encoding="utf-8"))
    before = Ranking(["q"], ["a", "b"], [[0, 1]], [[0.8, 0.6]])
    reranked = _parse(write_report(tmp_path / "b.html", ranking, before=before).read_text(encoding="utf-8"))
    assert "global0.600" in reranked.sections[0]["cards"][0]["text"].replace(" ", "")  # from `before`
    (section,) = page.sections
    assert [c["attrs"]["data-name"] for c in section["cards"]] == ["b", "a"]
    assert all("data-label" not in c["attrs"] and "→" not in c["text"] for c in section["cards"])
    assert all("(no image)" in c["text"] for c in section["cards"])  # no image_path: placeholders
    with pytest.raises(ValueError):
        write_report(tmp_path / "r.html", ranking, top_n=0)


def test_thumbnails_exif_and_16_bit(tmp_path):
    """Thumbnails follow the EXIF orientation and scale 16-bit images like delfi.io.images."""
    import base64
    import io

    rotated = Image.new("RGB", (80, 40), (200, 30, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: displayed 40 wide, 80 high
    rotated.save(tmp_path / "rot.jpg", exif=exif)
    Image.fromarray(np.full((30, 30), 32768, np.uint16)).save(tmp_path / "deep.png")  # mid grey
    files = {"rot": tmp_path / "rot.jpg", "deep": tmp_path / "deep.png"}
    ranking = Ranking(["rot"], ["deep"], [[0]], [[0.5]])
    text = write_report(tmp_path / "r.html", ranking, image_path=files.get, thumb_size=32).read_text("utf-8")
    rot, deep = (Image.open(io.BytesIO(base64.b64decode(b)))
                 for b in re.findall(r"base64,([A-Za-z0-9+/=]+)", text))
    assert rot.size == (16, 32)
    assert abs(int(np.asarray(deep.convert("L")).mean()) - 128) <= 3


def _empty_ranking() -> Ranking:
    """Ranking's constructor cannot reshape a (0, 0) array, so build the empty one by hand."""
    ranking = Ranking.__new__(Ranking)
    ranking.queries, ranking.database = [], []
    ranking.indices, ranking.scores = np.zeros((0, 0), np.int64), np.zeros((0, 0))
    ranking.global_scores = ranking.inliers = None
    return ranking


def test_empty_report(tmp_path):
    text = write_report(tmp_path / "empty.html", _empty_ranking()).read_text(encoding="utf-8")
    assert _parse(text).sections == [] and "no queries" in text and text.rstrip().endswith("</html>")


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if path := shutil.which(name):
            return path
    pytest.skip("no headless Chromium on PATH (chromium, chromium-browser or google-chrome); "
                ".ci/run installs Debian's chromium package")


def _run_chromium(binary: str, tmp_path: Path, page: Path, *args: str) -> str:
    command = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               "--no-first-run", f"--user-data-dir={tmp_path / 'chrome-profile'}", *args, page.resolve().as_uri()]
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"chromium failed ({done.returncode}): {done.stderr[-2000:]}"
    return done.stdout


def _near(arr: np.ndarray, rgb, tol: int) -> np.ndarray:
    return (np.abs(arr.astype(int) - np.array(rgb)) <= tol).all(axis=-1)


def test_report_renders_in_chromium(report, tmp_path):
    """The page as Chromium renders it: the script ran (marker set), sections and cards in order,
    and the screenshot shows the coloured borders and an embedded thumbnail."""
    binary = _chromium()
    start = time.monotonic()
    dom = _run_chromium(binary, tmp_path, report, "--dump-dom")
    page = _parse(dom)
    assert page.body.get("data-rendered") == str(len(QUERIES)), "the inline script did not run to the end"
    assert [s["name"] for s in page.sections] == QUERIES
    assert [c["attrs"]["data-name"] for c in page.sections[0]["cards"]] == ["d3.jpg", "d0.jpg", "d4.jpg", "d1.jpg"]
    assert "3 of 3 queries shown" in dom  # written by the filter script
    shot = tmp_path / "shot.png"
    _run_chromium(binary, tmp_path, report, f"--screenshot={shot}", "--window-size=1200,1400")
    arr = np.asarray(Image.open(shot).convert("RGB"))
    assert _near(arr, POSITIVE_BORDER, 8).sum() > 200, "no positive (green) border rendered"
    assert _near(arr, WRONG_BORDER, 8).sum() > 200, "no wrong (red) border rendered"
    assert _near(arr, MAGENTA, 12).sum() > 500, "the embedded thumbnail of d3 is not drawn"
    empty = write_report(tmp_path / "empty.html", _empty_ranking())
    dom = _run_chromium(binary, tmp_path, empty, "--dump-dom")
    assert 'data-rendered="0"' in dom and "no queries" in dom
    assert time.monotonic() - start < 60
