"""`delfi match`, `delfi pairs` and `delfi viz` end to end in tmp_path on a synthetic homography pair."""

from __future__ import annotations

import torch
from PIL import Image

from delfi.datasets.synthetic import random_homography, textured_image, warp_image
from delfi.io.features import FeatureStore
from delfi.io.matches import MatchStore
from delfi.io.pairs import read_pairs

from .conftest import LOW, invoke


def save(image: torch.Tensor, path):
    Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype("uint8")).save(path)
    return path


def make_pair_folder(folder):
    folder.mkdir(parents=True, exist_ok=True)
    first = textured_image(160, 120, seed=4)
    save(first, folder / "a.png")
    save(warp_image(first, random_homography(160, 120, seed=5, strength=0.05)), folder / "b.png")
    save(textured_image(160, 120, seed=9), folder / "c.png")
    return folder


def test_two_images_with_a_picture(tmp_path, checkpoint):
    folder = make_pair_folder(tmp_path / "imgs")
    picture = tmp_path / "m.png"
    result = invoke("match", folder / "a.png", folder / "b.png", "--weights", checkpoint, "--plot", picture, *LOW)
    assert result.exit_code == 0, result.output
    assert "homography inliers" in result.output and "matches" in result.output
    with Image.open(picture) as rendered:
        assert rendered.width > 300


def test_pairs_store_viz_pipeline(tmp_path, checkpoint):
    folder = make_pair_folder(tmp_path / "imgs")
    feats, pairs, matches = tmp_path / "f.h5", tmp_path / "pairs.txt", tmp_path / "m.h5"
    assert invoke("extract", folder, "--weights", checkpoint, "--out", feats, *LOW).exit_code == 0
    made = invoke("pairs", "exhaustive", "--features", feats, "--out", pairs)
    assert made.exit_code == 0, made.output
    assert read_pairs(pairs) == [("a.png", "b.png"), ("a.png", "c.png"), ("b.png", "c.png")]

    run = invoke("match", "--features", feats, "--pairs", pairs, "--out", matches, "--geometry", "fundamental")
    assert run.exit_code == 0, run.output
    assert "3 matched" in run.output
    with MatchStore(matches) as store, FeatureStore(feats) as features:
        assert store.pairs() == read_pairs(pairs)
        found = store.get("a.png", "b.png")
        assert found.kind == "fundamental" and found.inliers is not None
        assert int(found.indices[:, 0].max()) < len(features["a.png"])
    again = invoke("match", "--features", feats, "--pairs", pairs, "--out", matches, "--geometry", "fundamental")
    assert "0 matched, 3 already done" in again.output

    picture = tmp_path / "pair.png"
    drawn = invoke("viz", "matches", "--features", feats, "--matches", matches, "--pair", "b.png a.png",
                   "--images", folder, "--out", picture)  # fmt: skip
    assert drawn.exit_code == 0, drawn.output  # the reversed pair is found and flipped
    assert picture.is_file()
    keypoints = invoke("viz", "keypoints", "--features", feats, "--name", "a.png", "--images", folder, "--out", tmp_path / "k.png")
    assert keypoints.exit_code == 0 and (tmp_path / "k.png").is_file()


def test_missing_features_are_reported_and_the_run_goes_on(tmp_path, checkpoint):
    folder = make_pair_folder(tmp_path / "imgs")
    feats, pairs = tmp_path / "f.h5", tmp_path / "pairs.txt"
    assert invoke("extract", folder, "--weights", checkpoint, "--out", feats, *LOW).exit_code == 0
    pairs.write_text("a.png b.png\na.png nowhere.png\n")
    result = invoke("match", "--features", feats, "--pairs", pairs, "--out", tmp_path / "m.h5", "--geometry", "none")
    assert result.exit_code == 1
    assert "nowhere.png" in result.output and "1 matched" in result.output


def test_usage_errors(tmp_path):
    assert invoke("match", "--geometry", "sphere", "x", "y").exit_code == 2
    assert invoke("match", tmp_path / "only_one.png").exit_code == 2
    assert invoke("match", "--features", tmp_path / "f.h5").exit_code == 2
