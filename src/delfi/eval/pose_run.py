"""Relative-pose benchmark run: features, mutual-NN matches, essential matrix, pose AUC, pictures.

For each pair of a pairs file (`delfi.eval.pose.read_pose_pairs`: SuperGlue / LoFTR / glue-factory
formats): match the two images' descriptors (mutual nearest neighbours, optional ratio test),
estimate the essential matrix and the pose with `delfi.match.verify.verify` (geometry
``"essential"``, the file's intrinsics, ``threshold`` in pixels, OpenCV USAC MAGSAC++ or poselib),
and score the pose against ``T_0to1`` (`delfi.eval.pose.pose_errors`: max of the rotation and the
translation-direction angle; a pair without a pose counts as infinitely wrong). The summary is the
pose AUC at 5 / 10 / 20 degrees as SuperGlue and LoFTR compute it, their mean (mAA), the median
errors, the mean matches / inliers per pair and the matching precision (share of matches within
5e-4 of the true epipolar line, squared symmetric distance on normalised coordinates, SuperGlue's).

Images and intrinsics: the K of the file describe the stored image files. Features are extracted
from each image turned by ``rot`` quarter turns (``np.rot90``, as SuperGlue turns them) and, with
``resize``, scaled so that the longer side is ``resize`` pixels (aspect kept, sizes rounded, antialiased
bilinear). The keypoints are mapped back to the stored image's pixels with delfi's convention
(``x -> (x + 0.5) / s - 0.5``, then the inverse turn), so the file's K and T_0to1 apply unchanged;
this is the same as rescaling and rotating K (`delfi.eval.pose.rescale_intrinsics`,
`rotate_intrinsics`) and T (`rotate_pose`) as the references do. Pre-extracted features
(``features_path``) are taken as they are: keypoints in the stored images' pixels, names as in the
pairs file.

One run of method ``m`` writes into ``out_dir/pose/m/``: ``features.h5`` (cache, names as in the
pairs file, ``<name>@rot<k>`` for turned images), ``results.json`` (summary, config, every pair's
numbers, ``left_out``: the pairs that could not be evaluated and why) and the match pictures of the best and the worst pairs (``pairs/best-<i>.png``,
``pairs/worst-<i>.png``) when the images can be read.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from delfi.eval.pose import (AUC_THRESHOLDS, EPIPOLAR_THRESHOLD_SCANNET, PosePair, epipolar_precision,
                             essential_from_pose, pose_errors, read_pose_pairs, rotate_points, rotated_size,
                             summarise_pose_errors)
from delfi.types import Features, rescale_keypoints

__all__ = ["BENCHMARK", "PosePairResult", "PoseReport", "feature_name", "pose_extractor", "run_pose"]

BENCHMARK = "pose"
PRODUCTS = ("pairs",)
PICTURES = 3
"""Best and worst pairs drawn per run."""


@dataclass
class PosePairResult:
    """One pair's numbers (errors in degrees, inf when no pose was estimated)."""

    name0: str
    name1: str
    n_feats: tuple[int, int]
    n_matches: int
    n_inliers: int
    status: str
    rotation_error: float
    translation_error: float
    pose_error: float
    precision: float
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PoseReport:
    """What `run_pose` measured; ``summary()`` holds the benchmark numbers."""

    method: str
    pairs: list[PosePairResult]
    config: dict[str, Any]
    out_dir: Path
    n_extracted: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    thresholds: tuple[float, ...] = AUC_THRESHOLDS

    def summary(self) -> dict[str, Any]:
        out = summarise_pose_errors([(p.rotation_error, p.translation_error) for p in self.pairs], self.thresholds)
        n = max(len(self.pairs), 1)
        out["mean_matches"] = sum(p.n_matches for p in self.pairs) / n
        out["mean_inliers"] = sum(p.n_inliers for p in self.pairs) / n
        precisions = [p.precision for p in self.pairs if math.isfinite(p.precision)]  # nan: no translation
        out["precision"] = sum(precisions) / len(precisions) if precisions else math.nan
        out["matching_seconds_per_pair"] = sum(p.seconds for p in self.pairs) / n
        return out

    def to_json(self) -> dict[str, Any]:
        from delfi.eval.results import report_json

        return report_json(BENCHMARK, {"method": self.method, **self.summary()}, config=self.config,
                           n_extracted=self.n_extracted, seconds=self.seconds,
                           pairs=[p.to_json() for p in self.pairs], left_out=[list(f) for f in self.failures])

    def table(self, title: str | None = None) -> Any:
        from rich.table import Table

        s = self.summary()
        table = Table(title=title or f"relative pose: {self.method} ({s['pairs']} pairs)")
        for column in ("AUC@5", "AUC@10", "AUC@20", "mAA", "median", "failed", "matches", "inliers", "prec."):
            table.add_column(column, justify="right", no_wrap=True)
        aucs = [s[f"auc@{t:g}"] for t in self.thresholds[:3]]
        median = s["median_pose_error"]
        table.add_row(*(f"{100 * a:.1f}" for a in aucs), f"{100 * s['mAA']:.1f}",
                      f"{median:.2f}°" if math.isfinite(median) else "inf", str(s["failures"]),
                      f"{s['mean_matches']:.0f}", f"{s['mean_inliers']:.0f}", f"{s['precision']:.3f}")
        return table


