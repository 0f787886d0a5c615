"""`delfi extract` end to end in tmp_path: folders, bad images, resume, npz export, crash safety."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import delfi
from delfi.io.features import FeatureStore
from delfi.io.npz import read_r2d2_npz

from .conftest import LOW, invoke, make_images

def test_folder_with_a_bad_image_resume_and_npz(tmp_path, checkpoint):
    images = tmp_path / "photos"
    make_images(images / "sub", 2)
    (images / "broken.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    out = tmp_path / "feats.h5"

    first = invoke("extract", images, "--weights", checkpoint, "--out", out, "--export-npz", *LOW)
    assert first.exit_code == 1, first.output  # one failed item
    assert "broken.jpg" in first.output and "not an image" in first.output
    assert "2 extracted" in first.output

    with FeatureStore(out) as store:
        assert store.names() == ["sub/img00.png", "sub/img01.png"]
        assert store.attrs["model"] == "r2d2"
        assert store.attrs["weights_sha256"] == delfi.models.weights.sha256_file(checkpoint)
        assert store.attrs["config"]["top_k"] == 300
        features = store.get("sub/img00.png")
    assert len(features) == 300 and features.image_size == (96, 72)
    assert "top_k: 300" in (tmp_path / "feats.h5.config.yaml").read_text()
    exported = read_r2d2_npz(images / "sub" / "img00.png.r2d2")
    assert torch.equal(exported.keypoints, features.keypoints)
    assert torch.allclose(exported.descriptors, features.descriptors)

    second = invoke("extract", images, "--weights", checkpoint, "--out", out, "--export-npz", *LOW)
    assert second.exit_code == 1
    assert "0 extracted, 2 already done, 1 failed" in second.output


def test_resume_with_other_settings_is_refused(tmp_path, checkpoint):
    images = tmp_path / "photos"
    make_images(images, 1)
    out = tmp_path / "feats.h5"
    assert invoke("extract", images, "--weights", checkpoint, "--out", out, *LOW).exit_code == 0
    other = invoke("extract", images, "--weights", checkpoint, "--out", out, *LOW, "top_k=100")
    assert other.exit_code == 2
    assert "feats.h5" in other.output and "config" in other.output
    fresh = invoke("extract", images, "--weights", checkpoint, "--out", out, *LOW, "top_k=100", "--overwrite")
    assert fresh.exit_code == 0
    with FeatureStore(out) as store:
        assert len(store.get("img00.png")) == 100


def test_usage_errors_exit_2(tmp_path, checkpoint):
    images = tmp_path / "photos"
    make_images(images, 1)
    unknown_key = invoke("extract", images, "--weights", checkpoint, "no_such_key=1")
    assert unknown_key.exit_code == 2 and "no_such_key" in unknown_key.output
    bad_enum = invoke("extract", images, "--weights", checkpoint, "precision=float64")
    assert bad_enum.exit_code == 2 and "bfloat16" in bad_enum.output
    missing = invoke("extract", images, "--weights", "r2d2-wasf-n16")
    assert missing.exit_code == 2
    assert "r2d2_WASF_N16.pt" in missing.output and "delfi weights download" in missing.output
    no_input = invoke("extract", tmp_path / "nowhere", "--weights", checkpoint)
    assert no_input.exit_code == 2 and "nowhere" in no_input.output


def test_text_list_input_and_python_api(tmp_path, checkpoint):
    paths = make_images(tmp_path / "imgs", 2)
    listing = tmp_path / "list.txt"
    listing.write_text("# two images\nimgs/img00.png\n\nimgs/img01.png\n")
    out = tmp_path / "f.h5"
    assert invoke("extract", listing, "--weights", checkpoint, "--out", out, *LOW).exit_code == 0
    model = delfi.models.create("r2d2", weights=checkpoint, **dict(o.split("=") for o in LOW))
    direct = model.extract(paths[1])
    with delfi.io.FeatureStore(out) as store:
        stored = store["imgs/img01.png"]
    assert torch.equal(stored.keypoints, direct.keypoints)
    assert torch.allclose(stored.descriptors, direct.descriptors)


@pytest.mark.slow
@pytest.mark.one_thread  # its delfi processes run on one thread (OMP_NUM_THREADS=1)
def test_killed_run_loses_nothing(tmp_path, checkpoint):
    """SIGKILL `delfi extract` mid-run, run it again: every entry complete and equal to a clean run."""
    COUNT = 8  # noqa: N806 - three runs of a fresh interpreter each: a few images are enough
    images = tmp_path / "photos"
    make_images(images, COUNT, size=(256, 192))
    out = tmp_path / "killed.h5"
    command = [sys.executable, "-m", "delfi.cli", "extract", str(images), "--weights", str(checkpoint), "--out", str(out), *LOW]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    journal = Path(f"{out}.journal")
    deadline = time.time() + 120
    while time.time() < deadline and len(list(journal.glob("*.npz"))) < 3:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    survived = len(list(journal.glob("*.npz")))
    assert 3 <= survived < COUNT, "the run should have been killed part-way"

    rerun = subprocess.run(command, env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{COUNT - survived} extracted, {survived} already done, 0 failed" in rerun.stdout

    clean = tmp_path / "clean.h5"  # same process set-up (threads) as the killed run, so bit-identical
    clean_command = [*command[: command.index("--out") + 1], str(clean), *LOW]
    assert subprocess.run(clean_command, env=env, capture_output=True).returncode == 0
    with FeatureStore(out) as killed_store, FeatureStore(clean) as clean_store:
        assert killed_store.names() == clean_store.names() == [f"img{i:02d}.png" for i in range(COUNT)]
        for name in clean_store.names():
            a, b = killed_store[name], clean_store[name]
            assert torch.equal(a.keypoints, b.keypoints)
            assert torch.allclose(a.descriptors, b.descriptors)


# ---------------------------------------------------------------- user-trial faults


def test_images_outside_the_working_directory_are_extracted(tmp_path, checkpoint, monkeypatch):
    outside = make_images(tmp_path / "elsewhere", 2)
    work = tmp_path / "work"
    work.mkdir()
    (work / "list.txt").write_text(f"{outside[0]}\n../elsewhere/img01.png\n")
    monkeypatch.chdir(work)
    result = invoke("extract", "../elsewhere/img00.png", outside[1], "list.txt", "--weights", checkpoint, "--out", "f.h5", *LOW)
    assert result.exit_code == 0, result.output
    with FeatureStore(work / "f.h5") as store:
        assert store.names() == sorted(["@abs" + outside[0].as_posix(), "@abs" + outside[1].as_posix(), "@up/elsewhere/img01.png"])
    again = invoke("extract", "../elsewhere/img00.png", outside[1], "list.txt", "--weights", checkpoint, "--out", "f.h5", *LOW)
    assert again.exit_code == 0 and "0 extracted, 3 already done" in again.output  # stable names: resumes


def test_name_collisions_and_skipped_folder_items_are_reported(tmp_path, checkpoint, monkeypatch):
    monkeypatch.chdir(tmp_path)  # short paths: the tables are not wrapped
    make_images(tmp_path / "one", 1)
    make_images(tmp_path / "two", 1)
    (tmp_path / "one" / "dangling.jpg").symlink_to(tmp_path / "nowhere.jpg")
    out = Path("f.h5")
    result = invoke("extract", "one", "two", "--weights", checkpoint, "--out", out, *LOW)
    assert result.exit_code == 1, result.output  # the second img00.png: its name is taken
    assert "already used" in result.output and "1 extracted" in result.output
    assert "dangling.jpg" in result.output and "dangling symbolic link" in result.output
    only_skipped = invoke("extract", "one", "--weights", checkpoint, "--out", out, *LOW)
    assert only_skipped.exit_code == 0 and "skipped" in only_skipped.output


def test_override_typos_and_output_among_inputs_are_usage_errors(tmp_path, checkpoint):
    images = tmp_path / "photos"
    make_images(images, 1)
    typo = invoke("extract", images, "top_k", "2000", "--weights", checkpoint, "--out", tmp_path / "f.h5")
    assert typo.exit_code == 2 and "top_k: not an image, folder or list; to set a config key write top_k=2000" in typo.output
    assert not (tmp_path / "f.h5").exists()
    store = tmp_path / "feats.h5"
    assert invoke("extract", images, "--weights", checkpoint, "--out", store, *LOW).exit_code == 0
    before = store.read_bytes()
    (tmp_path / "list.txt").write_text(f"{images / 'img00.png'}\n{store}\n")
    for inputs in ([store], [tmp_path / "list.txt"]):
        refused = invoke("extract", *inputs, "--weights", checkpoint, "--out", store, *LOW)
        assert refused.exit_code == 2 and "also an input" in refused.output
    assert store.read_bytes() == before
    folder = invoke("extract", images, "--weights", checkpoint, "--out", tmp_path, *LOW)
    assert folder.exit_code == 2 and "is a folder" in folder.output
    bad_box = tmp_path / "boxes.txt"
    bad_box.write_bytes(b"\xff\xfe\x00")
    refused = invoke("extract", images, "--preset", "delf", "--bbox-file", bad_box, "--out", tmp_path / "d.h5")
    assert refused.exit_code == 2 and "boxes.txt" in refused.output and "UTF-8" in refused.output


def test_no_features_and_impossible_settings_are_said(tmp_path, checkpoint):
    images = tmp_path / "photos"
    make_images(images, 2)
    impossible = invoke("extract", images, "--weights", checkpoint, "max_size=256", "--out", tmp_path / "f.h5")
    assert impossible.exit_code == 2 and "max_size" in impossible.output and not (tmp_path / "f.h5").exists()
    empty = invoke("extract", images, "--weights", checkpoint, "--out", tmp_path / "e.h5", "reliability_threshold=1.0", *LOW[1:])
    assert empty.exit_code == 0, empty.output
    assert "2 images gave no features" in empty.output and "img00.png" in empty.output


def test_ctrl_c_saves_what_is_done_and_says_how_to_resume(tmp_path, checkpoint, monkeypatch):
    from delfi.models.r2d2 import R2D2

    images = tmp_path / "photos"
    make_images(images, 4)
    out = tmp_path / "f.h5"
    original, calls = R2D2.extract, []

    def interrupted(self, image, *args, **kwargs):
        calls.append(image)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(self, image, *args, **kwargs)

    monkeypatch.setattr(R2D2, "extract", interrupted)
    result = invoke("extract", images, "--weights", checkpoint, "--out", out, *LOW)
    assert result.exit_code == 130
    assert "interrupted: 2 images are saved" in result.output and "run the same command again to resume" in result.output
    monkeypatch.setattr(R2D2, "extract", original)
    rerun = invoke("extract", images, "--weights", checkpoint, "--out", out, *LOW)
    assert rerun.exit_code == 0 and "2 extracted, 2 already done" in rerun.output


def test_foreign_npz_files_are_kept(tmp_path, checkpoint):
    images = tmp_path / "photos"
    make_images(images, 2)
    theirs = images / "img00.png.r2d2"
    theirs.write_bytes(b"made by the official extractor")
    result = invoke("extract", images, "--weights", checkpoint, "--out", tmp_path / "f.h5", "--export-npz", *LOW)
    assert result.exit_code == 1 and "--overwrite" in result.output
    assert theirs.read_bytes() == b"made by the official extractor"
    assert (images / "img01.png.r2d2").is_file()
