"""``delfi train delf-finetune / delf-keypoint / delg / vpr`` end to end on tiny data: the two DELF
stages chained with --init, a GLDv2 csv, a place-recognition tree with groups, refusals (exit 2, no
traceback), resume of a run by its own command only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("lightning")

from typer.testing import CliRunner  # noqa: E402

from delfi.cli.app import app  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = ["data.batch_size=4", "data.image_size=64", "data.resize=72", "data.num_workers=0", "val.image_size=64",
        "data.val_fraction=0.5", "net.global_dim=32", "net.local_dim=16", "trainer.val_every_n_steps=2",
        "trainer.checkpoint_every_n_steps=2", "trainer.max_steps=2", "data.gamma_scaling=null"]


def delfi(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def assert_clean_refusal(result, *words):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for word in words:
        assert word in result.output, result.output


@pytest.fixture(scope="module")
def landmarks(tmp_path_factory) -> Path:
    from tests.train.test_landmark_training import make_classes

    return make_classes(tmp_path_factory.mktemp("landmarks"))


def test_delf_two_stages_chained_with_init(landmarks, tmp_path):
    result = delfi("train", "delf-finetune", "--data", landmarks, "--out", tmp_path / "ft", "--no-progress", *TINY)
    assert result.exit_code == 0, result.output
    assert "val/accuracy" in result.output and "--preset delf" in result.output
    result = delfi("train", "delf-keypoint", "--data", landmarks, "--init", tmp_path / "ft" / "best.ckpt",
                   "--out", tmp_path / "kp", "--no-progress", *TINY)
    assert result.exit_code == 0, result.output
    assert "backbone incl. batch norm" in result.output and "tensors of the same name and shape" in result.output
    from delfi.models import create

    model = create("delf", weights=str(tmp_path / "kp" / "best.ckpt"), max_image_size=96, score_threshold=0.0)
    assert len(model.extract(landmarks / "landmark-0" / "0_0.png").keypoints) > 0


def test_delg_from_a_gldv2_clean_csv(landmarks, tmp_path):
    images = tmp_path / "gldv2"
    rows = ["landmark_id,images"]
    for c, folder in enumerate(sorted(landmarks.iterdir())):
        ids = []
        for k, png in enumerate(sorted(folder.glob("*.png"))):
            image_id = f"{c}{k}ab{c}{k:03d}"
            target = images / image_id[0] / image_id[1] / image_id[2] / f"{image_id}.jpg"
            target.parent.mkdir(parents=True, exist_ok=True)
            from PIL import Image

            Image.open(png).convert("RGB").save(target)
            ids.append(image_id)
        rows.append(f"{100 + c},{' '.join(ids + ['missing0000'])}")
    csv = tmp_path / "train_clean.csv"
    csv.write_text("\n".join(rows) + "\n")
    result = delfi("train", "delg", "--csv", csv, "--images", images, "--out", tmp_path / "run", "--no-progress", *TINY)
    assert result.exit_code == 0, result.output
    assert "missing0000" in result.output and "3 classes" in result.output


def test_vpr_groups_and_refusals(tmp_path):
    from delfi.datasets.synthetic_vpr import make_synthetic_vpr

    photos = [np.random.default_rng(i).integers(0, 255, (200, 200, 3), dtype=np.uint8) for i in range(3)]
    street = make_synthetic_vpr(tmp_path / "map", photos, places=6, train_per_place=4, size=64, val_places=3, test_places=3)
    out = tmp_path / "vpr"
    args = ["--root", street.root, "--no-progress", *TINY, "vpr.min_images_per_class=2", "vpr.steps_per_group=1"]
    result = delfi("train", "vpr", "--out", out, *args, "groups=2")
    assert result.exit_code == 0, result.output
    assert "2 groups of" in result.output and "val/recall@1" in result.output
    assert_clean_refusal(delfi("train", "vpr", "--only-local", "--out", tmp_path / "x", *args), "--init")
    assert_clean_refusal(delfi("train", "delg", "--resume", out / "last.ckpt"), "a 'vpr' run", "delfi train vpr")
    assert_clean_refusal(delfi("train", "r2d2", "--resume", out / "last.ckpt"), "a 'vpr' run")
    result = delfi("train", "vpr", "--resume", out / "last.ckpt", "--no-progress", "trainer.max_steps=3")
    assert result.exit_code == 0, result.output
    local = delfi("train", "vpr", "--only-local", "--init", out / "last.ckpt", "--out", tmp_path / "local", *args)
    assert local.exit_code == 0, local.output
    assert "backbone, GeM, whitening" in local.output and "val/reconstruction" in local.output


def test_refusals_name_the_problem(landmarks, tmp_path):
    assert_clean_refusal(delfi("train", "delg", "--out", tmp_path / "a"), "--data")
    assert_clean_refusal(delfi("train", "delg", "--data", tmp_path / "nowhere", "--out", tmp_path / "b"), "nowhere")
    assert_clean_refusal(delfi("train", "delg", "--data", landmarks, "--out", tmp_path / "c", "--preset", "vpr"), "'vpr' recipe")
    assert_clean_refusal(delfi("train", "r2d2", "--images", landmarks, "--out", tmp_path / "d", "--preset", "delg"), "delfi train delg")
    assert_clean_refusal(delfi("train", "delg", "--data", landmarks, "--out", tmp_path / "e", "loss.marginn=1"), "loss.margin")
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep")
    assert_clean_refusal(delfi("train", "delg", "--data", landmarks, "--out", user), "not a delfi run folder")
    assert (user / "notes.txt").read_text() == "keep"


def test_training_presets_are_listed_with_their_methods():
    result = CliRunner().invoke(app, ["train", "presets"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    lines = {line.split("│")[1].strip(): line.split("│")[2].strip() for line in result.output.splitlines()
             if line.startswith("│") and line.split("│")[1].strip()}
    assert lines["delf-keypoint-tf"] == "delf-keypoint" and lines["vpr"] == "vpr" and lines["r2d2-dice"] == "r2d2"


def test_separate_validation_folders_are_matched_by_class_name(landmarks, tmp_path):
    import shutil

    val = tmp_path / "val"
    for name in ("landmark-2", "landmark-0"):
        shutil.copytree(landmarks / name, val / name)
    shutil.copytree(landmarks / "landmark-1", val / "unknown-landmark")
    args = ["train", "delf-finetune", "--data", landmarks, "--val-data", val, "--out", tmp_path / "run", "--no-progress", *TINY]
    result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert "not among the training classes" in result.output and "8 images (from" in result.output
    from delfi.train.config import resolve_train_config
    from delfi.train.landmark_config import LandmarkTrainConfig
    from delfi.train.landmark_data import load_landmark_data

    config = resolve_train_config("delf-finetune", [f"data.folder={landmarks}", f"data.val_folder={val}"], schema=LandmarkTrainConfig)
    data = load_landmark_data(config)
    assert data.train_count == 12 and len(data.val) == 8 and sorted(set(data.val.labels.tolist())) == [0, 2]
