"""The demo pipeline behind ``delfi demo``: scene set -> extraction -> index -> search -> rerank ->
evaluation -> pictures -> report. Every number comes from this run.

The demo folder (``out``) receives::

    .delfi-demo          marker: the folder was made by the demo (a rerun may replace its products)
    .gitignore           "*": a demo folder inside a git clone leaves ``git status`` clean
    images/              query/<scene>.png, db/<scene>-<v>.png, db/<distractor>.png
    features.h5          the feature store (+ features.h5.config.yaml)
    index/               the index (ASMK, or the exact VLAD index when asmk is missing)
    rankings/            global.txt and reranked.txt (delfi ranking files)
    matches.h5           every verified pair of the reranking
    matches/             match pictures of the best results after reranking
    maps/                score maps of one photo
    summary.json         the numbers of the summary table
    report.html          the self-contained report (thumbnails, numbers and score maps embedded)

Global index for local-only features (R2D2 has no global descriptor): ASMK
(`delfi.retrieval.asmk`, small codebook) when the ``asmk`` and ``faiss`` packages are installed,
else VLAD (`delfi.demo.vlad`, 32 words) in an exact `GlobalIndex`. ``index="asmk" | "vlad"`` forces one.
"""

from __future__ import annotations

import base64
import contextlib
import html
import json
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable

import numpy as np

from delfi.demo.scene import DemoSet, build_scene_set

__all__ = ["DemoOptions", "DemoResult", "run_demo", "MARKER", "PRODUCTS", "DemoFolderError", "DemoRunError", "check_folder",
           "claim_folder", "asmk_available"]

MARKER = ".delfi-demo"
PRODUCTS = ("images", "index", "rankings", "matches", "maps", "features.h5", "features.h5.config.yaml",
            "matches.h5", "summary.json", "report.html")
MMA_THRESHOLDS = (1, 3, 5)


class DemoFolderError(ValueError):
    """The output folder cannot be used (exists, not made by the demo; or is a file)."""


class DemoRunError(RuntimeError):
    """The run cannot go on (an image failed to extract, or has no keypoints); the message says why."""


@dataclass
class DemoOptions:
    size: int = 400  # longest image side
    scenes: int | None = None  # scene photos used (default all)
    views: int = 3  # synthetic views per scene
    distractors: int | None = None  # distractor photos used (default all)
    seed: int = 0
    index: str = "auto"  # auto | asmk | vlad
    rerank_top_k: int = 100  # results verified per query
    pictures: int = 1  # match pictures per query (best results after reranking)


@dataclass
class DemoResult:
    out: Path
    n_queries: int = 0
    n_database: int = 0
    features_per_image: float = 0.0
    index_kind: str = ""
    before: dict[str, float] = field(default_factory=dict)  # map, recall@1 (percent)
    after: dict[str, float] = field(default_factory=dict)
    mma: dict[int, float] = field(default_factory=dict)  # threshold -> MMA (fraction)
    mean_matches: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)  # step -> seconds
    files: dict[str, Path] = field(default_factory=dict)
    positives: dict[str, list[str]] = field(default_factory=dict)  # query -> its views

    def to_json(self) -> dict[str, Any]:
        return {
            "images": {"queries": self.n_queries, "database": self.n_database},
            "features_per_image": self.features_per_image, "index": self.index_kind,
            "before_rerank": self.before, "after_rerank": self.after,
            "mma": {str(t): v for t, v in self.mma.items()}, "mean_matches_per_view": self.mean_matches,
            "seconds": self.timings,
            "files": {k: str(v) for k, v in self.files.items()},
        }


def asmk_available() -> bool:
    try:
        from delfi.retrieval.asmk import _asmk

        _asmk()
        return True
    except ImportError:
        return False


