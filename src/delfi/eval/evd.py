"""EVD (Extreme View Dataset) benchmark: mutual-NN matches, RANSAC homography, corner error, success rate.

For each pair: match the two images' descriptors with plain mutual nearest neighbours, estimate a
homography with RANSAC (`delfi.match.verify.verify`), and measure the mean corner error of the
estimate against the ground truth on image 1's four corners (`delfi.eval.homography.corner_error`).
A pair is solved when the corner error is ``<= success_px`` (10 px by default). The summary is the
success rate, the mean numbers of matches and inliers and the median corner error of solved pairs.
Each pair's ``status`` is the verification's (``"ok"`` only for a model with enough inliers; a
``"too few inliers"`` model still gets a corner error); the summary counts the pairs of each status.

One run of method ``m`` writes into ``out_dir/evd/m/`` (its own folder: an HPatches run of the same
method never touches it): ``features.h5`` (the per-image cache, names ``"1/<name>.png"`` /
``"2/<name>.png"``, so a second run only re-scores), ``results.json`` and, when `delfi.viz.matches`
is available, one match picture per pair in ``pairs/<name>.png`` (drawn after results.json, which
marks the folder as delfi's). A pair with a missing image or a malformed homography, or whose
extraction fails, is listed in ``failures`` and the other pairs are evaluated.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from delfi.datasets.evd import EVDError, list_pairs, load_pair
from delfi.eval.homography import corner_error, pair_status, status_counts
from delfi.eval.hpatches_run import Extractor, ensure_features
from delfi.eval.results import check_outside, claim_run_dir, first_failure, report_json, write_results
from delfi.match.nn import mutual_nn
from delfi.types import Features

__all__ = ["EVDPairResult", "EVDReport", "run_evd"]

BENCHMARK = "evd"


@dataclass
class EVDPairResult:
    """The outcome on one EVD pair."""

    name: str
    n_feats: tuple[int, int]
    n_matches: int
    n_inliers: int
    status: str
    corner_error: float  # inf when no homography was estimated
    success: bool

    def to_json(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["n_feats"] = list(self.n_feats)
        out["corner_error"] = self.corner_error if math.isfinite(self.corner_error) else None
        return out


@dataclass
class EVDReport:
    """The outcome of `run_evd`: one `EVDPairResult` per pair plus the run's settings."""

    method: str
    pairs: list[EVDPairResult] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    out_dir: Path | None = None
    n_extracted: int = 0
    seconds: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)  # (pair, reason), left out

    @property
    def status_counts(self) -> dict[str, int]:
        """How many pairs have each verification status (``"ok"``: a model with enough inliers)."""
        return status_counts(p.status for p in self.pairs)

    @property
    def success_rate(self) -> float:
        return float(np.mean([p.success for p in self.pairs])) if self.pairs else float("nan")

    def summary(self) -> dict[str, Any]:
        solved = [p.corner_error for p in self.pairs if p.success]
        return {
            "method": self.method,
            "n_pairs": len(self.pairs),
            "n_solved": len(solved),
            "success_rate": self.success_rate,
            "success_px": self.config.get("success_px"),
            "mean_matches": float(np.mean([p.n_matches for p in self.pairs])) if self.pairs else float("nan"),
            "mean_inliers": float(np.mean([p.n_inliers for p in self.pairs])) if self.pairs else float("nan"),
            "median_corner_error_solved": float(np.median(solved)) if solved else float("nan"),
            "mean_feats": float(np.mean([sum(p.n_feats) / 2 for p in self.pairs])) if self.pairs else float("nan"),
            "status_counts": self.status_counts,
            "n_verified": self.status_counts.get("ok", 0),
            "n_failed_pairs": len(self.failures),
        }

    def to_json(self) -> dict[str, Any]:
        """The content of results.json (JSON-safe: non-finite numbers become null)."""
        return report_json("evd", self.summary(), config=self.config, n_extracted=self.n_extracted,
                           seconds=self.seconds, pairs=[p.to_json() for p in self.pairs],
                           failures=[{"pair": n, "reason": r} for n, r in self.failures])

    def table(self, title: str | None = None) -> Any:
        """A `rich.table.Table`: one row per pair and a summary row."""
        from rich.table import Table

        table = Table(title=title or f"EVD: {self.method}")
        for name, justify in (("pair", "left"), ("feats", "right"), ("matches", "right"), ("inliers", "right"),
                              ("corner err", "right"), ("solved", "center"), ("status", "left")):  # fmt: skip
            table.add_column(name, justify=justify)
        for p in self.pairs:
            err = f"{p.corner_error:.1f}" if math.isfinite(p.corner_error) else "inf"
            table.add_row(p.name, f"{p.n_feats[0]}/{p.n_feats[1]}", str(p.n_matches), str(p.n_inliers), err,
                          "yes" if p.success else "no", p.status)  # fmt: skip
        s = self.summary()
        table.add_section()
        table.add_row(
            "all", f"{s['mean_feats']:.0f}", f"{s['mean_matches']:.1f}", f"{s['mean_inliers']:.1f}", "",
            f"{s['n_solved']}/{s['n_pairs']}",
            ", ".join(f"{n} {status}" for status, n in s["status_counts"].items()),
        )  # fmt: skip
        table.caption = f"success rate {s['success_rate']:.3f}: solved = corner error <= {s['success_px']} px"
        return table


