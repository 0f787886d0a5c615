"""delfi.demo: the photo list (licences, files), the scene set's ground truth, VLAD, the folder rules."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from delfi.demo import photos
from delfi.demo.photos import PHOTOS, MissingSkimageError, load_photo, photo_path
from delfi.demo.run import MARKER, DemoFolderError, check_folder, claim_folder
from delfi.demo.scene import build_scene_set, make_view
from delfi.demo.vlad import train_codebook, vlad, vlad_vectors

skimage = pytest.importorskip("skimage")


def test_every_photo_is_cc0_or_public_domain_by_its_own_docstring():
    import skimage.data

    assert len({p.name for p in PHOTOS}) == len(PHOTOS)
    for photo in PHOTOS:
        assert photo.licence in ("CC0", "public domain"), photo
        assert photo.role in ("scene", "distractor"), photo
        doc = inspect.getdoc(getattr(skimage.data, photo.name))
        assert photo.licence_text in doc, f"{photo.name}: licence sentence not in skimage.data.{photo.name}'s docstring"
        keyword = "CC0" if photo.licence == "CC0" else "public domain"
        assert keyword in photo.licence_text
        assert photo.filename in inspect.getsource(getattr(skimage.data, photo.name))


def test_every_photo_file_is_in_the_installed_package():
    for photo in PHOTOS:
        path = photo_path(photo)
        assert path.is_file() and path.parent.name == "data" and path.parent.parent.name == "skimage"
    rgb = load_photo(PHOTOS[1], 100)  # camera: grey -> RGB
    assert rgb.dtype == np.uint8 and rgb.shape[2] == 3 and max(rgb.shape[:2]) == 100


def test_missing_scikit_image_names_the_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "skimage", None)
    with pytest.raises(MissingSkimageError, match=r"delfi\[demo\]"):
        photos.data_dir()


def test_view_homography_maps_query_pixels_onto_the_view():
    query = np.zeros((120, 160, 3), np.uint8)
    y, x = np.mgrid[0:120, 0:160]
    for cx, cy in ((50, 40), (110, 80)):
        query[(x - cx) ** 2 + (y - cy) ** 2 <= 4] = 255
    for level in range(4):
        view, H = make_view(query, np.random.default_rng(level), level)
        for cx, cy in ((50, 40), (110, 80)):
            p = H @ [cx, cy, 1.0]
            u, v = p[:2] / p[2]
            if 3 <= u < 157 and 3 <= v < 117:
                patch = view[int(round(v)) - 1:int(round(v)) + 2, int(round(u)) - 1:int(round(u)) + 2].astype(int)
                assert patch.max() > 120, (level, cx, cy, u, v)


def test_scene_set_is_deterministic_and_complete(tmp_path):
    a = build_scene_set(tmp_path / "a", size=64, n_scenes=2, views=2, n_distractors=1, seed=3)
    b = build_scene_set(tmp_path / "b", size=64, n_scenes=2, views=2, n_distractors=1, seed=3)
    assert a.queries == ["query/astronaut.png", "query/camera.png"]
    assert a.database == ["db/astronaut-1.png", "db/astronaut-2.png", "db/camera-1.png", "db/camera-2.png", "db/brick.png"]
    assert a.positives["query/camera.png"] == ["db/camera-1.png", "db/camera-2.png"]
    for key, H in a.homographies.items():
        np.testing.assert_array_equal(H, b.homographies[key])
    for name in a.names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_vlad_vectors_are_unit_and_self_similar():
    rng = np.random.default_rng(0)
    descriptors = [rng.standard_normal((200, 16)).astype(np.float32) for _ in range(3)]
    centroids = train_codebook(descriptors, 8, seed=0)
    vectors = vlad_vectors(descriptors, centroids)
    assert vectors.shape == (3, 8 * 16)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    assert float(vectors[0] @ vlad(descriptors[0], centroids)) == pytest.approx(1.0, abs=1e-5)
    assert (vectors @ vectors.T)[0, 1:].max() < 0.9
    assert not vlad(np.zeros((0, 16), np.float32), centroids).any()


def test_claim_folder_rules(tmp_path):
    out = tmp_path / "demo"
    claim_folder(out)
    assert (out / MARKER).is_file() and (out / ".gitignore").read_text().strip().endswith("*")
    (out / "report.html").write_text("old")
    (out / "user-notes.txt").write_text("kept")
    claim_folder(out)  # a demo folder: its products go, other files stay
    assert not (out / "report.html").exists() and (out / "user-notes.txt").read_text() == "kept"
    empty = tmp_path / "empty"
    empty.mkdir()
    claim_folder(empty)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "x").write_text("x")
    with pytest.raises(DemoFolderError, match="not made by"):
        claim_folder(foreign)
    with pytest.raises(DemoFolderError, match="not made by"):
        check_folder(foreign)
    check_folder(tmp_path / "new")  # accepted, and nothing is made
    assert not (tmp_path / "new").exists() and sorted(p.name for p in foreign.iterdir()) == ["x"]


def test_a_rerun_removes_only_the_files_the_last_run_listed(tmp_path):
    from delfi.demo.run import _product_files, _write_marker

    out = tmp_path / "demo"
    claim_folder(out)
    (out / "maps").mkdir()
    (out / "maps" / "astronaut.png").write_bytes(b"demo's")
    (out / "images" / "db").mkdir(parents=True)
    (out / "images" / "db" / "a.png").write_bytes(b"demo's")
    _write_marker(out, _product_files(out))  # as a finished run does
    (out / "maps" / "mine.png").write_bytes(b"a user's")  # put there after the run
    claim_folder(out)
    assert not (out / "maps" / "astronaut.png").exists() and not (out / "images").exists()
    assert (out / "maps" / "mine.png").read_bytes() == b"a user's"