def check_folder(out: Path) -> None:
    """DemoFolderError unless ``out`` may become the demo folder: new, empty, or holding the demo's
    marker; a file, or a non-empty folder without the marker, is refused. Changes nothing."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DemoFolderError(f"--out {out} is a file: give a folder for the demo's files")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise DemoFolderError(f"--out {out} exists and was not made by `delfi demo` (no {MARKER} file in it): "
                              "refusing to write there; choose a new or empty folder")


def claim_folder(out: Path) -> None:
    """Make ``out`` the demo folder (`check_folder` first): created, or reused when it holds the
    demo's marker. On reuse, the top-level products (fixed names: ``features.h5``, ``report.html``,
    ...) and exactly the files the last run listed in the marker under its product folders are
    removed (and folders left empty by that); a file a user put in those folders stays."""
    out = Path(out)
    check_folder(out)
    if (out / MARKER).is_file():
        top = [out / name for name in PRODUCTS if not (out / name).is_dir() or (out / name).is_symlink()]
        for path in [*top, *_previous_products(out)]:  # the top-level products have fixed names
            if path.is_file() or path.is_symlink():
                path.unlink()
        for name in PRODUCTS:  # product folders left empty, deepest first
            folder = out / name
            if folder.is_dir() and not folder.is_symlink():
                for sub in sorted((p for p in folder.rglob("*") if p.is_dir() and not p.is_symlink()),
                                  key=lambda p: len(p.parts), reverse=True) + [folder]:
                    with contextlib.suppress(OSError):
                        sub.rmdir()  # only when empty
    out.mkdir(parents=True, exist_ok=True)
    _write_marker(out, [])
    (out / ".gitignore").write_text("# written by `delfi demo`: git ignores this folder\n*\n", encoding="utf-8")


def _product_files(out: Path) -> list[str]:
    """Files (relative posix paths) now under the demo's product names in ``out``."""
    found = []
    for name in PRODUCTS:
        path = out / name
        if path.is_symlink() or path.is_file():
            found.append(name)
        elif path.is_dir():
            found += [p.relative_to(out).as_posix() for p in path.rglob("*") if p.is_file() or p.is_symlink()]
    return sorted(found)


def _previous_products(out: Path) -> list[Path]:
    """The files the marker says the last run wrote, each a path inside ``out`` (others ignored)."""
    try:
        listed = json.loads((out / MARKER).read_text(encoding="utf-8")).get("files")
    except (OSError, ValueError, AttributeError):
        listed = None
    if not isinstance(listed, list):  # a marker without a list: nothing is provably the demo's
        return []
    root = out.resolve()
    paths = []
    for rel in listed:
        if not isinstance(rel, str) or rel.startswith("/") or ".." in rel.split("/"):
            continue
        path = out / rel
        if path.parent.resolve() == root or root in path.parent.resolve().parents:
            paths.append(path)
    return paths


def _write_marker(out: Path, files: list[str]) -> None:
    (out / MARKER).write_text(json.dumps({"made_by": "delfi demo", "files": files}) + "\n", encoding="utf-8")


class _Timer:
    def __init__(self, timings: dict[str, float], step: str) -> None:
        self.timings, self.step = timings, step

    def __enter__(self):
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.timings[self.step] = self.timings.get(self.step, 0.0) + time.perf_counter() - self.started


Progress = Callable[[int, str], Any]
"""``progress(total, description)`` -> a context manager with ``advance(label, status)`` (a progress bar)."""


def _bar(progress: Progress | None, total: int, description: str):
    if progress is None:
        class _Silent:
            def advance(self, label: str, status: str) -> None:
                pass

        return nullcontext(_Silent())
    return progress(total, description)


def run_demo(model: Any, config: dict[str, Any], out: str | Path, options: DemoOptions | None = None, *,
             progress: Progress | None = None, log: Callable[[str], None] | None = None) -> DemoResult:
    """Run the whole demo with ``model`` (anything with ``extract`` and an R2D2-style dense network for
    the score maps) into the folder ``out``, which `claim_folder` must have accepted."""
    from delfi.extract.extractor import extract_to_store
    from delfi.io.features import FeatureStore
    from delfi.io.images import ImageEntry
    from delfi.io.rankings import write_ranking

    options = options or DemoOptions()
    log = log or (lambda text: None)
    out = Path(out)
    result = DemoResult(out)
    t = result.timings
    before = set(_product_files(out))  # a user's files already there: never listed as the demo's

    with _Timer(t, "images"):
        demo = build_scene_set(out / "images", size=options.size, n_scenes=options.scenes, views=options.views,
                               n_distractors=options.distractors, seed=options.seed)
    result.n_queries, result.n_database = len(demo.queries), len(demo.database)
    result.positives = demo.positives
    log(f"{len(demo.queries)} queries, {len(demo.database)} database images ({options.size} px) in {out / 'images'}")

    store_path = out / "features.h5"
    entries = [ImageEntry(demo.path(name), name) for name in demo.names]
    with _Timer(t, "extract"), _bar(progress, len(entries), "extracting") as bar:
        report = extract_to_store(model, entries, store_path, config=config,
                                  on_image=lambda entry, status: bar.advance(entry.name, status))
    if report.failures:
        raise DemoRunError(f"extraction failed for {len(report.failures)} image(s), first: "
                           f"{report.failures[0][0]}: {report.failures[0][1]}")
    with FeatureStore(store_path) as store:
        counts = [len(store[name]) for name in demo.names]
    empty = [name for name, n in zip(demo.names, counts) if n == 0]
    if empty:
        hint = (f" (the images are {options.size} px; the config processes images of at least min_size = "
                f"{config['min_size']} px: give a larger --size or min_size=...)") if "min_size" in config else ""
        raise DemoRunError(f"{len(empty)} of the {len(counts)} demo images have no keypoints, e.g. {empty[0]}{hint}")
    result.features_per_image = float(np.mean(counts)) if counts else 0.0
    result.files["features"] = store_path

    with _Timer(t, "index"):
        index, kind = _build_index(store_path, out / "index", demo, options)
    result.index_kind = kind
    result.files["index"] = out / "index"
    with _Timer(t, "search"):
        ranking = _search(index, kind, store_path, demo)
    result.files["ranking"] = write_ranking(out / "rankings" / "global.txt", ranking)

    with _Timer(t, "rerank"):
        reranked = _rerank(ranking, store_path, out / "matches.h5", options, progress)
    result.files["reranked"] = write_ranking(out / "rankings" / "reranked.txt", reranked)
    result.files["matches"] = out / "matches.h5"

    with _Timer(t, "evaluate"):
        result.before = retrieval_scores(ranking, demo)
        result.after = retrieval_scores(reranked, demo)
        result.mma, result.mean_matches = homography_mma(store_path, demo)

    with _Timer(t, "pictures"):
        pictures = _match_pictures(reranked, out / "matches.h5", store_path, demo, out / "matches", options.pictures)
        score_map = _score_map(model, demo, out / "maps")
    result.files["score_map"] = score_map

    with _Timer(t, "report"):
        result.files["report"] = _write_report(out / "report.html", ranking, reranked, demo, pictures, score_map,
                                               result)
    (out / "summary.json").write_text(json.dumps(result.to_json(), indent=2) + "\n", encoding="utf-8")
    result.files["summary"] = out / "summary.json"
    _write_marker(out, sorted(set(_product_files(out)) - before))  # what this run wrote: the next one removes it
    return result


