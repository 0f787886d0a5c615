"""The full HPatches benchmark run behind ``delfi eval hpatches``: extract (cached), score, save, plot.

One run of method ``m`` writes into ``out_dir/hpatches/m/`` (each benchmark has its own folder, so an
EVD run of the same method never replaces these files; a second HPatches run updates them, after
checking that the ``results.json`` there is delfi's own HPatches results):

- ``features.h5``: a `FeatureStore` of every image's `Features`, named ``"<seq>/<k>.ppm"`` (unless
  ``features_path`` points elsewhere). Images already there are not extracted again, so a second run
  only re-scores, and an interrupted run resumes.
- ``hpatches.npy``: the D2-Net notebook cache (`save_cache`), directly comparable with published
  caches through `load_cache` / `compare_table`.
- ``hpatches-refined.npy`` (only with ``refined=True``): the refined protocol's scores in the same
  format, comparable with the published ``*_RANSAC.npy`` caches. A run without ``refined`` removes
  an earlier run's copy, so the folder's files always describe its ``results.json``.
- ``results.json``: MMA@1..10 (overall / i / v), homography accuracy, mean features per image and
  matches per pair, how many pairs each verification status has (``status_counts``), the sequences
  left out with their reasons (``failures``), the run's configuration and one record per pair; with
  ``refined=True`` also a ``refined`` section (MMA@1..10 overall / i / v, matches per pair, threshold).
- ``mma.png``: the MMA curves (`delfi.eval.plots.plot_mma_curves`).

Scoring is the D2-Net protocol (`evaluate_sequences`: plain mutual nearest neighbours, MMA at 1..15 px).
``refined=True`` also scores the refined protocol from the same features and the same mutual-NN
matches (one extraction, one matching): only the inliers of a RANSAC homography fitted at
``refine_threshold`` px (`delfi.eval.hpatches.refine_inliers`, seeded by ``seed``) are scored.
Homography accuracy: per pair a RANSAC homography is estimated from the same mutual-NN matches
(`delfi.match.verify.verify`), its corner error measured against the ground truth on image 1's
corners (`delfi.eval.homography.corner_error`); accuracy at t px = fraction of pairs with error <= t.
Each pair's ``status`` is the verification's (``"ok"`` only for a model with enough inliers; a
``"too few inliers"`` model still has a corner error); accuracy counts the corner error as before.

A sequence with a missing image, a missing or malformed ``H_1_k``, or an image whose extraction fails
is left out of the scores and listed in ``failures``; the other sequences are evaluated.

``homography_convention="raw"`` applies ``H_1_k`` as given (the D2-Net notebook; use it to compare
with published caches). ``"centre"`` first converts ``H_1_k`` from corner-origin coordinates to delfi's
pixel-centre convention (see `delfi.eval.homography`), which is the geometrically exact choice for
keypoints in delfi's convention (+0.011 MMA@3 on v_wormhole for R2D2).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from delfi.datasets.hpatches import (
    IMAGE_INDICES,
    HPatchesError,
    HPatchesMissingError,
    image_path,
    list_sequences,
    sequence_type,
)
from delfi.eval.homography import corner_error, homography_accuracy, pair_status, status_counts
from delfi.eval.hpatches import (
    HOMOGRAPHY_CONVENTIONS,
    REFINE_THRESHOLD,
    HPatchesResult,
    evaluate_sequences,
    load_cache,
    pair_errors,
    pair_homography,
    refine_inliers,
    save_cache,
)
from delfi.eval.results import check_outside, claim_run_dir, first_failure, report_json, write_results
from delfi.types import Features

__all__ = [
    "HA_THRESHOLDS",
    "HPatchesReport",
    "MissingFeaturesError",
    "PairRecord",
    "compare_table",
    "ensure_features",
    "feature_name",
    "run_hpatches",
    "summary_of",
]

BENCHMARK = "hpatches"
REFINED_CACHE = "hpatches-refined.npy"
PRODUCTS = ("hpatches.npy", REFINED_CACHE, "mma.png")
"""Files of a run folder besides results.json and the feature store."""

HA_THRESHOLDS: tuple[int, ...] = (1, 3, 5)
TABLE_MMA_THRESHOLDS: tuple[int, ...] = (1, 3, 5, 10)
Extractor = Callable[[Path], Features]


class MissingFeaturesError(LookupError):
    """Features are missing from the store and no extractor was given; the message names the images."""

    def __init__(self, store: str | os.PathLike, missing: Sequence[str]) -> None:
        self.store = Path(store)
        self.missing = list(missing)
        shown = ", ".join(self.missing[:10]) + (f" ... (+{len(self.missing) - 10} more)" if len(self.missing) > 10 else "")
        super().__init__(
            f"{self.store}: no features for {len(self.missing)} image(s) and no extractor given: {shown}"
        )

    def __str__(self) -> str:  # LookupError would quote the message like a KeyError does not, keep it plain
        return str(self.args[0])


def feature_name(seq: str, k: int) -> str:
    """The store name of image ``k`` of ``seq``: ``"<seq>/<k>.ppm"``."""
    return f"{seq}/{int(k)}.ppm"


# ----------------------------------------------------------------------------- feature cache


def ensure_features(
    store_path: str | os.PathLike,
    images: Mapping[str, Path],
    extract: Extractor | None,
    *,
    method: str,
    on_image: Callable[[str, str], None] | None = None,
    failures: dict[str, str] | None = None,
) -> int:
    """Make sure the feature store at ``store_path`` holds every image of ``images``.

    Args:
        store_path: the HDF5 `FeatureStore` (created when absent and an extractor is given).
        images: store name -> image file.
        extract: ``extract(path) -> Features`` for the images not yet in the store, or None.
        method: recorded as the ``model`` attribute of a store created here.
        on_image: called with ``(name, "done" | "cached" | "failed")`` per image.
        failures: when given, an image that does not exist or whose extraction raises is recorded
            here (``name -> reason``) and the others are extracted; without it the first such
            image raises.

    Returns:
        The number of images extracted now.

    Raises:
        MissingFeaturesError: images are missing and ``extract`` is None (names them).
        FileNotFoundError: an image to extract does not exist (without ``failures``).
    """
    from delfi.io.features import FeatureStore

    store_path = Path(store_path)
    present: set[str] = set()
    if store_path.exists() or Path(f"{store_path}.journal").exists():
        try:
            with FeatureStore(store_path, "r") as store:
                present = set(store.names())
        except FileNotFoundError:
            present = set()
    missing = [name for name in images if name not in present]
    if on_image is not None:
        for name in images:
            if name in present:
                on_image(name, "cached")
    if not missing:
        return 0
    if extract is None:
        raise MissingFeaturesError(store_path, missing)
    absent = [name for name in missing if not Path(images[name]).is_file()]
    if absent and failures is None:
        shown = ", ".join(str(images[n]) for n in absent[:10]) + (" ..." if len(absent) > 10 else "")
        raise FileNotFoundError(f"{len(absent)} image(s) to extract not found: {shown}")
    for name in absent:
        failures[name] = f"{images[name]}: image not found"
        if on_image is not None:
            on_image(name, "failed")
    missing = [name for name in missing if name not in set(absent)]
    if not missing:
        return 0
    store_path.parent.mkdir(parents=True, exist_ok=True)
    attrs = None if present or store_path.exists() else {"model": method}
    extracted = 0
    with FeatureStore(store_path, "a", attrs=attrs) as store:
        for name in missing:
            try:
                features = extract(Path(images[name]))
                if not isinstance(features, Features):
                    raise TypeError(f"extract({images[name]}) returned {type(features).__name__}, not Features")
            except Exception as exc:  # noqa: BLE001 - one bad image is a listed failure when asked
                if failures is None:
                    raise
                failures[name] = f"{images[name]}: extraction failed ({type(exc).__name__}: {exc})"
                if on_image is not None:
                    on_image(name, "failed")
                continue
            store.put(name, features)
            extracted += 1
            if on_image is not None:
                on_image(name, "done")
    return extracted


# ----------------------------------------------------------------------------- report


@dataclass
class PairRecord:
    """What happened on one pair (1, k) of one sequence."""

    seq: str
    k: int
    kind: str  # 'i' or 'v'
    n_matches: int
    n_inliers: int
    status: str  # verify's meta["status"]
    corner_error: float  # inf when no homography was estimated

    def to_json(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["corner_error"] = self.corner_error if math.isfinite(self.corner_error) else None
        return out


@dataclass
class HPatchesReport:
    """The outcome of `run_hpatches`.

    Attributes:
        method: the method's name (the output sub-folder).
        result: the D2-Net protocol accumulators (MMA at 1..15 px).
        pairs: one `PairRecord` per evaluated pair, in evaluation order.
        failures: ``(sequence, reason)`` of the sequences left out.
        config: the settings of the run (written into results.json).
        out_dir: ``out_dir/hpatches/<method>`` where the files went (None when not written).
        n_extracted: images extracted by this run (0 when everything came from the cache).
        seconds: wall time of the run.
        ha_thresholds: thresholds of the homography accuracy.
        refined: the refined protocol's accumulators (None when not asked for).
        refine_threshold: the refined protocol's RANSAC threshold (px).
    """

    method: str
    result: HPatchesResult
    pairs: list[PairRecord] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    out_dir: Path | None = None
    n_extracted: int = 0
    seconds: float = 0.0
    ha_thresholds: tuple[int, ...] = HA_THRESHOLDS
    failures: list[tuple[str, str]] = field(default_factory=list)  # (sequence, reason), left out
    refined: HPatchesResult | None = None
    refine_threshold: float = REFINE_THRESHOLD

    @property
    def status_counts(self) -> dict[str, int]:
        """How many pairs have each verification status (``"ok"``: a model with enough inliers)."""
        return status_counts(p.status for p in self.pairs)

    def corner_errors(self, subset: str = "overall") -> list[float]:
        return [p.corner_error for p in self.pairs if subset == "overall" or p.kind == subset]

    @property
    def homography_accuracy(self) -> dict[str, dict[int, float]]:
        """``{"overall" | "i" | "v": {t: fraction of pairs with corner error <= t}}``."""
        return {s: homography_accuracy(self.corner_errors(s), self.ha_thresholds) for s in ("overall", "i", "v")}

    def summary(self, max_threshold: int = 10) -> dict[str, Any]:
        """MMA@1..max_threshold (overall / i / v), homography accuracy, mean feats / matches / inliers."""
        out: dict[str, Any] = {"method": self.method}
        out.update(self.result.summary(max_threshold=max_threshold))
        out["homography_accuracy"] = self.homography_accuracy
        out["n_inliers"] = float(np.mean([p.n_inliers for p in self.pairs])) if self.pairs else float("nan")
        finite = [p.corner_error for p in self.pairs if math.isfinite(p.corner_error)]
        out["median_corner_error"] = float(np.median(finite)) if finite else float("nan")
        out["n_failed_estimates"] = sum(1 for p in self.pairs if not math.isfinite(p.corner_error))
        out["status_counts"] = self.status_counts
        out["n_verified"] = self.status_counts.get("ok", 0)
        out["n_failed_sequences"] = len(self.failures)
        if self.refined is not None:
            out["refined"] = self.refined_summary(max_threshold)
        return out

    def refined_summary(self, max_threshold: int = 10) -> dict[str, Any] | None:
        """The refined protocol's MMA@1..max_threshold (overall / i / v), matches (inliers) per pair,
        features per image and its threshold; None without refined scores."""
        if self.refined is None:
            return None
        full = self.refined.summary(max_threshold=max_threshold)
        out = {key: full[key] for key in ("mma", "mma_i", "mma_v", "n_matches", "n_feats")}
        out.update(refine="ransac", threshold=float(self.refine_threshold))
        return out

    def to_json(self) -> dict[str, Any]:
        """The content of results.json (JSON-safe: non-finite numbers become null)."""
        protocol = "D2-Net (mutual NN, MMA), homography accuracy by RANSAC corner error"
        if self.refined is not None:
            protocol += "; refined: MMA of the RANSAC-homography inliers"
        return report_json("hpatches", self.summary(), config=self.config, n_extracted=self.n_extracted,
                           seconds=self.seconds, pairs=[p.to_json() for p in self.pairs],
                           failures=[{"sequence": s, "reason": r} for s, r in self.failures], protocol=protocol)

    def table(self, title: str | None = None) -> Any:
        """A `rich.table.Table` with this run as one row, and its refined scores as a second (`compare_table`)."""
        return compare_table([self], title=title or "HPatches (D2-Net protocol)")


# ----------------------------------------------------------------------------- comparison table


def _int_keys(d: Any) -> dict[int, float]:
    if not isinstance(d, Mapping):
        return {}
    return {int(k): (float("nan") if v is None else float(v)) for k, v in d.items()}


def summary_of(item: Any) -> tuple[str, dict[str, Any]]:
    """``(name, summary)`` of an `HPatchesReport`, a D2-Net cache file (``.npy``), a ``results.json``
    written by `run_hpatches`, or a summary dict (with ``mma`` / ``mma_i`` / ``mma_v``)."""
    if isinstance(item, HPatchesReport):
        return item.method, item.summary()
    if isinstance(item, HPatchesResult):
        return "result", item.summary()
    if isinstance(item, (str, os.PathLike)):
        path = Path(item)
        if path.is_dir():
            raise ValueError(f"{path}: is a folder: give a D2-Net .npy cache or a results.json")
        if path.suffix == ".json":
            return _results_summary(path)
        summary = _normalise_summary(load_cache(path))
        name = path.name[:-4] if path.name.endswith(".npy") else path.name
        if path.parent.name and name in ("hpatches", REFINED_CACHE[:-4]):
            name = path.parent.name + (" (refined)" if name != "hpatches" else "")
        return name, summary
    if isinstance(item, Mapping):
        return str(item.get("method", "?")), _normalise_summary(item)
    raise TypeError(f"cannot compare a {type(item).__name__}: give a report, a cache path, a results.json or a dict")


def _results_summary(path: Path) -> tuple[str, dict[str, Any]]:
    """``(name, summary)`` of a results.json written by `run_hpatches`; a clear error otherwise."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: results file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ValueError(f"{path}: not a readable JSON results file ({error})") from None
    if not isinstance(data, Mapping) or data.get("benchmark") != BENCHMARK or not isinstance(data.get("mma"), Mapping):
        found = data.get("benchmark") if isinstance(data, Mapping) else None
        what = f"delfi's {found} results" if isinstance(found, str) else "not delfi HPatches results"
        raise ValueError(f"{path}: {what}, cannot be compared with HPatches (no 'mma' of benchmark 'hpatches')")
    try:
        return str(data.get("method", path.parent.name)), _normalise_summary(data)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path}: malformed HPatches results ({error})") from None


