"""The relative-pose benchmark on synthetic scenes with known poses, and its command."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

pytest.importorskip("cv2")

from delfi.cli.app import app  # noqa: E402
from delfi.datasets.synthetic_two_view import make_two_view_scene  # noqa: E402
from delfi.eval.pose import PosePair, format_pose_pair, pose_auc  # noqa: E402
from delfi.eval.pose_run import feature_name, pose_extractor, run_pose  # noqa: E402
from delfi.io.features import FeatureStore  # noqa: E402
from delfi.types import Features  # noqa: E402


def _features(keypoints, descriptors, size):
    n = len(keypoints)
    return Features(torch.from_numpy(keypoints).float(), torch.linspace(1, 0.5, n), torch.from_numpy(descriptors),
                    image_size=size)  # fmt: skip


def make_store(tmp_path, seeds=(0, 1, 2, 3), noise=0.5, outliers=0.3):
    """A feature store of synthetic pairs and their ground truth (``PosePair``), plus the scenes."""
    pairs, scenes = [], []
    with FeatureStore(tmp_path / "feats.h5", "w") as store:
        for seed in seeds:
            scene = make_two_view_scene(300, noise_px=noise, outlier_ratio=outliers, seed=seed, rotation_deg=8.0 + seed)
            n0, n1 = f"s{seed}/a.png", f"s{seed}/b.png"
            store.put(n0, _features(scene.keypoints0, scene.descriptors0, scene.image_size))
            store.put(n1, _features(scene.keypoints1, scene.descriptors1, scene.image_size))
            pairs.append(PosePair(n0, n1, 0, 0, scene.K0, scene.K1, scene.T_0to1))
            scenes.append(scene)
    return tmp_path / "feats.h5", pairs, scenes


def _angle(R):
    return np.degrees(np.arccos(np.clip((np.trace(R) - 1) / 2, -1, 1)))


def test_pose_errors_agree_with_the_truth_within_the_noise(tmp_path):
    store, pairs, scenes = make_store(tmp_path)
    report = run_pose(pairs, None, None, tmp_path / "out", method="synthetic", features_path=store)
    assert len(report.pairs) == 4 and not report.failures
    for result in report.pairs:
        assert result.rotation_error < 0.5 and result.translation_error < 2.0  # 0.5 px noise, 30 % outliers
        assert result.n_matches == 300 + round(0.3 * 300 / 0.7)  # every synthetic match is mutual
        assert 0.55 < result.precision < 0.75  # the outliers are 30 %; a few land near the epipolar line
        assert result.status == "ok"
    data = json.loads((tmp_path / "out/pose/synthetic/results.json").read_text())
    errors = [p["pose_error"] for p in data["pairs"]]
    assert data["benchmark"] == "pose" and data["auc@5"] == pytest.approx(pose_auc(errors, [5])[0])
    assert data["auc@20"] > 0.9 and data["failures"] == 0 and data["left_out"] == []


def test_noise_free_scene_gives_the_exact_pose(tmp_path):
    store, pairs, _ = make_store(tmp_path, seeds=(5,), noise=0.0, outliers=0.0)
    (result,) = run_pose(pairs, None, None, tmp_path / "out", method="exact", features_path=store).pairs
    assert result.pose_error < 1e-3 and result.precision == 1.0


def test_a_pair_without_features_fails_and_one_without_a_pose_counts_as_infinite(tmp_path):
    store, pairs, scenes = make_store(tmp_path, seeds=(0, 1))
    rng = np.random.default_rng(0)
    with FeatureStore(store, "a") as s:  # a pair whose matches are random: no pose, or a wrong one
        for name in ("junk/a.png", "junk/b.png"):
            s.put(name, _features(rng.uniform(0, 600, (3, 2)), np.eye(3, 128, dtype=np.float32), (640, 480)))
    junk = PosePair("junk/a.png", "junk/b.png", 0, 0, scenes[0].K0, scenes[0].K1, scenes[0].T_0to1)
    missing = PosePair("s0/a.png", "nowhere.png", 0, 0, scenes[0].K0, scenes[0].K1, scenes[0].T_0to1)
    skewed_K = scenes[0].K0.copy()
    skewed_K[0, 1] = 3.0  # a skew delfi's cameras cannot hold: that pair fails, the run goes on
    skewed = PosePair("s1/a.png", "s1/b.png", 0, 0, skewed_K, scenes[1].K1, scenes[1].T_0to1)
    report = run_pose([*pairs, junk, missing, skewed], None, None, tmp_path / "out", method="m", features_path=store)
    assert [f[0] for f in report.failures] == ["s0/a.png nowhere.png", "s1/a.png s1/b.png"]
    assert "not in feature store" in report.failures[0][1] and "intrinsics" in report.failures[1][1]
    bad = report.pairs[-1]
    assert bad.status == "not enough matches" and bad.pose_error == float("inf")
    summary = report.summary()
    assert summary["failures"] == 1 and summary["pairs"] == 3
    assert summary["auc@20"] <= 2 / 3  # the failure caps the recall at 2 / 3


class _BrightestPixel:
    """A fake model: one keypoint at the brightest pixel (delfi's pixel coordinates), as floats."""

    def __call__(self, image):
        _, h, w = image.shape
        flat = int(torch.argmax(image[0]))
        kp = torch.tensor([[flat % w, flat // w]], dtype=torch.float32)
        return Features(kp, torch.ones(1), torch.ones(1, 4) / 2, image_size=(w, h))


@pytest.mark.parametrize("rot", [0, 1, 2, 3])
@pytest.mark.parametrize("resize", [None, 60])
def test_turned_and_resized_keypoints_map_back_to_the_stored_image(tmp_path, rot, resize):
    from PIL import Image

    array = np.zeros((90, 120, 3), np.uint8)
    array[30:36, 80:86] = 255  # a 6 x 6 bright square centred at (82.5, 32.5)
    Image.fromarray(array).save(tmp_path / "a.png")
    features = pose_extractor(_BrightestPixel(), rot, resize)(tmp_path / "a.png")
    assert features.image_size == (120, 90)
    x, y = features.keypoints[0].tolist()
    tolerance = 2.5 if resize else 2.5  # the brightest pixel of the square is any of its 36 pixels
    assert abs(x - 82.5) <= tolerance and abs(y - 32.5) <= tolerance
    assert feature_name("a.png", rot) == ("a.png" if rot == 0 else f"a.png@rot{rot}")


def _write_pairs(path, pairs):
    path.write_text("".join(format_pose_pair(p) + "\n" for p in pairs))
    return path


def test_cli_scores_a_store_and_reports_bad_input(tmp_path):
    store, pairs, _ = make_store(tmp_path, seeds=(0, 1))
    pairs_file = _write_pairs(tmp_path / "pairs.txt", pairs)
    runner = CliRunner()
    result = runner.invoke(app, ["eval", "pose", "--pairs", str(pairs_file), "--features", str(store),
                                 "--out", str(tmp_path / "res")])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "AUC@5" in result.output and (tmp_path / "res/pose/feats/results.json").is_file()
    bad = tmp_path / "bad.txt"
    bad.write_text(format_pose_pair(pairs[0]) + "\na.png b.png 0 0 1 2 3\n")
    result = runner.invoke(app, ["eval", "pose", "--pairs", str(bad), "--features", str(store), "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and f"{bad}:2:" in result.output and "got 7" in result.output
    result = runner.invoke(app, ["eval", "pose", "--pairs", str(pairs_file), "--features", str(store), "--out", str(store)])
    assert result.exit_code == 2
    _write_pairs(pairs_file, [*pairs, PosePair("s0/a.png", "gone.png", 0, 0, pairs[0].K0, pairs[0].K1, pairs[0].T_0to1)])
    result = runner.invoke(app, ["eval", "pose", "--pairs", str(pairs_file), "--features", str(store),
                                 "--out", str(tmp_path / "res")])  # fmt: skip
    assert result.exit_code == 1 and "gone.png" in result.output
    result = runner.invoke(app, ["eval", "pose", "--pairs", str(pairs_file), "--out", str(tmp_path / "res")])
    assert result.exit_code == 2 and "--images" in result.output
