"""`delfi sfm` on real photos, and relative pose on them: the 10 Sacre Coeur photos reconstructed with
SIFT + COLMAP (PINHOLE cameras) give ground-truth pairs (`delfi pairs from-colmap`); delfi's default
model, whose features take no part in that reconstruction, is scored on them with `delfi eval pose`.
One reconstruction serves all the tests of the module (about 10 s on one thread)."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

pytest.importorskip("pycolmap")
pytest.importorskip("cv2")

from delfi.eval.pose import read_pose_pairs  # noqa: E402


@pytest.fixture(scope="module")
def ground_truth(shared_data, sift_store, tmp_path_factory):
    """(images folder, pairs file with ground truth, SIFT store) from a SIFT reconstruction."""
    from typer.testing import CliRunner

    from delfi.cli.app import app
    from delfi.match.pipeline import MatchingConfig, match_pairs

    images = shared_data / "images" / "sacre_coeur"
    if not images.is_dir():
        pytest.skip(f"{images} not found")
    work = tmp_path_factory.mktemp("sacre_coeur_gt")
    feats = sift_store(images, work / "sift.h5")
    names = sorted(p.name for p in images.glob("*.jpg"))
    report = match_pairs(feats, list(itertools.combinations(names, 2)), work / "m.h5",
                         MatchingConfig(ratio=0.8, geometry="fundamental"))  # fmt: skip
    assert report.verified >= 35
    runner = CliRunner()
    run = runner.invoke(app, ["sfm", "--images", str(images), "-f", str(feats), "-m", str(work / "m.h5"),
                              "--out", str(work / "sfm"), "--camera-model", "PINHOLE", "--threads", "1"])  # fmt: skip
    assert run.exit_code == 0, run.output
    run = runner.invoke(app, ["pairs", "from-colmap", str(work / "sfm/sparse/0"), "--out", str(work / "gt.txt"),
                              "--min-shared", "100"])  # fmt: skip
    assert run.exit_code == 0, run.output
    return images, work / "gt.txt", work / "sfm"


def test_sfm_registers_all_ten_photos_with_sift(ground_truth):
    """SIFT 4000, delfi's matching (ratio 0.8, fundamental), COLMAP's mapper, PINHOLE cameras: measured
    10 / 10 registered, ~900 points, mean reprojection error ~0.3 px (pycolmap 4.2.1)."""
    results = json.loads((ground_truth[2] / "results.json").read_text())
    assert results["registered"] == results["images"] == 10
    assert results["points3D"] > 600 and results["mean_track_length"] > 3
    assert results["mean_reprojection_error"] < 0.6
    assert (ground_truth[2] / "sparse/0/images.bin").is_file() and (ground_truth[2] / "database.db").is_file()


def test_ground_truth_pairs_from_the_reconstruction(ground_truth):
    _, gt, _ = ground_truth
    pairs = read_pose_pairs(gt)
    assert len(pairs) >= 20  # co-visible pairs sharing >= 100 points
    for pair in pairs:  # photos of about 1000 px: focal lengths of a few hundred to a few thousand px
        assert np.linalg.norm(pair.T_0to1[:3, 3]) > 0
        assert 300 < pair.K0[0, 0] < 5000 and 300 < pair.K1[1, 1] < 5000


def test_default_model_poses_agree_with_the_reconstruction(ground_truth, tmp_path):
    """delfi-lite at 640 px on the 22 SIFT-derived pairs. Measured (pycolmap 4.2.1, OpenCV 5.0): AUC@5 / 10 / 20
    0.537 / 0.668 / 0.764, median pose error 1.84 degrees, 183 inliers per pair, no failure."""
    from typer.testing import CliRunner

    from delfi.cli.app import app

    images, gt, _ = ground_truth
    run = CliRunner().invoke(app, ["eval", "pose", "--pairs", str(gt), "--images", str(images), "--resize", "640",
                                   "--out", str(tmp_path), "--method", "lite", "tile_pixels=0"])  # fmt: skip
    assert run.exit_code == 0, run.output
    results = json.loads((tmp_path / "pose/lite/results.json").read_text())
    assert results["failures"] == 0 and len(results["pairs"]) >= 20
    assert results["median_pose_error"] < 4.0
    assert results["auc@5"] > 0.35 and results["auc@20"] > 0.6
    assert sorted(p.name for p in (tmp_path / "pose/lite/pairs").iterdir()) == [
        "best-1.png", "best-2.png", "best-3.png", "worst-1.png", "worst-2.png", "worst-3.png"]