def feature_name(name: str, rot: int) -> str:
    """The cache name of an image turned by ``rot`` quarter turns (the name itself for 0)."""
    rot = int(rot) % 4
    return name if rot == 0 else f"{name}@rot{rot}"


def pose_extractor(extract: Callable[[Any], Features], rot: int = 0, resize: int | None = None
                   ) -> Callable[[Path], Features]:  # fmt: skip
    """``extract(path) -> Features`` for an image turned by ``rot`` and resized to a longer side of
    ``resize`` px, with keypoints mapped back to the stored image (see the module docstring).

    Args:
        extract: the model's ``extract``, taking a (3, H, W) float tensor in [0, 1].
    """
    import torch

    from delfi.io.images import read_image

    def run(path: Path) -> Features:
        image = read_image(path)
        height, width = image.shape[-2:]
        turned = torch.rot90(image, k=int(rot) % 4, dims=(-2, -1)) if rot % 4 else image
        tw, th = rotated_size((width, height), rot)
        if resize:
            scale = float(resize) / max(tw, th)
            size = (max(int(round(th * scale)), 1), max(int(round(tw * scale)), 1))
            turned = torch.nn.functional.interpolate(turned[None], size=size, mode="bilinear", antialias=True,
                                                     align_corners=False)[0].clamp(0, 1)  # fmt: skip
        features = extract(turned)
        kp = features.keypoints.detach().cpu().numpy().astype(np.float64)
        sh, sw = turned.shape[-2:]
        kp = rescale_keypoints(kp, (tw / sw, th / sh))  # back to the turned image at full size
        kp = rotate_points(kp, (tw, th), -int(rot)) if rot % 4 else kp  # and to the stored image
        scales = None if features.scales is None else features.scales * float(max(tw, th)) / float(max(sw, sh))
        return Features(keypoints=torch.from_numpy(kp).float(), scores=features.scores, descriptors=features.descriptors,
                        scales=scales, global_descriptor=features.global_descriptor, image_size=(width, height))

    return run



