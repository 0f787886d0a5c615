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


# ----------------------------------------------------------------- outputs never destroy a user's data
def small_store(path, names=("a.png", "b.png", "c.png"), n=30, dim=16):
    import numpy as np

    from delfi.types import Features

    rng = np.random.default_rng(0)
    with FeatureStore(path, "w", attrs={"model": "t", "weights_sha256": "none", "config": {}}) as store:
        for name in names:
            kp = torch.from_numpy(rng.uniform(0, 100, (n, 2)).astype("float32"))
            desc = torch.nn.functional.normalize(torch.randn(n, dim), dim=1)
            store.put(name, Features(kp, torch.ones(n), desc, image_size=(100, 100)))
    return path


def test_match_refuses_an_output_that_is_an_input_or_not_a_match_store(tmp_path):
    feats, pairs = small_store(tmp_path / "f.h5"), tmp_path / "p.txt"
    other = small_store(tmp_path / "other.h5")
    notes = tmp_path / "notes.txt"
    pairs.write_text("a.png b.png\n")
    notes.write_text("my notes\n")
    before = {p: p.read_bytes() for p in (feats, pairs, other, notes)}
    base = ["match", "--features", feats, "--pairs", pairs, "--geometry", "none"]
    for out, extra in [(feats, ["--overwrite"]), (tmp_path / "." / "f.h5", []), (pairs, ["--overwrite"]),
                       (notes, []), (notes, ["--overwrite"]), (other, ["--overwrite"]), (tmp_path, [])]:
        result = invoke(*base, "--out", out, *extra)
        assert result.exit_code == 2, (out, result.output)
        assert "Traceback" not in result.output and str(out.name) in result.output
    assert {p: p.read_bytes() for p in before} == before
    assert "not a delfi match store" in invoke(*base, "--out", notes, "--overwrite").output
    result = invoke(*base, "--features-db", other, "--out", other)
    assert result.exit_code == 2 and "also an input" in result.output


def test_match_overwrites_only_its_own_store(tmp_path):
    feats, pairs, out = small_store(tmp_path / "f.h5"), tmp_path / "p.txt", tmp_path / "sub" / "m.h5"
    pairs.write_text("a.png b.png\n")
    assert invoke("match", "--features", feats, "--pairs", pairs, "--out", out, "--geometry", "none").exit_code == 0
    again = invoke("match", "--features", feats, "--pairs", pairs, "--out", out, "--geometry", "none", "--overwrite")
    assert again.exit_code == 0 and "1 matched" in again.output


def test_bad_entries_and_many_missing_pairs_are_summarised(tmp_path):
    import h5py

    feats, pairs, out = small_store(tmp_path / "f.h5"), tmp_path / "p.txt", tmp_path / "m.h5"
    with h5py.File(feats, "r+") as f:
        del f["b.png/descriptors"]
    lines = ["a.png b.png", "a.png c.png"] + [f"ghost{i}.png c.png" for i in range(300)]
    pairs.write_text("\n".join(lines) + "\n")
    result = invoke("match", "--features", feats, "--pairs", pairs, "--out", out, "--min-inliers", "20")
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and "1 matched" in result.output and "301 failed" in result.output
    assert "'b.png'" in result.output and "descriptors" in result.output  # the entry and what is wrong
    assert len(result.output.splitlines()) < 60  # 10 rows shown, not 301
    listing = (tmp_path / "m.h5.failures.tsv").read_text().splitlines()
    assert len(listing) == 302 and listing[0].startswith("#") and "ghost299.png" in listing[-1]
    with MatchStore(out) as store:
        assert store.pairs() == [("a.png", "c.png")] and store.get("a.png", "c.png").meta["min_inliers"] == 20


def test_two_image_plot_must_not_be_an_input(tmp_path):
    folder = make_pair_folder(tmp_path / "imgs")
    before = (folder / "a.png").read_bytes()
    for plot in (folder / "a.png", tmp_path / "m.txt"):
        result = invoke("match", folder / "a.png", folder / "b.png", "--plot", plot)
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert (folder / "a.png").read_bytes() == before and not (tmp_path / "m.txt").exists()


