"""`recipes/default_model/train.py` end to end at a tiny size: both stages, the export, and the same
file twice (the recipe's promise that retraining gives the recorded file, at a size a test affords)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lightning")
pytest.importorskip("skimage")

REPO = Path(__file__).resolve().parents[2]
TINY = ["trainer.max_steps=2", "data.crop_size=64", "data.batch_size=2", "data.max_size=256", "data.num_workers=0",
        "val.pairs=0"]


def run_recipe(out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "recipes" / "default_model" / "train.py"), "--out", str(out), *TINY],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
@pytest.mark.one_thread  # compares two runs of the recipe with each other, made with the same threads
def test_the_recipe_trains_both_stages_and_gives_the_same_file_twice(tmp_path):
    from delfi.models.checkpoints import load_checkpoint
    from delfi.models.weights import DEFAULT_WEIGHTS, resolve_weights

    files = []
    for name in ("a", "b"):
        done = run_recipe(tmp_path / name)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        weights = tmp_path / name / "delfi-lite.pt"
        digest = hashlib.sha256(weights.read_bytes()).hexdigest()
        assert digest in done.stdout
        files.append(weights)
    assert files[0].read_bytes() == files[1].read_bytes()
    made, shipped = load_checkpoint(files[0]), load_checkpoint(resolve_weights(DEFAULT_WEIGHTS)[0])
    assert made.config == shipped.config and made.provenance.keys() == shipped.provenance.keys()
    assert [s["preset"] for s in made.provenance["stages"]] == ["delfi-lite", "delfi-lite-reliability"]
    assert [s["steps"] for s in made.provenance["stages"]] == [2, 2]
    assert made.provenance["train_config"]["net"]["init_from"] == "RUN/stage1/last.ckpt"
    refused = run_recipe(tmp_path / "a")  # not an empty folder: the earlier run is not touched
    assert refused.returncode == 2 and "new or empty folder" in refused.stderr
    assert files[0].read_bytes() == files[1].read_bytes()