def run_pose(
    pairs: str | os.PathLike | Sequence[PosePair],
    images_root: str | os.PathLike | None,
    extract: Callable[[Any], Features] | None,
    out_dir: str | os.PathLike,
    *,
    method: str,
    features_path: str | os.PathLike | None = None,
    resize: int | None = None,
    threshold: float = 1.0,
    confidence: float = 0.99999,
    max_iters: int = 10000,
    seed: int = 0,
    backend: str = "opencv",
    ratio: float | None = None,
    max_keypoints: int | None = None,
    thresholds: Sequence[float] = AUC_THRESHOLDS,
    precision_threshold: float = EPIPOLAR_THRESHOLD_SCANNET,
    pictures: bool = True,
    on_image: Callable[[str, str], None] | None = None,
    on_pair: Callable[[str, str], None] | None = None,
) -> PoseReport:
    """Run the relative-pose benchmark and write ``out_dir/pose/<method>/results.json``.

    Args:
        pairs: a pairs file (`delfi.eval.pose.read_pose_pairs`) or its parsed pairs.
        images_root: folder the pairs' image names are relative to (for extraction and pictures).
        extract: the model's ``extract`` (tensor -> Features) for images not yet cached, or None.
        out_dir: results go to ``out_dir/pose/<method>/`` (never inside ``images_root``).
        method: the method's name (a plain folder name).
        features_path: a feature store to read instead of the run's own cache (nothing extracted;
            keypoints in the stored images' pixels).
        resize: longer side in px of the images features are extracted from (None: as stored).
        threshold: RANSAC threshold in pixels (OpenCV: divided by the mean focal length).
        confidence, max_iters, seed, backend: RANSAC settings (`delfi.match.verify`).
        ratio: Lowe ratio test of the matcher (None: plain mutual nearest neighbours).
        max_keypoints: use only each image's best ``max_keypoints`` keypoints.
        thresholds: AUC thresholds in degrees.
        precision_threshold: squared symmetric epipolar distance of a correct match (normalised).
        pictures: draw the best and the worst pairs' matches.
        on_image: ``(name, "done" | "cached" | "failed")`` per image; ``on_pair``: ``(name, status)``.

    A pair whose image is missing or unreadable, or whose features are bad, is listed in
    ``failures`` and left out of the numbers; the others are scored.
    """
    from delfi.eval.hpatches_run import ensure_features
    from delfi.eval.results import check_outside, claim_run_dir, write_results
    from delfi.io.cameras import Camera
    from delfi.io.features import FeatureStore
    from delfi.match.nn import mutual_nn
    from delfi.match.pipeline import check_features
    from delfi.match.verify import verify

    started = time.perf_counter()
    if not method or "/" in method or method in (".", ".."):
        raise ValueError(f"method must be a plain folder name, got {method!r}")
    if resize is not None and int(resize) < 16:
        raise ValueError(f"resize must be at least 16 px (the longer side), got {resize}")
    pair_list = read_pose_pairs(pairs) if isinstance(pairs, (str, os.PathLike)) else list(pairs)
    if not pair_list:
        raise ValueError(f"{pairs}: no pairs" if isinstance(pairs, (str, os.PathLike)) else "no pairs given")
    root = None if images_root is None else Path(images_root)
    if root is not None:
        check_outside(out_dir, root, "the images")
    run_dir = claim_run_dir(Path(out_dir) / BENCHMARK / method, BENCHMARK, PRODUCTS)
    run_dir.mkdir(parents=True, exist_ok=True)
    failures: list[tuple[str, str]] = []
    bad: dict[str, str] = {}
    n_extracted = 0
    if features_path is None:
        if root is None:
            raise ValueError("give the images folder (to extract features) or a feature store")
        store_path = run_dir / "features.h5"
        for rot in sorted({p.rot0 % 4 for p in pair_list} | {p.rot1 % 4 for p in pair_list}):
            wanted = {feature_name(p.name0, p.rot0): root / p.name0 for p in pair_list if p.rot0 % 4 == rot}
            wanted |= {feature_name(p.name1, p.rot1): root / p.name1 for p in pair_list if p.rot1 % 4 == rot}
            fn = None if extract is None else pose_extractor(extract, rot, resize)
            n_extracted += ensure_features(store_path, wanted, fn, method=method, on_image=on_image, failures=bad)
    else:
        store_path = Path(features_path)

    results: list[PosePairResult] = []
    drawn: list[tuple[PosePair, Features, Features, Any, PosePairResult]] = []
    with FeatureStore(store_path, "r") as store:
        names = set(store.names())
        cache: dict[str, Features | str] = {}

        def load(name: str) -> Features | str:
            if name not in cache:
                if name in bad:
                    cache[name] = bad[name]
                elif name not in names:
                    cache[name] = f"{name}: not in feature store {store_path}"
                else:
                    try:
                        f = store.get(name)
                        cache[name] = f.top_k(int(max_keypoints)) if max_keypoints else f
                    except (KeyError, ValueError) as exc:
                        cache[name] = str(exc)
            return cache[name]

        for pair in pair_list:
            label = f"{pair.name0} {pair.name1}"
            use_rot = features_path is None
            f0 = load(feature_name(pair.name0, pair.rot0 if use_rot else 0))
            f1 = load(feature_name(pair.name1, pair.rot1 if use_rot else 0))
            problem = next((f for f in (f0, f1) if isinstance(f, str)), None)
            if problem is None:
                try:
                    check_features(f0, f1)
                except ValueError as exc:
                    problem = str(exc)
            if problem is not None:
                failures.append((label, problem))
                if on_pair is not None:
                    on_pair(label, "failed")
                continue
            try:
                result, verified = _evaluate_pair(pair, f0, f1, mutual_nn, verify, Camera, ratio, threshold,
                                                  confidence, max_iters, seed, backend, precision_threshold)  # fmt: skip
            except ValueError as exc:  # intrinsics delfi's cameras cannot hold (skew, a negative focal length)
                failures.append((label, f"intrinsics: {exc}"))
                if on_pair is not None:
                    on_pair(label, "failed")
                continue
            results.append(result)
            drawn.append((pair, f0, f1, verified, result))
            if on_pair is not None:
                on_pair(label, "done")
    if not results:
        first = failures[0][1] if failures else "no pairs"
        raise ValueError(f"no pair could be evaluated: {first}")

    config = {
        "method": method, "pairs": str(pairs) if isinstance(pairs, (str, os.PathLike)) else f"{len(pair_list)} given",
        "images": None if root is None else str(root), "features_path": str(store_path),
        "resize": None if resize is None else int(resize), "matcher": "mutual_nn", "ratio": ratio,
        "max_keypoints": None if max_keypoints is None else int(max_keypoints), "geometry": "essential",
        "threshold": float(threshold), "confidence": float(confidence), "max_iters": int(max_iters),
        "seed": int(seed), "backend": backend, "auc_thresholds": [float(t) for t in thresholds],
        "precision_threshold": float(precision_threshold),
        "intrinsics": "the pairs file's K, in delfi's pixel convention, for the stored images",
    }  # fmt: skip
    report = PoseReport(method=method, pairs=results, config=config, out_dir=run_dir, n_extracted=n_extracted,
                        failures=failures, thresholds=tuple(float(t) for t in thresholds))  # fmt: skip
    report.seconds = time.perf_counter() - started
    write_results(run_dir / "results.json", report.to_json(), BENCHMARK)  # first: it marks the folder as ours
    if pictures and root is not None:
        _draw_extremes(drawn, root, run_dir)
    return report


