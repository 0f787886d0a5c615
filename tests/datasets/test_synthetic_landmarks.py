"""Synthetic landmark classes: deterministic files, exact boxes and shares, safe writing, round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from delfi.datasets.landmarks import landmark_folders
from delfi.datasets.synthetic_landmarks import (MANIFEST, load_synthetic_landmarks, make_synthetic_landmarks,
                                                skimage_photos)

pytest.importorskip("skimage")


@pytest.fixture(scope="module")
def photos() -> tuple[list[Path], list[Path]]:
    return skimage_photos()


def files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_default_set_is_byte_identical_twice_and_lists_as_class_folders(tmp_path: Path, photos):
    a = make_synthetic_landmarks(tmp_path / "a", *photos)
    b = make_synthetic_landmarks(tmp_path / "b", *photos)
    fa, fb = files(tmp_path / "a"), files(tmp_path / "b")
    assert len(fa) == 8 * 12 + 1 and fa == fb
    assert a.boxes == b.boxes and a.object_share == b.object_share
    assert a.classes == [f"class-{c:02d}" for c in range(8)]
    assert sorted(p.name for p in (tmp_path / "a").iterdir() if p.is_dir()) == a.classes
    with Image.open(tmp_path / "a" / "class-03" / "0011.png") as image:
        assert image.size == (160, 160) and image.mode == "RGB"
    listed = landmark_folders(tmp_path / "a")
    assert listed.classes == a.classes and listed.class_counts().tolist() == [12] * 8 and listed.skipped == []
    assert load_synthetic_landmarks(tmp_path / "a") == a  # round trip
    for rel, (x0, y0, x1, y1) in a.boxes.items():  # box inside the image; the mask fills much of it
        assert 0 <= x0 < x1 <= 160 and 0 <= y0 < y1 <= 160
        covered = a.object_share[rel] * 160 * 160
        assert 0.45 * (x1 - x0) * (y1 - y0) < covered <= (x1 - x0) * (y1 - y0)
        side = a.settings["images"][rel]["side"]
        assert 0.3 * 160 - 0.5 <= side <= 0.55 * 160 + 0.5
        assert max(x1 - x0, y1 - y0) <= side * 1.42 + 1


def test_white_object_on_black_backgrounds_is_exactly_in_its_box(tmp_path: Path):
    white = np.full((200, 200, 3), 255, np.uint8)
    black = [np.zeros((120, 150, 3), np.uint8), np.zeros((90, 90), np.uint8)]
    s = make_synthetic_landmarks(tmp_path / "s", [white], black, classes=2, per_class=5, size=96, seed=4)
    for rel, (x0, y0, x1, y1) in s.boxes.items():
        pixels = np.asarray(Image.open(s.root / rel).convert("L"), np.float64) / 255
        rows, cols = np.flatnonzero(pixels.any(axis=1)), np.flatnonzero(pixels.any(axis=0))
        inside = np.zeros_like(pixels, bool)
        inside[int(y0) : int(y1), int(x0) : int(x1)] = True
        assert not pixels[~inside].any()  # nothing of the object outside its box
        assert abs(cols[0] - x0) <= 1 and abs(cols[-1] + 1 - x1) <= 1  # and the box is tight
        assert abs(rows[0] - y0) <= 1 and abs(rows[-1] + 1 - y1) <= 1
        level = min(1.0, 1 + s.settings["images"][rel]["brightness"])  # the jittered white
        alpha = pixels / level  # the mask on the image, to the 8-bit rounding
        covered = round(s.object_share[rel] * pixels.size)  # pixels of alpha >= 0.5
        assert (alpha >= 0.5 + 1 / 255).sum() <= covered <= (alpha >= 0.5 - 1 / 255).sum()
        assert covered > 300
        assert pixels.max() == pytest.approx(level, abs=1 / 255)
        # not a rectangle: the box corners are background
        assert pixels[int(y0), int(x0)] < 0.1 and pixels[int(y1) - 1, int(x1) - 1] < 0.1


def test_patches_of_one_photo_do_not_overlap_and_held_out_images_keep_the_classes(tmp_path: Path, photos):
    objects, backgrounds = photos
    train = make_synthetic_landmarks(tmp_path / "train", objects[:2], backgrounds, classes=5, per_class=2, size=64)
    patches = train.settings["objects"]
    assert [p["photo"] for p in patches] == [0, 1, 0, 1, 0]
    for photo in (0, 1):
        mine = [p for p in patches if p["photo"] == photo]
        for i, a in enumerate(mine):
            for b in mine[i + 1 :]:
                apart_x = a["x"] + a["side"] <= b["x"] or b["x"] + b["side"] <= a["x"]
                apart_y = a["y"] + a["side"] <= b["y"] or b["y"] + b["side"] <= a["y"]
                assert apart_x or apart_y
    held = make_synthetic_landmarks(tmp_path / "held", objects[:2], backgrounds, classes=5, per_class=2, size=64,
                                    start_index=2)
    assert held.settings["objects"] == patches  # the same classes
    assert sorted(held.boxes) == [f"class-{c:02d}/{i:04d}.png" for c in range(5) for i in (2, 3)]
    other_seed = make_synthetic_landmarks(tmp_path / "seed", objects[:2], backgrounds, classes=5, per_class=2,
                                          size=64, seed=1, object_seed=0)
    assert other_seed.settings["objects"] == patches
    assert files(tmp_path / "seed")["class-00/0000.png"] != files(tmp_path / "train")["class-00/0000.png"]
    moved = make_synthetic_landmarks(tmp_path / "moved", objects[:2], backgrounds, classes=5, per_class=2, size=64,
                                     seed=1)
    assert moved.settings["objects"] != patches  # object_seed defaults to seed


def test_refuses_used_folders_and_bad_settings(tmp_path: Path, photos):
    used = tmp_path / "used"
    used.mkdir()
    (used / "mine.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not empty"):
        make_synthetic_landmarks(used, *photos, classes=1, per_class=1, size=32)
    assert [p.name for p in used.iterdir()] == ["mine.txt"] and (used / "mine.txt").read_text() == "keep me"
    with pytest.raises(ValueError, match="not a folder"):
        make_synthetic_landmarks(used / "mine.txt", *photos, classes=1, per_class=1, size=32)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert len(make_synthetic_landmarks(empty, *photos, classes=1, per_class=1, size=32).boxes) == 1
    for bad in ({"classes": 0}, {"size": 8}, {"object_scale": (0.6, 0.4)}, {"object_scale": (0.9, 1.0)},
                {"max_rotation": -1.0}, {"start_index": -2}):
        with pytest.raises(ValueError):
            make_synthetic_landmarks(tmp_path / "bad", *photos, **{"classes": 2, "per_class": 1, "size": 32, **bad})
    assert not (tmp_path / "bad").exists()
    with pytest.raises(ValueError, match="too small"):
        make_synthetic_landmarks(tmp_path / "tiny", [np.zeros((40, 40, 3), np.uint8)], photos[1], classes=4)
    with pytest.raises(ValueError, match="manifest"):
        load_synthetic_landmarks(tmp_path)
    (tmp_path / "empty" / "class-00" / "0000.png").unlink()
    with pytest.raises(ValueError, match="missing"):
        load_synthetic_landmarks(tmp_path / "empty")
    assert (tmp_path / "empty" / MANIFEST).is_file()
