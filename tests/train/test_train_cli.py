"""``delfi train r2d2`` end to end on tiny data: runs, refusals (exit 2, no traceback), resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

pytest.importorskip("lightning")
pytest.importorskip("kornia")

from PIL import Image  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from delfi.cli.app import app  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = [
    "net.mchan=1", "net.dim=16", "data.batch_size=2", "data.crop_size=48", "data.min_size=64", "data.max_size=96",
    "data.num_workers=0", "loss.sampler.border=8", "val.pairs=2", "val.crop_size=48", "val.reliability_threshold=0",
    "val.repeatability_threshold=0", "trainer.val_every_n_steps=2", "trainer.checkpoint_every_n_steps=2",
]


def make_photos(folder: Path, count: int, size: int = 96, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        image = np.kron(rng.uniform(0, 255, (size // 8, size // 8, 3)), np.ones((8, 8, 1))) + rng.normal(0, 20, (size, size, 3))
        Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(folder / f"photo_{i:02d}.png")
    return folder


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    folder = make_photos(tmp_path_factory.mktemp("photos"), 6)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return folder


def delfi(*args) -> "CliRunner.invoke":
    return CliRunner().invoke(app, [str(a) for a in args])


def assert_clean_refusal(result, *words):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for word in words:
        assert word in result.output, result.output


def test_train_end_to_end_then_refuse_then_resume(photos, tmp_path):
    out = tmp_path / "runs" / "r2d2"
    result = delfi("train", "r2d2", "--images", photos, "--out", out, "--no-progress", *TINY, "trainer.max_steps=3")
    assert result.exit_code == 0, result.output
    assert "broken.jpg" in result.output  # the unreadable image is named
    for name in ("last.ckpt", "best.ckpt", "config.yaml", "delfi-run.json"):
        assert (out / name).is_file(), name
    assert list((out / "logs").glob("events.out.tfevents.*"))
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["trainer"]["max_steps"] == 3 and config["loss"]["repeatability"] == "cosim" and config["data"]["images"] == str(photos)
    ckpt = torch.load(out / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 3 and ckpt["delfi"]["provenance"]["command"][:3] == ["delfi", *ckpt["delfi"]["provenance"]["command"][1:3]]

    again = delfi("train", "r2d2", "--images", photos, "--out", out, "--no-progress", *TINY, "trainer.max_steps=3")
    assert_clean_refusal(again, "--resume", "--overwrite")
    assert torch.load(out / "last.ckpt", weights_only=True)["global_step"] == 3  # untouched

    resumed = delfi("train", "r2d2", "--resume", out / "last.ckpt", "--no-progress", "trainer.max_steps=4")
    assert resumed.exit_code == 0, resumed.output
    assert torch.load(out / "last.ckpt", weights_only=True)["global_step"] == 4
    assert yaml.safe_load((out / "config.yaml").read_text())["trainer"]["max_steps"] == 4

    (out / "mine.txt").write_text("keep")
    fresh = delfi("train", "r2d2", "--images", photos, "--out", out, "--overwrite", "--no-progress", *TINY, "trainer.max_steps=2")
    assert fresh.exit_code == 0, fresh.output
    assert torch.load(out / "last.ckpt", weights_only=True)["global_step"] == 2 and (out / "mine.txt").read_text() == "keep"


def test_preset_and_overrides(photos, tmp_path):
    out = tmp_path / "dice"
    result = delfi("train", "r2d2", "--images", photos, "--preset", "r2d2-dice", "--out", out, "--no-progress", *TINY,
                   "trainer.max_steps=1", "loss.reliability=hardnet", "val.pairs=0")
    assert result.exit_code == 0, result.output
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert (config["loss"]["repeatability"], config["loss"]["reliability"], config["net"]["arch"]) == ("dice", "hardnet", "fast_quad_l2net")
    assert (out / "last.ckpt").is_file() and not (out / "best.ckpt").exists()  # no validation: no best


def test_too_few_images_exit_2_before_anything(tmp_path):
    folder = make_photos(tmp_path / "two", 2)
    (folder / "bad.png").write_bytes(b"garbage")
    out = tmp_path / "run"
    result = delfi("train", "r2d2", "--images", folder, "--out", out, *TINY)
    assert_clean_refusal(result, "too few training images", "min_images")
    assert not out.exists()
    empty = delfi("train", "r2d2", "--images", tmp_path / "nowhere", "--out", out)
    assert_clean_refusal(empty, "nowhere", "not found")
    assert_clean_refusal(delfi("train", "r2d2", "--out", out), "--images")
    assert not out.exists()


def test_refusals(photos, tmp_path):
    user = tmp_path / "user"
    user.mkdir()
    (user / "thesis.tex").write_text("mine")
    refused = delfi("train", "r2d2", "--images", photos, "--out", user, *TINY)
    assert_clean_refusal(refused, "not a delfi run folder")
    assert "broken.jpg" not in refused.output  # refused before the images are read
    assert_clean_refusal(delfi("train", "r2d2", "--images", photos, "--out", user, "--overwrite", *TINY), "not a delfi run folder")
    assert (user / "thesis.tex").read_text() == "mine" and sorted(p.name for p in user.iterdir()) == ["thesis.tex"]
    out = tmp_path / "run"
    assert_clean_refusal(delfi("train", "r2d2", "--images", photos, "--out", out, "loss.repeatabilty=dice"),
                         "loss.repeatabilty", "loss.repeatability")
    assert_clean_refusal(delfi("train", "r2d2", "--images", photos, "--preset", "r2d2-dcie", "--out", out), "r2d2-dice")
    assert_clean_refusal(delfi("train", "r2d2", "--images", photos, "--out", out, "trainer.accelerator=tpu"), "cannot train")
    assert_clean_refusal(delfi("train", "r2d2", "--resume", tmp_path / "missing.ckpt"), "missing.ckpt")
    fake = tmp_path / "fake.ckpt"
    torch.save({"state_dict": {}}, fake)
    assert_clean_refusal(delfi("train", "r2d2", "--resume", fake), "not a delfi training checkpoint")
    assert_clean_refusal(delfi("train", "r2d2", "--images", photos), "--out")
    assert not out.exists()