def _evaluate_pair(pair: PosePair, f0: Features, f1: Features, mutual_nn, verify, Camera, ratio, threshold,
                   confidence, max_iters, seed, backend, precision_threshold):  # fmt: skip
    """(`PosePairResult`, the verified matches) of one pair."""
    started = time.perf_counter()
    matches = mutual_nn(f0.descriptors, f1.descriptors, ratio=ratio)
    cameras = tuple(Camera.from_K(K, *(f.image_size if min(f.image_size) > 0 else (1, 1)))
                    for K, f in ((pair.K0, f0), (pair.K1, f1)))  # fmt: skip
    verified = verify(f0, f1, matches, "essential", threshold=threshold, confidence=confidence, max_iters=max_iters,
                      seed=seed, backend=backend, intrinsics=cameras, min_inliers=0)  # fmt: skip
    R, t = verified.meta.get("rotation"), verified.meta.get("translation")
    errors = pose_errors(None if R is None else np.array(R), None if t is None else np.array(t), pair.T_0to1)
    idx = matches.indices.cpu().numpy()
    kp0, kp1 = f0.keypoints.cpu().numpy()[idx[:, 0]], f1.keypoints.cpu().numpy()[idx[:, 1]]
    y0, y1 = cameras[0].normalise(kp0), cameras[1].normalise(kp1)
    precision = math.nan  # a pure rotation has no epipolar geometry
    if np.linalg.norm(pair.T_0to1[:3, 3]) > 1e-12:
        precision = epipolar_precision(y0, y1, essential_from_pose(pair.T_0to1), precision_threshold)
    result = PosePairResult(
        name0=pair.name0, name1=pair.name1, n_feats=(len(f0), len(f1)), n_matches=len(matches),
        n_inliers=verified.num_inliers, status=str(verified.meta.get("status", "")),
        rotation_error=errors.rotation, translation_error=errors.translation, pose_error=errors.max,
        precision=precision, seconds=time.perf_counter() - started,
    )  # fmt: skip
    return result, verified


def _draw_extremes(drawn, root: Path, run_dir: Path) -> None:
    """Match pictures of the ``PICTURES`` best and worst pairs (by pose error); failures only warn."""
    try:
        from delfi.viz.matches import plot_matches
    except ImportError:
        return
    order = sorted(range(len(drawn)), key=lambda i: (drawn[i][4].pose_error, i))
    chosen = [("best", k, i) for k, i in enumerate(order[:PICTURES], 1)]
    worst = [i for i in reversed(order) if i not in set(order[:PICTURES])][:PICTURES]
    chosen += [("worst", k, i) for k, i in enumerate(worst, 1)]
    (run_dir / "pairs").mkdir(exist_ok=True)
    for kind, k, i in chosen:
        pair, f0, f1, verified, result = drawn[i]
        title = (f"{kind} {k}: pose error {result.pose_error:.2f} deg (rotation {result.rotation_error:.2f}, "
                 f"translation {result.translation_error:.2f})") if math.isfinite(result.pose_error) else f"{kind} {k}: no pose"
        try:
            plot_matches(root / pair.name0, root / pair.name1, f0, f1, verified, out=run_dir / "pairs" / f"{kind}-{k}.png",
                         title=title, names=(pair.name0, pair.name1))  # fmt: skip
        except Exception as error:  # noqa: BLE001 - a picture must never cost the benchmark
            warnings.warn(f"pose pair {pair.name0} {pair.name1}: match picture not drawn "
                          f"({type(error).__name__}: {error})", stacklevel=2)  # fmt: skip
