"""Ground-truth pairs from a COLMAP reconstruction (pycolmap's synthetic dataset)."""

from __future__ import annotations

import numpy as np
import pytest

pycolmap = pytest.importorskip("pycolmap")

from delfi.eval.pose_gt import pose_pairs_from_reconstruction  # noqa: E402


def _reconstruction(model="PINHOLE"):
    options = pycolmap.SyntheticDatasetOptions()
    options.num_rigs, options.num_cameras_per_rig, options.num_frames_per_rig = 1, 1, 4
    options.num_points3D = 60
    options.camera_model_id = getattr(pycolmap.CameraModelId, model)
    if model == "PINHOLE":
        options.camera_params = [700.0, 690.0, 320.0, 240.0]
    options.camera_width, options.camera_height = 640, 480
    return pycolmap.synthesize_dataset(options)


def _cam_from_world(image):
    rigid = image.cam_from_world() if callable(image.cam_from_world) else image.cam_from_world
    return np.asarray(rigid.matrix())


def test_poses_and_intrinsics_map_points_between_the_cameras():
    rec = _reconstruction()
    pairs = pose_pairs_from_reconstruction(rec, min_shared_points=10)
    assert len(pairs) == 6  # 4 images, every pair co-visible
    by_name = {rec.images[i].name: rec.images[i] for i in rec.reg_image_ids()}
    for pair in pairs:
        img0, img1 = by_name[pair.name0], by_name[pair.name1]
        camera1 = rec.cameras[img1.camera_id]
        for p2d in img0.points2D:
            if not p2d.has_point3D():
                continue
            X = np.append(rec.points3D[p2d.point3D_id].xyz, 1.0)
            X0 = (_cam_from_world(img0) @ X)[:3]
            X1 = pair.T_0to1[:3, :3] @ X0 + pair.T_0to1[:3, 3]
            assert np.allclose(X1, (_cam_from_world(img1) @ X)[:3], atol=1e-9)
            x1 = pair.K1 @ X1
            colmap_pixel = camera1.img_from_cam(X1)
            assert np.allclose(x1[:2] / x1[2], np.asarray(colmap_pixel).ravel()[:2] - 0.5, atol=1e-6)  # delfi = COLMAP - 0.5


def test_named_pairs_distortion_and_unknown_images():
    rec = _reconstruction()
    names = sorted(rec.images[i].name for i in rec.reg_image_ids())
    (pair,) = pose_pairs_from_reconstruction(rec, [(names[2], names[0])])
    assert (pair.name0, pair.name1) == (names[2], names[0])
    with pytest.raises(ValueError, match="not registered"):
        pose_pairs_from_reconstruction(rec, [(names[0], "nothing.jpg")])
    radial = _reconstruction("SIMPLE_RADIAL")
    for i in radial.cameras:
        camera = radial.cameras[i]
        params = np.asarray(camera.params)
        params[3] = 0.02
        camera.params = params
    with pytest.raises(ValueError, match="distortion"):
        pose_pairs_from_reconstruction(radial, min_shared_points=10)
    assert len(pose_pairs_from_reconstruction(radial, min_shared_points=10, max_distortion=0.05)) == 6
    with pytest.raises(FileNotFoundError):
        pose_pairs_from_reconstruction("/nonexistent/model")


def test_pairs_from_colmap_command(tmp_path):
    from typer.testing import CliRunner

    from delfi.cli.app import app
    from delfi.eval.pose import read_pose_pairs

    model = tmp_path / "model"
    model.mkdir()
    _reconstruction().write(str(model))
    runner = CliRunner()
    out = tmp_path / "gt.txt"
    result = runner.invoke(app, ["pairs", "from-colmap", str(model), "--out", str(out), "--min-shared", "10"])
    assert result.exit_code == 0, result.output
    assert len(read_pose_pairs(out)) == 6
    foreign = tmp_path / "notes.txt"
    foreign.write_text("my notes\n")
    result = runner.invoke(app, ["pairs", "from-colmap", str(model), "--out", str(foreign)])
    assert result.exit_code == 2 and foreign.read_text() == "my notes\n"
    result = runner.invoke(app, ["pairs", "from-colmap", str(tmp_path / "none"), "--out", str(tmp_path / "x.txt")])
    assert result.exit_code == 2 and "not a COLMAP model folder" in result.output