def _feature_name(which: int, path: Path) -> str:
    return f"{which}/{path.name}"


def run_evd(
    root: str | os.PathLike,
    extract: Extractor | None,
    out_dir: str | os.PathLike,
    *,
    method: str,
    pairs: Iterable[str] | None = None,
    ransac_threshold: float = 3.0,
    seed: int = 0,
    success_px: float = 10.0,
    features_path: str | os.PathLike | None = None,
    max_keypoints: int | None = None,
    verify_backend: str = "opencv",
    pictures: bool = True,
    on_image: Callable[[str, str], None] | None = None,
) -> EVDReport:
    """Run the EVD benchmark for one method and write ``out_dir/evd/<method>/results.json``.

    Args:
        root: the EVD folder (``1/``, ``2/``, ``h/``).
        extract: ``extract(image_path) -> Features`` for images without cached features, or None.
        out_dir: results go to ``out_dir/evd/<method>/`` (never inside ``root``; an existing
            ``results.json`` there must be delfi's own EVD results).
        method: the method's name.
        pairs: pair names to evaluate (default: all, sorted).
        ransac_threshold: RANSAC inlier threshold in px.
        seed: RANSAC seed.
        success_px: a pair is solved when its corner error is ``<= success_px``.
        features_path: feature store to use instead of ``out_dir/evd/<method>/features.h5``.
        max_keypoints: use only the best ``max_keypoints`` keypoints per image.
        pictures: draw ``pairs/<name>.png`` (skipped when `delfi.viz.matches` cannot be imported).
    """
    from delfi.io.features import FeatureStore
    from delfi.match.verify import verify

    started = time.perf_counter()
    if not method or "/" in method or method in (".", ".."):
        raise ValueError(f"method must be a plain folder name, got {method!r}")
    names = list_pairs(root) if pairs is None else [str(p) for p in ([pairs] if isinstance(pairs, str) else pairs)]
    check_outside(out_dir, root, "EVD")
    run_dir = claim_run_dir(Path(out_dir) / BENCHMARK / method, BENCHMARK, ("pairs",))
    failures: list[tuple[str, str]] = []
    entries, homographies = [], {}
    for name in names:
        try:
            entry = load_pair(root, name)
            homographies[name] = entry.homography
        except (EVDError, OSError) as error:
            failures.append((name, str(error)))
            continue
        entries.append(entry)
    if not entries:
        raise EVDError(f"{root}: no EVD pair can be evaluated: {first_failure(failures, 'no pairs')}")
    run_dir.mkdir(parents=True, exist_ok=True)
    store_path = Path(features_path) if features_path is not None else run_dir / "features.h5"
    images = {}
    for e in entries:
        images[_feature_name(1, e.image1)] = e.image1
        images[_feature_name(2, e.image2)] = e.image2
    bad_images: dict[str, str] = {}
    n_extracted = ensure_features(store_path, images, extract, method=method, on_image=on_image, failures=bad_images)
    plot_matches = _plotter() if pictures else None

    results: list[EVDPairResult] = []
    drawings = []
    with FeatureStore(store_path, "r") as store:
        for e in entries:
            bad = [bad_images[n] for n in (_feature_name(1, e.image1), _feature_name(2, e.image2)) if n in bad_images]
            if bad:
                failures.append((e.name, bad[0]))
                continue
            f1, f2 = (store.get(_feature_name(i, p)) for i, p in ((1, e.image1), (2, e.image2)))
            if max_keypoints:
                f1, f2 = f1.top_k(int(max_keypoints)), f2.top_k(int(max_keypoints))
            if f1.descriptor_dim != f2.descriptor_dim:
                failures.append((e.name, f"descriptor dimensions differ ({f1.descriptor_dim} vs {f2.descriptor_dim})"))
                continue
            result, verified = _evaluate_pair(e, homographies[e.name], f1, f2, verify, ransac_threshold, seed,
                                              success_px, verify_backend)
            results.append(result)
            if plot_matches is not None:
                drawings.append((e, f1, f2, verified, result.corner_error))
    if not results:
        raise EVDError(f"{root}: no EVD pair could be evaluated: {first_failure(failures, 'no pairs')}")

    config = {
        "method": method,
        "root": str(root),
        "pairs": names,
        "features_path": str(store_path),
        "matcher": "mutual_nn",
        "ransac_threshold": float(ransac_threshold),
        "seed": int(seed),
        "success_px": float(success_px),
        "verify_backend": verify_backend,
        "max_keypoints": None if max_keypoints is None else int(max_keypoints),
        "homography": "h/<name>.txt maps image-1 pixels to image-2 pixels, applied as given",
    }
    report = EVDReport(method=method, pairs=results, config=config, out_dir=run_dir, n_extracted=n_extracted,
                       failures=failures)
    report.seconds = time.perf_counter() - started
    write_results(run_dir / "results.json", report.to_json(), BENCHMARK)  # first: it marks the folder as ours
    for e, f1, f2, verified, err in drawings:
        title = f"{e.name}: corner error {err:.1f} px" if math.isfinite(err) else f"{e.name}: no homography"
        try:
            plot_matches(e.image1, e.image2, f1, f2, verified, out=run_dir / "pairs" / f"{e.name}.png", title=title)
        except Exception as error:  # noqa: BLE001 - a picture must never cost the benchmark
            warnings.warn(f"EVD pair {e.name}: match picture not drawn ({type(error).__name__}: {error})", stacklevel=2)
    return report


def _evaluate_pair(e, H: np.ndarray, f1: Features, f2: Features, verify, threshold, seed, success_px, backend):
    """(`EVDPairResult`, the verification) of one pair."""
    from delfi.io.images import image_size

    matches = mutual_nn(f1.descriptors, f2.descriptors)
    verified = verify(f1, f2, matches, geometry="homography", threshold=threshold, seed=seed, backend=backend)
    size = f1.image_size if min(f1.image_size) > 0 else image_size(e.image1)
    model = None if verified.model is None else verified.model.detach().cpu().numpy()
    err = corner_error(model, H, size)
    result = EVDPairResult(
        name=e.name, n_feats=(len(f1), len(f2)), n_matches=len(matches), n_inliers=verified.num_inliers,
        status=pair_status(verified), corner_error=err, success=bool(err <= success_px),
    )  # fmt: skip
    return result, verified


def _plotter() -> Callable[..., Any] | None:
    try:
        from delfi.viz.matches import plot_matches
    except ImportError:
        return None

    def draw(*args: Any, out: Path, **kwargs: Any) -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        plot_matches(*args, out=out, **kwargs)

    return draw
