"""`delfi match --geometry essential` in pairs mode: intrinsics from a cameras file, EXIF or the default."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from delfi.datasets.synthetic_two_view import make_two_view_scene
from delfi.io.features import FeatureStore
from delfi.io.matches import MatchStore
from delfi.types import Features

from .conftest import invoke

pytest.importorskip("cv2")


def _store(tmp_path):
    scene = make_two_view_scene(300, noise_px=0.3, outlier_ratio=0.2, seed=1, focal=500.0)
    with FeatureStore(tmp_path / "f.h5", "w") as store:
        for name, kp, desc in (("a.jpg", scene.keypoints0, scene.descriptors0), ("b.jpg", scene.keypoints1, scene.descriptors1)):
            store.put(name, Features(torch.from_numpy(kp).float(), torch.ones(len(kp)), torch.from_numpy(desc),
                                     image_size=scene.image_size))  # fmt: skip
    (tmp_path / "pairs.txt").write_text("a.jpg b.jpg\n")
    return scene


def _pose_error(matches, scene):
    R = np.array(matches.meta["rotation"])
    return np.degrees(np.arccos(np.clip((np.trace(R.T @ scene.R) - 1) / 2, -1, 1)))


def test_cameras_file_gives_the_true_pose(tmp_path):
    scene = _store(tmp_path)
    K = scene.K0  # principal point at ((w - 1) / 2, (h - 1) / 2) in delfi's convention: COLMAP's w / 2
    (tmp_path / "cams.txt").write_text(f"* PINHOLE 640 480 {K[0, 0]} {K[1, 1]} {K[0, 2] + 0.5} {K[1, 2] + 0.5}\n")
    run = invoke("match", "--features", tmp_path / "f.h5", "--pairs", tmp_path / "pairs.txt", "--out", tmp_path / "m.h5",
                 "--geometry", "essential", "--intrinsics", tmp_path / "cams.txt", "--threshold", "1")  # fmt: skip
    assert run.exit_code == 0, run.output
    with MatchStore(tmp_path / "m.h5") as store:
        matches = store.get("a.jpg", "b.jpg")
    assert matches.kind == "essential" and matches.meta["status"] == "ok"
    assert _pose_error(matches, scene) < 0.3
    assert np.allclose(matches.meta["intrinsics"][0], K)


def test_exif_of_the_images_folder_and_the_default_guess(tmp_path):
    scene = _store(tmp_path)
    images = tmp_path / "imgs"
    images.mkdir()
    for name in ("a.jpg", "b.jpg"):  # 35 mm equivalent that gives the scene's 500 px focal length
        exif = Image.Exif()
        exif.get_ifd(0x8769)[0xA405] = 500.0 * 43.27 / 800.0
        Image.new("RGB", (640, 480)).save(images / name, exif=exif.tobytes())
    run = invoke("match", "--features", tmp_path / "f.h5", "--pairs", tmp_path / "pairs.txt", "--out", tmp_path / "m.h5",
                 "--geometry", "essential", "--images", images)  # fmt: skip
    assert run.exit_code == 0, run.output
    with MatchStore(tmp_path / "m.h5") as store:
        matches = store.get("a.jpg", "b.jpg")
    assert matches.meta["intrinsics"][0][0][0] == pytest.approx(500.0, rel=1e-3)
    assert _pose_error(matches, scene) < 0.5
    run = invoke("match", "--features", tmp_path / "f.h5", "--pairs", tmp_path / "pairs.txt", "--out", tmp_path / "d.h5",
                 "--geometry", "essential")  # fmt: skip
    assert run.exit_code == 0, run.output
    with MatchStore(tmp_path / "d.h5") as store:
        assert store.get("a.jpg", "b.jpg").meta["intrinsics"][0][0][0] == 768.0  # COLMAP's 1.2 max(w, h)


def test_intrinsics_usage_errors(tmp_path):
    _store(tmp_path)
    base = ["match", "--features", tmp_path / "f.h5", "--pairs", tmp_path / "pairs.txt", "--out", tmp_path / "m.h5"]
    run = invoke(*base, "--geometry", "fundamental", "--intrinsics", "500")
    assert run.exit_code == 2 and "--intrinsics is for --geometry essential" in run.output
    bad = tmp_path / "cams.txt"
    bad.write_text("a.jpg PINHOLE 640 480 500 500\n")
    run = invoke(*base, "--geometry", "essential", "--intrinsics", bad)
    assert run.exit_code == 2 and f"{bad}, line 1" in run.output
    run = invoke(*base, "--geometry", "essential", "--intrinsics", "fast")
    assert run.exit_code == 2 and "not a file" in run.output
    only_a = tmp_path / "a_only.txt"
    only_a.write_text("a.jpg PINHOLE 640 480 500 500 320 240\n")
    run = invoke(*base, "--geometry", "essential", "--intrinsics", only_a)
    assert run.exit_code == 1 and "no camera for image 'b.jpg'" in run.output
    run = invoke(*base, "--geometry", "essential", "--backend", "pydegensac")
    assert run.exit_code == 2 and "supports only" in run.output
