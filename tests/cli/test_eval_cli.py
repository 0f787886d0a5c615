"""`delfi eval hpatches` and `delfi eval evd` wiring, on tiny synthetic data sets made here."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from delfi.datasets.synthetic import textured_image, warp_image

from .conftest import LOW, invoke


def save(image, path):
    Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype("uint8")).save(path)


def shift(dx: float, dy: float) -> np.ndarray:
    return np.array([[1, 0, dx], [0, 1, dy], [0, 0, 1]], float)


def test_eval_hpatches_caches_features_and_rescores(tmp_path, checkpoint):
    root = tmp_path / "hpatches"
    for seq in ("i_synth", "v_synth"):
        (root / seq).mkdir(parents=True)
        first = textured_image(96, 72, seed=len(seq))
        save(first, root / seq / "1.ppm")
        for k in range(2, 7):
            h = shift(k, -k) if seq.startswith("v") else np.eye(3)
            save(warp_image(first, h), root / seq / f"{k}.ppm")
            np.savetxt(root / seq / f"H_1_{k}", h)
    args = ["eval", "hpatches", "--root", root, "--weights", checkpoint, "--out", tmp_path / "res", "--method", "rand", *LOW]
    first_run = invoke(*args)
    assert first_run.exit_code == 0, first_run.output
    assert "MMA@3" in first_run.output and "HA@3px" in first_run.output
    run_dir = tmp_path / "res" / "hpatches" / "rand"
    results = json.loads((run_dir / "results.json").read_text())
    assert results["method"] == "rand" and results["benchmark"] == "hpatches"
    assert (run_dir / "hpatches.npy").is_file() and (run_dir / "mma.png").is_file()
    assert sum(results["status_counts"].values()) == 10
    assert "verification: " in first_run.output
    second_run = invoke(*args)
    assert second_run.exit_code == 0 and "cached" in second_run.output
    assert json.loads((run_dir / "results.json").read_text())["mma"] == results["mma"]


def test_eval_evd_runs_and_reports_per_pair(tmp_path, checkpoint):
    root = tmp_path / "evd"
    for folder in ("1", "2", "h"):
        (root / folder).mkdir(parents=True)
    first = textured_image(96, 72, seed=3)
    save(first, root / "1" / "toy.png")
    save(warp_image(first, shift(3, 2)), root / "2" / "toy.png")
    np.savetxt(root / "h" / "toy.txt", shift(3, 2))
    result = invoke("eval", "evd", "--root", root, "--weights", checkpoint, "--out", tmp_path / "res", "--method", "rand", "--no-pictures", *LOW)
    assert result.exit_code == 0, result.output
    assert "toy" in result.output
    assert (tmp_path / "res" / "evd" / "rand" / "results.json").is_file()


def test_eval_usage_errors(tmp_path, checkpoint):
    missing = invoke("eval", "hpatches", "--root", tmp_path / "none", "--weights", checkpoint, "--out", tmp_path / "r")
    assert missing.exit_code == 2
    assert "none" in missing.output
