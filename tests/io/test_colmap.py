"""COLMAP databases from delfi stores: conventions, cameras, pairs written once, verification, safety."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

pycolmap = pytest.importorskip("pycolmap")

from delfi.io.cameras import Camera, read_cameras  # noqa: E402
from delfi.io.colmap import (DatabaseOutputError, ExportOptions, is_delfi_database, keypoints_to_colmap,  # noqa: E402
                             model_to_colmap, write_database)
from delfi.io.features import FeatureStore  # noqa: E402
from delfi.io.matches import MatchStore  # noqa: E402
from delfi.types import Features, Matches  # noqa: E402

W, H, F = 640, 480, 500.0
K = np.array([[F, 0, W / 2], [0, F, H / 2], [0, 0, 1]])  # COLMAP's convention: centre at (w / 2, h / 2)


def _rotation(yaw: float) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def scene(count: int = 3, points: int = 300, seed: int = 0) -> list[np.ndarray]:
    """Delfi-convention keypoints (P, 2) of the same 3-D points (row i = point i) in ``count`` cameras."""
    rng = np.random.default_rng(seed)
    X = rng.uniform([-2, -1.5, 5], [2, 1.5, 8], (points, 3))
    out = []
    for i in range(count):
        R, t = _rotation(0.06 * i), np.array([-0.4 * i, 0.02 * i, 0.0])
        x = (K @ (R @ X.T + t[:, None])).T
        out.append(x[:, :2] / x[:, 2:] - 0.5)
    return out


def features_store(path, keypoints: dict[str, np.ndarray], size=(W, H)):
    rng = np.random.default_rng(1)
    with FeatureStore(path, "w") as store:
        for name, kp in keypoints.items():
            d = rng.normal(size=(len(kp), 8)).astype(np.float32)
            d /= np.linalg.norm(d, axis=1, keepdims=True)
            store.put(name, Features(torch.from_numpy(kp.astype(np.float32)), torch.ones(len(kp)), torch.from_numpy(d),
                                     image_size=size))  # fmt: skip
    return path


def identity(k: int, **kwargs) -> Matches:
    i = torch.arange(k)
    return Matches(indices=torch.stack([i, i], 1), scores=torch.ones(k), **kwargs)


def ok(k: int, kind="homography", model=None) -> Matches:
    model = torch.eye(3, dtype=torch.float64) if model is None else torch.as_tensor(model, dtype=torch.float64)
    return identity(k, inliers=torch.ones(k, dtype=torch.bool), model=model, kind=kind, meta={"status": "ok"})


def matches_store(path, pairs: dict[tuple[str, str], Matches]):
    with MatchStore(path, "w") as store:
        for (a, b), m in pairs.items():
            store.put(a, b, m)
    return path


def geometries(db_path) -> dict[tuple[int, int], object]:
    """Every stored two-view geometry, also those without inliers (`read_two_view_geometries` omits them)."""
    with pycolmap.Database.open(str(db_path)) as db:
        n = db.num_images()
        return {(i, j): db.read_two_view_geometry(i, j) for i in range(1, n + 1) for j in range(i + 1, n + 1)
                if db.exists_two_view_geometry(i, j)}


def test_keypoints_move_by_half_a_pixel():
    kp = np.array([[0.0, 0.0], [10.25, 3.5]])
    assert np.allclose(keypoints_to_colmap(kp), [[0.5, 0.5], [10.75, 4.0]])
    assert keypoints_to_colmap(kp).dtype == np.float32


def test_models_in_colmap_convention_hold_for_shifted_points():
    rng = np.random.default_rng(3)
    x0 = np.c_[rng.uniform(0, W, (20, 2)), np.ones(20)]
    Hd = np.array([[1.1, 0.05, 12.0], [-0.03, 0.95, -7.0], [1e-4, -2e-4, 1.0]])
    Hc = model_to_colmap(Hd, "homography")
    x1 = (Hd @ x0.T).T
    x1 /= x1[:, 2:]
    shift = np.array([0.5, 0.5, 0.0])
    y1 = (Hc @ (x0 + shift).T).T
    assert np.allclose(y1[:, :2] / y1[:, 2:], x1[:, :2] + 0.5) and Hc[2, 2] == pytest.approx(1.0)
    assert not np.allclose(Hc, Hd)

    # fundamental from two cameras in delfi's pixel convention
    kd = K - np.array([[0, 0, 0.5], [0, 0, 0.5], [0, 0, 0]])
    R, t = _rotation(0.1), np.array([-1.0, 0.1, 0.2])
    tx = np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]])
    Fd = np.linalg.inv(kd).T @ tx @ R @ np.linalg.inv(kd)
    X = rng.uniform([-2, -1, 5], [2, 1, 8], (20, 3))
    p0, p1 = (kd @ X.T).T, (kd @ (R @ X.T + t[:, None])).T
    p0, p1 = p0 / p0[:, 2:], p1 / p1[:, 2:]
    scale = np.linalg.norm(Fd)
    assert np.abs(np.einsum("ni,ij,nj->n", p1, Fd / scale, p0)).max() < 1e-9
    Fc = model_to_colmap(Fd, "fundamental")
    assert np.abs(np.einsum("ni,ij,nj->n", p1 + shift, Fc, p0 + shift)).max() < 1e-9
    assert np.abs(np.einsum("ni,ij,nj->n", p1 + shift, Fd / scale, p0 + shift)).max() > 1e-6  # the shift matters

    A = np.array([[0.9, 0.1, 4.0], [-0.1, 1.1, -3.0], [0, 0, 1]])
    Ac = model_to_colmap(A, "affine")
    assert np.allclose(Ac[2], [0, 0, 1]) and np.allclose(Ac[:2, :2], A[:2, :2])
    assert np.allclose(model_to_colmap(np.eye(3) * 2, "essential"), np.eye(3) * 2)
    with pytest.raises(ValueError, match="kind"):
        model_to_colmap(np.eye(3), "similarity")


def test_database_content_pairs_once_and_skipped_pairs(tmp_path):
    kp = dict(zip(("a.jpg", "b.jpg", "c.jpg"), scene()))
    kp["d.jpg"] = kp["a.jpg"][:20]
    feats = features_store(tmp_path / "f.h5", kp)
    Hd = np.array([[1.0, 0.02, 5.0], [0.0, 1.0, -2.0], [0.0, 0.0, 1.0]])
    rejected = identity(300, inliers=torch.zeros(300, dtype=torch.bool), kind="fundamental",
                        meta={"status": "too few inliers"})  # fmt: skip
    pairs = {
        ("b.jpg", "a.jpg"): ok(300, "homography", Hd),  # stored against COLMAP's order: written reversed
        ("a.jpg", "b.jpg"): identity(300),  # the reverse, unverified: the verified one wins
        ("c.jpg", "b.jpg"): rejected,
        ("a.jpg", "c.jpg"): identity(300),
        ("a.jpg", "ghost.jpg"): identity(10),
        ("c.jpg", "c.jpg"): identity(10),
    }
    bad = identity(5)
    bad.indices[0, 1] = 1000
    pairs[("b.jpg", "d.jpg")] = bad
    store = matches_store(tmp_path / "m.h5", pairs)
    db_path = tmp_path / "out" / "database.db"
    db_path.parent.mkdir()

    report = write_database(feats, store, db_path, options=ExportOptions(colmap_verify=False))
    assert (report.images, report.keypoints, report.cameras) == (4, 920, 4)
    assert report.camera_sources == {"focal 1.2 x max(w, h)": 4}
    assert (report.pairs, report.duplicates) == (3, 1)
    assert (report.delfi_verified, report.delfi_rejected, report.unverified) == (1, 1, 1)
    reasons = {(a, b): why for a, b, why in report.skipped_pairs}
    assert "not in feature store" in reasons[("a.jpg", "ghost.jpg")]
    assert "itself" in reasons[("c.jpg", "c.jpg")]
    assert "has 20 keypoints" in reasons[("b.jpg", "d.jpg")]
    assert is_delfi_database(db_path) and sorted(os.listdir(db_path.parent)) == ["database.db"]

    with pycolmap.Database.open(str(db_path)) as db:
        images = {im.name: im for im in db.read_all_images()}
        assert [images[n].image_id for n in ("a.jpg", "b.jpg", "c.jpg", "d.jpg")] == [1, 2, 3, 4]
        assert np.allclose(db.read_keypoints(1)[:, :2], kp["a.jpg"] + 0.5, atol=1e-4)
        assert (db.num_rigs(), db.num_frames(), db.num_matched_image_pairs()) == (4, 4, 3)
        camera = db.read_camera(images["a.jpg"].camera_id)
        assert camera.model.name == "SIMPLE_RADIAL" and np.allclose(camera.params, [1.2 * W, W / 2, H / 2, 0])
        assert len(db.read_matches(1, 2)) == 300
    found = geometries(db_path)
    assert set(found) == {(1, 2), (2, 3)}
    ab = found[(1, 2)]
    assert pycolmap.TwoViewGeometryConfiguration(ab.config).name == "PLANAR_OR_PANORAMIC"
    assert np.allclose(ab.H, model_to_colmap(np.linalg.inv(Hd), "homography"))  # (b, a) reversed to (a, b)
    assert len(ab.inlier_matches) == 300
    bc = found[(2, 3)]
    assert pycolmap.TwoViewGeometryConfiguration(bc.config).name == "DEGENERATE" and len(bc.inlier_matches) == 0


def test_colmap_verifies_only_pairs_delfi_did_not(tmp_path):
    kp = dict(zip(("a.jpg", "b.jpg", "c.jpg"), scene()))
    feats = features_store(tmp_path / "f.h5", kp)
    rejected = identity(300, inliers=torch.zeros(300, dtype=torch.bool), kind="fundamental",
                        meta={"status": "too few inliers"})  # fmt: skip
    store = matches_store(tmp_path / "m.h5", {("a.jpg", "b.jpg"): identity(300), ("a.jpg", "c.jpg"): rejected,
                                              ("b.jpg", "c.jpg"): identity(300)})  # fmt: skip
    db_path = tmp_path / "database.db"
    report = write_database(feats, store, db_path, options=ExportOptions(threads=1))
    assert (report.colmap_verified, report.colmap_rejected, report.delfi_rejected, report.unverified) == (2, 0, 1, 0)
    assert report.verified_pairs == 2
    found = geometries(db_path)
    assert len(found[(1, 2)].inlier_matches) >= 290  # exact projections: (nearly) all inliers
    assert len(found[(1, 3)].inlier_matches) == 0  # delfi's rejection stands although the matches are perfect


def test_cameras_from_a_file_single_camera_and_exif(tmp_path):
    kp = dict(zip(("a.jpg", "b.jpg", "sub/c.jpg"), scene()))
    feats = features_store(tmp_path / "f.h5", kp)
    store = matches_store(tmp_path / "m.h5", {("a.jpg", "b.jpg"): identity(300)})
    opts = {"colmap_verify": False}

    cams = tmp_path / "cameras.txt"
    cams.write_text(f"a.jpg PINHOLE {W} {H} 510 520 321 239\nc.jpg SIMPLE_PINHOLE {W // 2} {H // 2} 250 160 120\n"
                    f"* SIMPLE_RADIAL {W} {H} 480 320 240 0.01\n")
    report = write_database(feats, store, tmp_path / "file.db", options=ExportOptions(cameras=read_cameras(cams), **opts))
    assert report.cameras == 3 and report.camera_sources == {"cameras file": 3}
    with pycolmap.Database.open(str(tmp_path / "file.db")) as db:
        by_name = {im.name: db.read_camera(im.camera_id) for im in db.read_all_images()}
    assert np.allclose(by_name["a.jpg"].params, [510, 520, 321, 239])
    assert np.allclose(by_name["sub/c.jpg"].params, [500, 320, 240])  # by its file name, scaled to its size
    assert np.allclose(by_name["b.jpg"].params, [480, 320, 240, 0.01]) and by_name["b.jpg"].has_prior_focal_length

    cams.write_text(f"* SIMPLE_RADIAL {W} {H} 480 320 240 0.01\n")
    report = write_database(feats, store, tmp_path / "star.db", options=ExportOptions(cameras=read_cameras(cams), **opts))
    assert report.cameras == 1  # '*': one camera for all images

    report = write_database(feats, store, tmp_path / "single.db",
                            options=ExportOptions(single_camera=True, camera_model="PINHOLE", **opts))  # fmt: skip
    with pycolmap.Database.open(str(tmp_path / "single.db")) as db:
        assert db.num_cameras() == 1 and db.num_rigs() == 1 and db.num_frames() == 3
        assert np.allclose(db.read_camera(1).params, [1.2 * W, 1.2 * W, W / 2, H / 2])

    mixed = features_store(tmp_path / "mixed.h5", {"a.jpg": kp["a.jpg"]}, size=(W, H))
    with FeatureStore(mixed, "a") as more:
        more.put("b.jpg", Features(torch.zeros(1, 2), torch.ones(1), torch.ones(1, 8), image_size=(H, W)))
    with pytest.raises(ValueError, match="single camera needs images of one size"):
        write_database(mixed, store, tmp_path / "no.db", options=ExportOptions(single_camera=True))
    assert not (tmp_path / "no.db").exists()
    with pytest.raises(ValueError, match="camera model"):
        write_database(feats, store, tmp_path / "no.db", options=ExportOptions(camera_model="NOPE"))

    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0xA405] = 50  # 35 mm equivalent focal length
    for name in kp:
        Image.new("RGB", (W, H)).save(images / name, exif=exif if name == "a.jpg" else Image.Exif())
    report = write_database(feats, store, tmp_path / "exif.db", images=images, options=ExportOptions(**opts))
    assert report.camera_sources == {"EXIF focal length": 1, "focal 1.2 x max(w, h)": 2}
    with pycolmap.Database.open(str(tmp_path / "exif.db")) as db:
        by_name = {im.name: db.read_camera(im.camera_id) for im in db.read_all_images()}
    expected = pycolmap.infer_camera_from_image(str(images / "a.jpg")).params[0]
    assert by_name["a.jpg"].params[0] == pytest.approx(expected) and by_name["a.jpg"].has_prior_focal_length
    assert by_name["b.jpg"].params[0] == pytest.approx(1.2 * W) and not by_name["b.jpg"].has_prior_focal_length

    Image.new("RGB", (100, 100)).save(images / "b.jpg")
    with pytest.raises(ValueError, match="features of another image"):
        write_database(feats, store, tmp_path / "no.db", images=images, options=ExportOptions(**opts))


def test_only_delfi_databases_are_replaced_and_only_with_overwrite(tmp_path):
    kp = dict(zip(("a.jpg", "b.jpg"), scene(2)))
    feats = features_store(tmp_path / "f.h5", kp)
    store = matches_store(tmp_path / "m.h5", {("a.jpg", "b.jpg"): ok(300)})
    opts = ExportOptions(colmap_verify=False)

    foreign = tmp_path / "mine.db"
    foreign.write_bytes(b"my notes")
    with pytest.raises(DatabaseOutputError, match="not a COLMAP database delfi made"):
        write_database(feats, store, foreign, options=opts, overwrite=True)
    colmap_db = tmp_path / "colmap.db"
    con = sqlite3.connect(colmap_db)
    con.execute("CREATE TABLE cameras (camera_id INTEGER)")
    con.commit()
    con.close()
    with pytest.raises(DatabaseOutputError) as refused:
        write_database(feats, store, colmap_db, options=opts, overwrite=True)
    assert refused.value.reason == "foreign"
    assert foreign.read_bytes() == b"my notes" and not is_delfi_database(colmap_db) and not is_delfi_database(foreign)

    db_path = tmp_path / "database.db"
    write_database(feats, store, db_path, options=opts)
    with pytest.raises(DatabaseOutputError) as refused:
        write_database(feats, store, db_path, options=opts)
    assert refused.value.reason == "exists"
    wal = tmp_path / "database.db-wal"
    wal.write_bytes(b"")
    with pytest.raises(DatabaseOutputError, match="-wal"):
        write_database(feats, store, db_path, options=opts, overwrite=True)
    wal.unlink()
    report = write_database(feats, store, db_path, options=opts, overwrite=True)
    assert report.pairs == 1 and is_delfi_database(db_path)


def test_a_failed_or_killed_run_leaves_the_old_database(tmp_path, monkeypatch):
    import delfi.io.colmap as colmap

    kp = dict(zip(("a.jpg", "b.jpg"), scene(2)))
    feats = features_store(tmp_path / "f.h5", kp)
    store = matches_store(tmp_path / "m.h5", {("a.jpg", "b.jpg"): ok(300)})
    db_path = tmp_path / "database.db"
    write_database(feats, store, db_path, options=ExportOptions(colmap_verify=False))
    before = db_path.read_bytes()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f"database.db.tmp-{int(dead.stdout)}-0123abcd"
    stale.write_bytes(b"half a database")

    def broken(*args, **kwargs):
        raise RuntimeError("killed")

    monkeypatch.setattr(colmap, "_write_pairs", broken)
    with pytest.raises(RuntimeError, match="killed"):
        write_database(feats, store, db_path, options=ExportOptions(colmap_verify=False), overwrite=True)
    assert db_path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["database.db", "f.h5", "m.h5"]  # own temp and the dead run's gone


def test_each_kind_gets_its_configuration_and_model(tmp_path):
    kp = dict(zip(("a.jpg", "b.jpg", "c.jpg", "d.jpg"), scene(4)))
    feats = features_store(tmp_path / "f.h5", kp)
    R, t = _rotation(0.1), np.array([0.6, 0.0, 0.8])
    Fd = np.arange(1.0, 10.0).reshape(3, 3)
    A = np.array([[1.0, 0.1, 3.0], [0.0, 1.0, -2.0], [0.0, 0.0, 1.0]])
    essential = ok(300, "essential", np.eye(3))
    essential.meta.update(rotation=R.tolist(), translation=t.tolist())
    store = matches_store(tmp_path / "m.h5", {("a.jpg", "b.jpg"): essential, ("a.jpg", "c.jpg"): ok(300, "fundamental", Fd),
                                              ("a.jpg", "d.jpg"): ok(300, "affine", A)})  # fmt: skip
    write_database(feats, store, tmp_path / "d.db", options=ExportOptions(colmap_verify=False))
    found = geometries(tmp_path / "d.db")
    name = {k: pycolmap.TwoViewGeometryConfiguration(g.config).name for k, g in found.items()}
    assert name == {(1, 2): "CALIBRATED", (1, 3): "UNCALIBRATED", (1, 4): "PLANAR_OR_PANORAMIC"}
    pose = found[(1, 2)].cam2_from_cam1
    assert np.allclose(pose.rotation.matrix(), R) and np.allclose(pose.translation, t)
    assert np.allclose(found[(1, 2)].E, np.eye(3))
    assert np.allclose(found[(1, 3)].F, model_to_colmap(Fd, "fundamental"))
    assert np.allclose(found[(1, 4)].H, model_to_colmap(A, "affine"))