def _normalise_summary(data: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(data)
    for key in ("mma", "mma_i", "mma_v"):
        out[key] = _int_keys(data.get(key))
    ha = data.get("homography_accuracy")
    if isinstance(ha, Mapping) and "overall" in ha:
        out["homography_accuracy"] = {s: _int_keys(ha.get(s)) for s in ("overall", "i", "v")}
    elif isinstance(ha, Mapping):  # load_cache of an ALIKE-style cache: t -> accuracy, plus _i / _v keys
        out["homography_accuracy"] = {
            "overall": _int_keys(ha),
            "i": _int_keys(data.get("homography_accuracy_i")),
            "v": _int_keys(data.get("homography_accuracy_v")),
        }
    else:
        out["homography_accuracy"] = {}
    return out


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def _table(rows: Sequence[tuple[str, Mapping[str, Any]]], title: str | None = None) -> Any:
    """Metrics as rows, methods as columns: readable in 80 columns for a few methods."""
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    table.add_column("metric", style="bold", no_wrap=True)
    for name, _ in rows:
        table.add_column(name, justify="right", overflow="fold")
    lines: list[tuple[str, Callable[[Mapping[str, Any]], str]]] = []
    for key, label in (("mma", "MMA"), ("mma_i", "MMA i"), ("mma_v", "MMA v")):
        for t in TABLE_MMA_THRESHOLDS:
            lines.append((f"{label}@{t}", lambda s, key=key, t=t: _fmt((s.get(key) or {}).get(t))))
    for t in HA_THRESHOLDS:
        lines.append((f"HA@{t}px", lambda s, t=t: _fmt(((s.get("homography_accuracy") or {}).get("overall") or {}).get(t))))
    lines.append(("features / image", lambda s: _fmt(s.get("n_feats"), 0)))
    lines.append(("matches / pair", lambda s: _fmt(s.get("n_matches"), 0)))
    for label, cell in lines:
        table.add_row(label, *(cell(summary) for _, summary in rows))
    return table


def compare_table(items: Iterable[Any] | Mapping[str, Any], title: str | None = "HPatches (D2-Net protocol)") -> Any:
    """A `rich.table.Table` with one row per method: delfi runs next to published caches.

    Args:
        items: `HPatchesReport` objects, paths to D2-Net ``.npy`` caches (read safely by `load_cache`),
            paths to ``results.json`` files, or summary dicts; or a mapping ``{row name: item}``.
            A report or results.json with refined scores gives a second row, ``"<name> (refined)"``.
    """
    pairs = items.items() if isinstance(items, Mapping) else ((None, item) for item in items)
    rows = []
    for name, item in pairs:
        default, summary = summary_of(item)
        name = str(name) if name is not None else default
        rows.append((name, summary))
        refined = summary.get("refined")
        if isinstance(refined, Mapping) and isinstance(refined.get("mma"), Mapping):
            rows.append((f"{name} (refined)", _normalise_summary(refined)))
    return _table(rows, title=title)


# ----------------------------------------------------------------------------- the run


def _select_sequences(root: Path, sequences: Iterable[str] | None, image_list: Any) -> list[str]:
    available = list_sequences(root, image_list)
    if sequences is None:
        return available
    wanted = [str(s) for s in ([sequences] if isinstance(sequences, str) else sequences)]
    for seq in wanted:
        sequence_type(seq)  # a clear error for a malformed name
    missing = [s for s in wanted if not (root / s).is_dir()]
    if missing:
        raise HPatchesMissingError(f"{root}: sequence folder(s) not found: {', '.join(missing)}")
    if image_list is not None:
        keep = set(available)
        wanted = [s for s in wanted if s in keep]
    return wanted


def run_hpatches(
    root: str | os.PathLike,
    extract: Extractor | None,
    out_dir: str | os.PathLike,
    *,
    method: str,
    sequences: Iterable[str] | None = None,
    image_list: str | os.PathLike | None = None,
    features_path: str | os.PathLike | None = None,
    homography_convention: str = "raw",
    ransac_threshold: float = 3.0,
    seed: int = 0,
    max_keypoints: int | None = None,
    thresholds: Iterable[int] = range(1, 16),
    ha_thresholds: Sequence[int] = HA_THRESHOLDS,
    verify_backend: str = "opencv",
    device: Any = None,
    plot: bool = True,
    on_image: Callable[[str, str], None] | None = None,
    refined: bool = False,
    refine_threshold: float = REFINE_THRESHOLD,
) -> HPatchesReport:
    """Run the HPatches benchmark for one method and write its results.

    Args:
        root: HPatches-sequences folder (``<seq>/<k>.ppm``, ``<seq>/H_1_k``).
        extract: ``extract(image_path) -> Features`` (keypoints in original pixels, delfi's
            convention), called only for images without cached features; None when the cache is
            complete (a `MissingFeaturesError` names the missing images otherwise).
        out_dir: results go to ``out_dir/hpatches/<method>/`` (never inside ``root``; an existing
            ``results.json`` there must be delfi's own HPatches results, see `claim_run_dir`).
        method: the method's name (folder name and table row).
        sequences: sequence names to evaluate, in order; default every ``i_*`` / ``v_*`` folder.
        image_list: a D2-Net image list restricting the sequences (the 108-sequence protocol).
        features_path: feature store to use instead of ``out_dir/hpatches/<method>/features.h5``.
        homography_convention: ``"raw"`` or ``"centre"`` (module docstring).
        ransac_threshold: inlier threshold (px) of the RANSAC homography.
        seed: RANSAC seed.
        max_keypoints: score only the best ``max_keypoints`` keypoints of each image (cache keeps all).
        thresholds: MMA thresholds (the D2-Net caches hold 1..15).
        ha_thresholds: homography-accuracy thresholds.
        verify_backend: passed to `verify` as ``backend``.
        device: where to match (default: where the features are, the CPU for the store).
        plot: write ``mma.png``.
        on_image: progress callback ``(store name, "done" | "cached" | "failed")``.
        refined: also score the refined protocol (module docstring) and write ``hpatches-refined.npy``.
        refine_threshold: inlier threshold (px) of the refined protocol's RANSAC homography.

    Raises:
        ResultsConflictError: the output folder is inside ``root`` or holds files delfi did not write.
        HPatchesError: no sequence can be evaluated (the message names the first reason).
    """
    from delfi.io.features import FeatureStore
    from delfi.match.verify import verify

    started = time.perf_counter()
    if homography_convention not in HOMOGRAPHY_CONVENTIONS:
        raise ValueError(f"homography_convention must be one of {HOMOGRAPHY_CONVENTIONS}, got {homography_convention!r}")
    if not method or "/" in method or method in (".", ".."):
        raise ValueError(f"method must be a plain folder name, got {method!r}")
    if refined and not (math.isfinite(refine_threshold) and refine_threshold > 0):
        raise ValueError(f"refine_threshold must be a positive number of pixels, got {refine_threshold}")
    thresholds = list(thresholds)
    root = Path(root)
    seqs = _select_sequences(root, sequences, image_list)
    if not seqs:
        raise HPatchesMissingError(f"{root}: no HPatches sequences (i_* / v_* folders) to evaluate")
    check_outside(out_dir, root, "HPatches")
    run_dir = claim_run_dir(Path(out_dir) / BENCHMARK / method, BENCHMARK, PRODUCTS)
    problems = {seq: why for seq in seqs if (why := sequence_problem(root, seq, homography_convention))}
    failures = [(seq, problems[seq]) for seq in seqs if seq in problems]
    seqs = [seq for seq in seqs if seq not in problems]
    if not seqs:
        raise HPatchesError(f"{root}: no usable sequence: {first_failure(failures, 'nothing to evaluate')}")
    run_dir.mkdir(parents=True, exist_ok=True)
    store_path = Path(features_path) if features_path is not None else run_dir / "features.h5"
    images = {feature_name(s, k): image_path(root, s, k, must_exist=False) for s in seqs for k in IMAGE_INDICES}
    bad_images: dict[str, str] = {}
    n_extracted = ensure_features(store_path, images, extract, method=method, on_image=on_image, failures=bad_images)
    for seq in list(seqs):
        reasons = [bad_images[feature_name(seq, k)] for k in IMAGE_INDICES if feature_name(seq, k) in bad_images]
        if reasons:
            failures.append((seq, reasons[0] + (f" (+{len(reasons) - 1} more images)" if len(reasons) > 1 else "")))
            seqs.remove(seq)
    if not seqs:
        raise HPatchesError(f"{root}: no sequence could be evaluated: {first_failure(failures, 'nothing to evaluate')}")

    records: list[PairRecord] = []
    refined_result = HPatchesResult.empty(thresholds) if refined else None
    with FeatureStore(store_path, "r") as store:

        def fetch(seq: str, k: int) -> Features:
            features = store.get(feature_name(seq, k))
            return features.top_k(int(max_keypoints)) if max_keypoints else features

        def on_pair(seq: str, k: int, f1: Features, fk: Features, matches: Any, H: np.ndarray) -> None:
            verified = verify(
                f1, fk, matches.to("cpu"), geometry="homography", threshold=ransac_threshold, seed=seed,
                backend=verify_backend,
            )  # fmt: skip
            size = f1.image_size if min(f1.image_size) > 0 else _image_size(image_path(root, seq, 1))
            model = None if verified.model is None else verified.model.detach().cpu().numpy()
            records.append(
                PairRecord(
                    seq=seq, k=int(k), kind=sequence_type(seq), n_matches=len(matches),
                    n_inliers=verified.num_inliers, status=pair_status(verified),
                    corner_error=corner_error(model, H, size),
                )  # fmt: skip
            )
            if refined_result is not None:  # the same matches, only the RANSAC inliers scored
                keep = refine_inliers(f1, fk, matches, threshold=refine_threshold, seed=seed, backend=verify_backend)
                dist = pair_errors(f1.keypoints, fk.keypoints, matches.indices, H)
                refined_result.add_pair(sequence_type(seq), dist[keep])

        result = evaluate_sequences(
            fetch, root, seqs, thresholds, device=device, homography_convention=homography_convention, on_pair=on_pair
        )

    config = {
        "method": method,
        "root": str(root),
        "sequences": len(seqs),
        "image_list": None if image_list is None else str(image_list),
        "features_path": str(store_path),
        "homography_convention": homography_convention,
        "matcher": "mutual_nn",
        "thresholds": list(result.thresholds),
        "ransac_threshold": float(ransac_threshold),
        "ha_thresholds": list(ha_thresholds),
        "seed": int(seed),
        "verify_backend": verify_backend,
        "max_keypoints": None if max_keypoints is None else int(max_keypoints),
        "refined": bool(refined),
    }
    if refined_result is not None:
        refined_result.n_feats = list(result.n_feats)
    report = HPatchesReport(
        method=method, result=result, pairs=records, config=config, out_dir=run_dir, n_extracted=n_extracted,
        ha_thresholds=tuple(ha_thresholds), failures=failures, refined=refined_result,
        refine_threshold=float(refine_threshold),
    )  # fmt: skip
    report.seconds = time.perf_counter() - started
    write_results(run_dir / "results.json", report.to_json(), BENCHMARK)  # first: it marks the folder as ours
    save_cache(result, run_dir / "hpatches.npy")
    if refined_result is not None:
        save_cache(refined_result, run_dir / REFINED_CACHE)
    else:
        (run_dir / REFINED_CACHE).unlink(missing_ok=True)  # an earlier run's: not this results.json's
    if plot:
        from delfi.eval.plots import plot_mma_curves

        curves = {method: result}
        if refined_result is not None:
            curves[f"{method} (refined)"] = refined_result
        plot_mma_curves(curves, run_dir / "mma.png", title=f"HPatches: {method}")
    return report


def sequence_problem(root: Path, seq: str, convention: str = "raw") -> str | None:
    """Why sequence ``seq`` cannot be evaluated (a missing image, a missing or malformed homography
    file), naming the file; None when it can."""
    for k in IMAGE_INDICES:
        path = image_path(root, seq, k, must_exist=False)
        if not path.is_file():
            return f"{path}: image not found"
    for k in IMAGE_INDICES[1:]:
        try:
            pair_homography(root, seq, k, convention)
        except (HPatchesError, OSError, UnicodeDecodeError, ValueError) as error:
            return str(error)
    return None


def _image_size(path: Path) -> tuple[int, int]:
    from delfi.io.images import image_size

    return image_size(path)
