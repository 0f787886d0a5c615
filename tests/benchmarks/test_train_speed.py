"""benchmarks/train_speed.py measures one tiny configuration in-process and reports every number
(not a timing assertion: the values only have to be positive and finite)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

pytest.importorskip("lightning")
pytest.importorskip("skimage")  # the synthetic landmark set is cut from scikit-image's photos

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "train_speed.py"


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("train_speed", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.usefixtures("one_torch_thread")
def test_one_tiny_configuration_reports_positive_numbers(tmp_path):
    bench = _load_benchmark()
    row = bench.measure("delg", 64, "float32", batch=2, steps=1, warmup=1, data_batches=2,
                        overrides=["net.global_dim=32", "net.local_dim=16"], work=tmp_path)  # fmt: skip
    assert (row["method"], row["size"], row["precision"], row["batch"]) == ("delg", 64, "float32", 2)
    for key in ("step_images_per_s", "step_seconds", "bare_images_per_s", "bare_seconds", "data_images_per_s",
                "data_images_per_s_0_workers", "data_first_batch_s", "train_images_per_s", "train_seconds_per_step",
                "train_vs_bare", "train_vs_step", "peak_rss_mib", "peak_rss_mib_train"):
        value = row[key]
        assert isinstance(value, float) and math.isfinite(value) and value > 0, (key, value)
    assert all(v > 0 for v in row["step_split"].values())
    assert row["step_images_per_s"] == pytest.approx(2 / row["step_seconds"])
    assert row["data_keeps_up"] == (row["data_images_per_s"] >= row["step_images_per_s"])
    assert isinstance(row["data_workers"], int) and row["data_workers"] >= 0
    assert row["peak_rss_mib_train"] >= row["peak_rss_mib"] and math.isfinite(row["loss"])
    assert row["classes"] == [bench.SYNTHETIC_CLASSES]


def test_command_line_parses_the_child_invocation():
    bench = _load_benchmark()
    args = bench._parser().parse_args(["--one", "vpr", "512", "bf16", "--batch=4", "--", "vpr.min_images_per_class=3"])
    assert args.one == ["vpr", "512", "bf16"] and args.batch == 4 and args.overrides == ["vpr.min_images_per_class=3"]
    quick = bench._parser().parse_args(["--quick"])
    bench._apply_quick(quick)
    assert (quick.sizes, quick.steps) == ("224", 1)