def test_pairs_outputs_are_checked(tmp_path):
    feats = small_store(tmp_path / "f.h5")
    listing, ranking, notes = tmp_path / "list.txt", tmp_path / "r.txt", tmp_path / "notes.txt"
    listing.write_text("a.png b.png c.png\n")
    ranking.write_text("a.png b.png 0.5\n")
    notes.write_text("dear diary, today I matched images\n")
    before = {p: p.read_bytes() for p in (feats, listing, ranking, notes)}
    for args in (["from-list", listing, "--out", listing], ["from-ranking", "--ranking", ranking, "--out", ranking],
                 ["exhaustive", "--features", feats, "--out", feats], ["from-list", listing, "--out", notes],
                 ["exhaustive", "--features", feats, "--out", tmp_path], ["from-list", listing, "--out", feats]):
        result = invoke("pairs", *args)
        assert result.exit_code == 2 and "Traceback" not in result.output, (args, result.output)
    assert {p: p.read_bytes() for p in before} == before
    made = invoke("pairs", "from-list", listing, "--out", tmp_path / "new" / "p.txt")
    assert made.exit_code == 0 and read_pairs(tmp_path / "new" / "p.txt") == [("a.png", "b.png"), ("a.png", "c.png")]
    assert invoke("pairs", "exhaustive", "--features", feats, "--out", tmp_path / "new" / "p.txt").exit_code == 0


def test_pairs_input_messages_name_file_and_line(tmp_path):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("a.png b.png\nc\xe9.png d.png\n".encode("latin-1"))
    result = invoke("pairs", "from-list", bad, "--out", tmp_path / "p.txt")
    assert result.exit_code == 2 and f"{bad}:2:" in result.output and "UTF-8" in result.output
    ranking = tmp_path / "r.txt"
    ranking.write_text("q.png d.png 0.9\nq.png d2.png\n")
    result = invoke("pairs", "from-ranking", "--ranking", ranking, "--out", tmp_path / "p.txt")
    assert result.exit_code == 2 and f"{ranking}:2:" in result.output
    result = invoke("pairs", "from-list", tmp_path / "nowhere.txt", "--out", tmp_path / "p.txt")
    assert result.exit_code == 2 and "nowhere.txt" in result.output and "Traceback" not in result.output
    feats = small_store(tmp_path / "f.h5")
    result = invoke("match", "--features", feats, "--pairs", bad, "--out", tmp_path / "m.h5")
    assert result.exit_code == 2 and f"{bad}:2:" in result.output


def test_viz_messages_name_the_entry_and_the_image_looked_for(tmp_path):
    import h5py

    feats, pairs, matches = small_store(tmp_path / "f.h5"), tmp_path / "p.txt", tmp_path / "m.h5"
    pairs.write_text("a.png b.png\n")
    assert invoke("match", "--features", feats, "--pairs", pairs, "--out", matches).exit_code == 0
    result = invoke("viz", "matches", "--features", feats, "--matches", matches, "--pair", "a.png b.png",
                    "--images", tmp_path / "photos", "--out", tmp_path / "v.png")  # fmt: skip
    assert result.exit_code == 2 and "Traceback" not in result.output
    text = " ".join(result.output.split())
    assert "a.png" in text and str(tmp_path / "photos") in text and "--images" in text
    result = invoke("viz", "matches", "--features", feats, "--matches", matches, "--pair", "a.png b.png",
                    "--out", matches)  # fmt: skip
    assert result.exit_code == 2 and "also an input" in result.output
    with h5py.File(feats, "r+") as f:
        del f["c.png/descriptors"]
    result = invoke("viz", "keypoints", "--features", feats, "--name", "c.png", "--out", tmp_path / "k.png")
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "'c.png'" in text and str(feats) in text and "descriptors" in text
    result = invoke("viz", "keypoints", "--features", feats, "--name", "zz.png", "--out", tmp_path / "k.png")
    assert result.exit_code == 2 and "'zz.png'" in result.output