# ------------------------------------------------------------------------------------------- steps


def _build_index(store_path: Path, index_dir: Path, demo: DemoSet, options: DemoOptions):
    from delfi.io.features import FeatureStore
    from delfi.retrieval.search import build_index, local_descriptors

    kind = options.index
    if kind == "auto":
        kind = "asmk" if asmk_available() else "vlad"
    if kind == "asmk":
        with FeatureStore(store_path) as store:
            total = sum(len(store[name]) for name in demo.database)
        words = int(max(8, min(256, total // 40)))  # faiss wants ~40 training points per word
        params = {"codebook_size": words, "multiple_assignment_query": min(5, words), "seed": options.seed}
        index = build_index(store_path, index_dir, kind="asmk", names=demo.database, params=params)
        return index, f"asmk ({words} words)"
    if kind != "vlad":
        raise ValueError(f"index must be auto, asmk or vlad, got {options.index!r}")
    from delfi.demo.vlad import train_codebook, vlad_vectors
    from delfi.retrieval.index import GlobalIndex

    with FeatureStore(store_path) as store:
        names, descriptors = local_descriptors(store, demo.database)
    centroids = train_codebook(descriptors, 32, seed=options.seed)
    index = GlobalIndex.build(vlad_vectors(descriptors, centroids), names, kind="exact")
    index.save(index_dir)
    np.save(index_dir / "vlad_codebook.npy", centroids)
    index.vlad_codebook = centroids  # the queries need it
    return index, f"vlad ({len(centroids)} words, exact)"


def _search(index, kind: str, store_path: Path, demo: DemoSet):
    from delfi.io.features import FeatureStore
    from delfi.retrieval.search import local_descriptors, ranking_from_scores, search

    k = len(demo.database)
    if kind.startswith("asmk"):
        return search(index, store_path, top_k=k, names=demo.queries)
    from delfi.demo.vlad import vlad_vectors

    with FeatureStore(store_path) as store:
        names, descriptors = local_descriptors(store, demo.queries)
    scores, ids = index.search(vlad_vectors(descriptors, index.vlad_codebook), k)
    return ranking_from_scores(names, index.names, scores, ids)


def _rerank(ranking, store_path: Path, matches_path: Path, options: DemoOptions, progress):
    """Spatial verification of every query's top results; every verified pair goes to ``matches_path``."""
    from delfi.io.features import FeatureStore
    from delfi.retrieval.rerank import RerankConfig, matching_for, rerank_stores

    with FeatureStore(store_path) as store:
        family = store.attrs.get("model")
    config = RerankConfig(top_k=options.rerank_top_k, matching=matching_for(family))
    with _bar(progress, len(ranking.queries), "reranking") as bar:
        return rerank_stores(ranking, store_path, store_path, config, matches_out=matches_path,
                             on_query=lambda q: bar.advance(q, "done"))


def retrieval_scores(ranking, demo: DemoSet) -> dict[str, float]:
    """mAP and recall@1 (percent; recall@1 = queries whose first result is one of their views) of a
    ranking, with the revisited-Oxford AP of `delfi.eval.revisitop` (no junk: every view is a positive)."""
    from delfi.eval.revisitop import evaluate

    ids = {name: i for i, name in enumerate(ranking.database)}
    gnd = [{"easy": [ids[v] for v in demo.positives[q] if v in ids], "hard": [], "junk": []} for q in ranking.queries]
    scores = evaluate(ranking.ranks(), gnd, kappas=(1,))["easy"]
    return {"map": scores["map"], "recall@1": scores["mp@k"][1]}


def homography_mma(store_path: Path, demo: DemoSet) -> tuple[dict[int, float], float]:
    """HPatches-style MMA of every (query, view) pair on its known homography: plain mutual nearest
    neighbours, per pair the fraction of matches within t px (`delfi.eval.hpatches.pair_errors`),
    averaged over pairs (a pair without matches counts 0). Also the mean number of matches."""
    from delfi.eval.hpatches import pair_errors
    from delfi.io.features import FeatureStore
    from delfi.match.nn import mutual_nn

    per_threshold = {t: [] for t in MMA_THRESHOLDS}
    counts = []
    with FeatureStore(store_path) as store:
        for (query, view), H in demo.homographies.items():
            fq, fv = store[query], store[view]
            found = mutual_nn(fq.descriptors.float(), fv.descriptors.float())
            errors = pair_errors(fq.keypoints, fv.keypoints, found.indices, H)
            counts.append(len(errors))
            for t in MMA_THRESHOLDS:
                per_threshold[t].append(float(np.mean(errors <= t)) if len(errors) else 0.0)
    mma = {t: float(np.mean(v)) if v else float("nan") for t, v in per_threshold.items()}
    return mma, float(np.mean(counts)) if counts else 0.0


def _stem(name: str) -> str:
    return PurePosixPath(name).stem  # "db/camera-1.png" -> "camera-1"


def _picture_name(query: str, db: str) -> str:
    return f"{_stem(query)}--{_stem(db)}.png"


def _match_pictures(reranked, matches_path: Path, store_path: Path, demo: DemoSet, folder: Path, per_query: int):
    from delfi.io.features import FeatureStore
    from delfi.io.matches import MatchStore
    from delfi.viz.matches import plot_matches

    pictures: dict[tuple[str, str], Path] = {}
    if per_query <= 0:
        return pictures
    with FeatureStore(store_path) as store, MatchStore(matches_path) as matches:
        for q, query in enumerate(reranked.queries):
            shown = 0
            for idx in reranked.indices[q]:
                if idx < 0 or shown >= per_query:
                    break
                db = reranked.database[idx]
                if (query, db) not in matches:  # not verified
                    continue
                found = matches.get(query, db)
                path = folder / _picture_name(query, db)
                label = "a view of this photo" if db in demo.positives.get(query, []) else "NOT a view of this photo"
                plot_matches(demo.path(query), demo.path(db), store[query], store[db], found, out=path,
                             names=(query, db), title=f"rank {shown + 1} after reranking: {label}", max_lines=300)
                pictures[(query, db)] = path
                shown += 1
    return pictures


def _score_map(model: Any, demo: DemoSet, folder: Path) -> Path:
    from PIL import Image

    from delfi.demo.maps import dense_maps, plot_score_maps

    query = demo.queries[0]
    rgb = np.asarray(Image.open(demo.path(query)).convert("RGB"))
    reliability, repeatability = dense_maps(model, rgb)
    return plot_score_maps(rgb, reliability, repeatability, folder / f"{_stem(query)}.png",
                           title=f"{query}: dense network outputs at {rgb.shape[1]}x{rgb.shape[0]}")


def _write_report(path: Path, ranking, reranked, demo: DemoSet, pictures, score_map: Path, result: DemoResult) -> Path:
    from delfi.demo.summary import summary_rows
    from delfi.viz.report import write_report

    relevance = {q: {"positive": set(demo.positives[q]), "junk": set()} for q in demo.queries}
    summary = dict(summary_rows(result, timings=False))
    return write_report(path, reranked, image_path=demo.path, before=ranking, relevance=relevance,
                        match_pictures=pictures, top_n=min(10, len(demo.database)), title="delfi demo",
                        summary=summary, extra_html=_score_map_section(score_map))


def _score_map_section(picture: Path) -> str:
    """The score-map picture as a report section (the PNG embedded as a data URI)."""
    data = base64.b64encode(picture.read_bytes()).decode("ascii")
    return (f'<section id="score-maps"><h2>score maps</h2><p>{html.escape(picture.name)}: the network\'s '
            'repeatability and reliability; keypoints are where both are high.</p>'
            f'<img alt="score maps" style="max-width:100%" src="data:image/png;base64,{data}"></section>')
