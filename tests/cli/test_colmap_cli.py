"""`delfi export colmap` and `delfi sfm`: summaries, exit codes, refusals, and Sacre Coeur end to end."""

from __future__ import annotations

import itertools
import json
import os
import sys

import numpy as np
import pytest
import torch

pycolmap = pytest.importorskip("pycolmap")

from delfi.io.features import FeatureStore  # noqa: E402
from delfi.io.matches import MatchStore  # noqa: E402
from delfi.types import Features, Matches  # noqa: E402

from .conftest import invoke  # noqa: E402

W, H, F = 640, 480, 500.0


def synthetic_stores(folder, count: int = 4, points: int = 400):
    """A feature store of ``count`` views of one random 3-D point cloud (exact projections) and a match
    store of every pair (unverified identity matches): COLMAP verifies and maps them."""
    rng = np.random.default_rng(0)
    X = rng.uniform([-2, -1.5, 5], [2, 1.5, 8], (points, 3))
    K = np.array([[F, 0, W / 2], [0, F, H / 2], [0, 0, 1]])
    names = [f"v{i}.jpg" for i in range(count)]
    folder.mkdir(parents=True, exist_ok=True)
    with FeatureStore(folder / "f.h5", "w") as store:
        for i, name in enumerate(names):
            c, s = np.cos(0.05 * i), np.sin(0.05 * i)
            R, t = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]), np.array([-0.4 * i, 0.0, 0.0])
            x = (K @ (R @ X.T + t[:, None])).T
            kp = (x[:, :2] / x[:, 2:] - 0.5).astype(np.float32)
            d = torch.nn.functional.normalize(torch.randn(points, 8), dim=1)
            store.put(name, Features(torch.from_numpy(kp), torch.ones(points), d, image_size=(W, H)))
    idx = torch.arange(points)
    with MatchStore(folder / "m.h5", "w") as store:
        for a, b in itertools.combinations(names, 2):
            store.put(a, b, Matches(indices=torch.stack([idx, idx], 1), scores=torch.ones(points)))
    return folder / "f.h5", folder / "m.h5"


def test_export_colmap_summary_and_refusals(tmp_path):
    feats, matches = synthetic_stores(tmp_path / "in")
    out = tmp_path / "colmap" / "database.db"
    run = invoke("export", "colmap", "-f", feats, "-m", matches, "--out", out, "--threads", "1")
    assert run.exit_code == 0, run.output
    assert "6 (0 by delfi, 6 by COLMAP)" in run.output and out.is_file()

    again = invoke("export", "colmap", "-f", feats, "-m", matches, "--out", out)
    assert again.exit_code == 2 and "--overwrite" in again.output
    replaced = invoke("export", "colmap", "-f", feats, "-m", matches, "--out", out, "--overwrite", "--no-colmap-verify",
                      "--images", tmp_path / "in")  # fmt: skip
    assert replaced.exit_code == 0 and "unverified pairs" in replaced.output
    assert "4 of 4 not in --images" in replaced.output

    mine = tmp_path / "mine.db"
    mine.write_text("my own file")
    refused = invoke("export", "colmap", "-f", feats, "-m", matches, "--out", mine, "--overwrite")
    assert refused.exit_code == 2 and "not a COLMAP database delfi made" in refused.output
    assert mine.read_text() == "my own file"
    same = invoke("export", "colmap", "-f", feats, "-m", matches, "--out", matches)
    assert same.exit_code == 2 and "also an input" in same.output
    model = invoke("export", "colmap", "-f", feats, "-m", matches, "--out", tmp_path / "x.db", "--camera-model", "NOPE")
    assert model.exit_code == 2 and "not a COLMAP camera model" in model.output
    missing = invoke("export", "colmap", "-f", tmp_path / "nope.h5", "-m", matches, "--out", tmp_path / "x.db")
    assert missing.exit_code == 2 and "no such file" in missing.output
    not_a_store = invoke("export", "colmap", "-f", mine, "-m", matches, "--out", tmp_path / "x.db")
    assert not_a_store.exit_code == 2 and "Traceback" not in not_a_store.output
    assert not (tmp_path / "x.db").exists()


