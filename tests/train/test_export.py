"""``delfi train export``: a training checkpoint becomes a small, byte-reproducible weights file."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

pytest.importorskip("lightning")
pytest.importorskip("kornia")

from tests.train.test_train_cli import TINY, delfi, make_photos  # noqa: E402

from delfi.models.checkpoints import load_checkpoint  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("export")
    photos = make_photos(root / "photos", 4)
    out = root / "run"
    result = delfi("train", "r2d2", "--images", photos, "--out", out, "--no-progress", *TINY, "trainer.max_steps=2")
    assert result.exit_code == 0, result.output
    return out


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_export_keeps_the_network_and_its_provenance_only(run, tmp_path):
    checkpoint = run / "last.ckpt"
    out = tmp_path / "model.pt"
    result = delfi("train", "export", checkpoint, "--out", out)
    assert result.exit_code == 0, result.output
    assert "sha256" in result.output and sha256(out) in result.output.replace("\n", "")
    exported, trained = load_checkpoint(out), load_checkpoint(checkpoint)
    assert exported.kind == "delfi" and trained.kind == "lightning"
    assert exported.config["mchan"] == 1 and exported.config["dim"] == 16
    assert exported.provenance["steps"] == 2 and exported.provenance["seed"] == trained.provenance["seed"]
    assert exported.state_dict.keys() == trained.state_dict.keys()
    for key, tensor in trained.state_dict.items():
        assert torch.equal(exported.state_dict[key], tensor), key
    assert out.stat().st_size < checkpoint.stat().st_size / 2  # no optimiser state, no loops


def test_export_is_byte_reproducible_and_loads_for_extraction(run, tmp_path):
    first, second = tmp_path / "a.pt", tmp_path / "b.pt"
    for out in (first, second):
        assert delfi("train", "export", run / "last.ckpt", "--out", out).exit_code == 0
    assert sha256(first) == sha256(second)
    import delfi as package

    model = package.models.create("r2d2", weights=first)
    assert model.network.architecture() == {"arch": "quad_l2net", "mchan": 1, "dim": 16}


def test_export_refuses_to_replace_its_input_or_a_file_it_did_not_write(run, tmp_path):
    checkpoint = run / "last.ckpt"
    before = sha256(checkpoint)
    same = delfi("train", "export", checkpoint, "--out", checkpoint, "--overwrite")
    assert same.exit_code == 2 and "Traceback" not in same.output
    assert sha256(checkpoint) == before
    foreign = tmp_path / "notes.pt"
    foreign.write_bytes(b"my own file")
    for extra in ([], ["--overwrite"]):
        result = delfi("train", "export", checkpoint, "--out", foreign, *extra)
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        assert foreign.read_bytes() == b"my own file"
    missing = delfi("train", "export", tmp_path / "nope.ckpt", "--out", tmp_path / "x.pt")
    assert missing.exit_code == 2 and "nope.ckpt" in missing.output
    again = tmp_path / "again.pt"
    assert delfi("train", "export", checkpoint, "--out", again).exit_code == 0
    refused = delfi("train", "export", checkpoint, "--out", again)
    assert refused.exit_code == 2 and "--overwrite" in refused.output
    assert delfi("train", "export", checkpoint, "--out", again, "--overwrite").exit_code == 0


def test_export_to_a_folder_is_refused_as_a_folder(run, tmp_path):
    result = delfi("train", "export", run / "last.ckpt", "--out", tmp_path)
    assert result.exit_code == 2 and "is a folder" in result.output, result.output
