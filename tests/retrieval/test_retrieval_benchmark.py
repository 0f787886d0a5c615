"""benchmarks/retrieval_speed.py runs in quick mode and prints the expected JSON."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "retrieval_speed.py"


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("retrieval_speed", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_benchmark_prints_search_and_rerank(capsys):
    faiss = pytest.importorskip("faiss")
    threads = faiss.omp_get_max_threads()
    bench = _load_benchmark()
    try:
        report = bench.main(["--quick", "--dim", "64", "--m", "16", "--queries", "50", "--sweep", "4,16",
                             "--skip-rerank"])  # fmt: skip
    finally:
        faiss.omp_set_num_threads(threads)
    assert json.loads(capsys.readouterr().out) == report
    assert set(report) >= {"search", "rerank"} and report["rerank"] is None
    search = report["search"]
    assert search["n"] == 50_000 and search["dim"] == 64 and search["k"] == 100
    ivf = search["ivfpq"]
    for entry in [ivf, *search["ivfpq_sweep"]]:
        assert 0.0 <= entry["recall@100"] <= 1.0 and entry["ms_per_query"] > 0
    assert ivf["train_s"] > 0 and ivf["add_s"] > 0 and ivf["memory_bytes"] > 0
    assert search["exact"]["memory_bytes"] == 50_000 * 64 * 4
    assert [e["nprobe"] for e in search["ivfpq_sweep"]] == [4, 16]


def test_synthetic_data_is_normalised_and_seeded():
    bench = _load_benchmark()
    world = bench.synthetic_world(32, 10, seed=0)
    a, b = bench.sample(world, 100, seed=1, chunk=30), bench.sample(world, 100, seed=1)
    assert a.shape == (100, 32) and a.dtype.name == "float32"
    assert abs(float((a**2).sum(1).mean()) - 1) < 1e-5
    assert (a == bench.sample(world, 100, seed=1, chunk=30)).all() and not (a == bench.sample(world, 100, seed=2)).all()
    np.testing.assert_allclose(a, b, atol=1e-6)  # chunking does not change the data (up to BLAS rounding)


def test_rerank_benchmark_reports_seconds_per_query(capsys):
    pytest.importorskip("cv2")
    bench = _load_benchmark()
    report = bench.main(["--skip-search", "--rerank-k", "6", "--features", "200", "--rerank-queries", "2",
                         "--workers", "2"])  # fmt: skip
    rerank = report["rerank"]
    assert rerank["top_k"] == 6 and rerank["queries"] == 2
    assert rerank["seconds_per_query_workers_1"] > 0 and rerank["seconds_per_query_workers_2"] > 0
    assert rerank["mean_inliers_sharing"] > 40  # the sharing candidates are verified (about 80 true matches)