def test_cameras_file_and_single_camera_options(tmp_path):
    feats, matches = synthetic_stores(tmp_path / "in", count=2)
    cams = tmp_path / "cams.txt"
    cams.write_text(f"* PINHOLE {W} {H} 500 500 320 240\n")
    out = tmp_path / "a.db"
    run = invoke("export", "colmap", "-f", feats, "-m", matches, "--out", out, "--cameras", cams, "--threads", "1")
    assert run.exit_code == 0, run.output
    with pycolmap.Database.open(str(out)) as db:
        assert db.num_cameras() == 1 and np.allclose(db.read_camera(1).params, [500, 500, 320, 240])
    single = invoke("export", "colmap", "-f", feats, "-m", matches, "--out", tmp_path / "b.db", "--single-camera",
                    "--camera-model", "SIMPLE_PINHOLE", "--no-colmap-verify")  # fmt: skip
    assert single.exit_code == 0 and "1 (2 focal 1.2 x max(w, h))" in single.output
    cams.write_text("a.jpg NOT_A_MODEL 10 10 1\n")
    bad = invoke("export", "colmap", "-f", feats, "-m", matches, "--out", tmp_path / "c.db", "--cameras", cams)
    assert bad.exit_code == 2 and "cams.txt" in bad.output and "Traceback" not in bad.output
    assert not (tmp_path / "c.db").exists()


def test_sfm_on_a_synthetic_scene_and_its_folder_rules(tmp_path):
    feats, matches = synthetic_stores(tmp_path / "in")
    images = tmp_path / "images"
    images.mkdir()
    out = tmp_path / "sfm"
    run = invoke("sfm", "--images", images, "-f", feats, "-m", matches, "--out", out, "--threads", "1")
    assert run.exit_code == 0, run.output
    assert "4 of 4 images" in run.output
    results = json.loads((out / "results.json").read_text())
    assert results["format"] == "delfi-sfm" and results["registered"] == results["images"] == 4
    assert results["points3D"] > 300 and results["mean_reprojection_error"] < 0.1
    assert all(entry["registered"] and entry["observations"] > 300 for entry in results["per_image"].values())
    assert sorted(os.listdir(out / "sparse" / "0")) == ["cameras.bin", "frames.bin", "images.bin", "points3D.bin",
                                                       "rigs.bin"]  # fmt: skip
    model = pycolmap.Reconstruction(str(out / "sparse" / "0"))
    assert model.num_reg_images() == 4

    again = invoke("sfm", "--images", images, "-f", feats, "-m", matches, "--out", out)
    assert again.exit_code == 2 and "--overwrite" in again.output
    (out / "notes.txt").write_text("mine")
    redo = invoke("sfm", "--images", images, "-f", feats, "-m", matches, "--out", out, "--overwrite", "--threads", "1")
    assert redo.exit_code == 0, redo.output
    assert (out / "notes.txt").read_text() == "mine"
    assert sorted(e.name for e in out.iterdir()) == [".delfi-sfm", "database.db", "notes.txt", "results.json", "sparse"]

    foreign = tmp_path / "project"
    foreign.mkdir()
    (foreign / "database.db").write_text("someone's")
    refused = invoke("sfm", "--images", images, "-f", feats, "-m", matches, "--out", foreign, "--overwrite")
    assert refused.exit_code == 2 and "not a delfi sfm output folder" in refused.output
    assert sorted(os.listdir(foreign)) == ["database.db"]
    into_input = invoke("sfm", "--images", images, "-f", feats, "-m", matches, "--out", tmp_path / "in")
    assert into_input.exit_code == 2
    bad = invoke("sfm", "--images", images, "-f", feats, "-m", matches, "--out", tmp_path / "new", "--single-camera",
                 "--camera-model", "NOPE")  # fmt: skip
    assert bad.exit_code == 2 and not (tmp_path / "new").exists()


def test_missing_pycolmap_exits_2_naming_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pycolmap", None)  # import pycolmap raises ImportError
    for args in (["export", "colmap", "-f", "f.h5", "-m", "m.h5", "--out", tmp_path / "d.db"],
                 ["sfm", "--images", tmp_path, "-f", "f.h5", "-m", "m.h5", "--out", tmp_path / "s"]):
        run = invoke(*args)
        assert run.exit_code == 2 and "pip install delfi[sfm]" in run.output
