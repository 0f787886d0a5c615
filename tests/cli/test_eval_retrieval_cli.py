"""`delfi eval revisitop` / `vpr` / `vpr-sweep` end to end with a random DELG model on tiny images.

Random weights rank at chance, so these tests check the wiring (extraction with query boxes, stores,
rankings, tables, results.json, the report), not accuracy; the metric itself is tested on the
synthetic scene of tests/eval/test_retrieval_runs.py and the real ground truth files.
"""

from __future__ import annotations

import importlib.util
import json
import pickle
from urllib.parse import quote

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("cv2")

from delfi.io.features import FeatureStore  # noqa: E402

from .conftest import invoke  # noqa: E402

TINY_DELG = ["max_image_size=96", "scales=[1.0]", "global_scales=[1.0]", "score_threshold=0", "top_k=40",
             "channels_last=false"]


def _photo(path, seed: int, size=(96, 80)) -> None:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
    Image.fromarray(base).resize(size, Image.BILINEAR).save(path)


@pytest.fixture
def oxford_root(tmp_path):
    root = tmp_path / "data" / "roxford5k"
    (root / "jpg").mkdir(parents=True)
    imlist = [f"db{i}" for i in range(5)]
    qimlist = ["query0", "query1"]
    for i, name in enumerate(imlist + qimlist):
        _photo(root / "jpg" / f"{name}.jpg", i)
    gnd = [{"bbx": [10.0, 8.0, 70.0, 60.0], "easy": [0], "hard": [1], "junk": [4]},
           {"bbx": [0.0, 0.0, 96.0, 80.0], "easy": [2, 3], "hard": [], "junk": []}]
    with open(root / "gnd_roxford5k.pkl", "wb") as fh:
        pickle.dump({"imlist": imlist, "qimlist": qimlist, "gnd": gnd}, fh)
    return tmp_path / "data"


def test_eval_revisitop_end_to_end(tmp_path, oxford_root):
    out = tmp_path / "res"
    result = invoke("eval", "revisitop", "--root", oxford_root, "--dataset", "roxford5k", "--preset", "delg",
                    "--out", out, "--rerank-k", 3, *TINY_DELG)
    assert result.exit_code == 0, result.output
    assert "mAP" in result.output and "medium" in result.output and "reranked" in result.output
    page = (out / "report.html").read_text()
    assert "query0" in page and "query1" in page and "positive" in page
    pictures = sorted((out / "matches").glob("*.png"))
    assert pictures and all(f'href="matches/{quote(p.name)}"' in page for p in pictures)
    saved = json.loads((out / "results.json").read_text())
    for key in ("before", "after"):
        assert set(saved[key]) == {"easy", "medium", "hard"}
        assert 0 <= saved[key]["medium"]["map"] <= 100
    assert saved["extraction"]["database"]["extracted"] == 5
    # queries were cropped to their boxes: every query keypoint lies inside its box (full-image pixels)
    with FeatureStore(out / "queries.h5") as store:
        kp = store["query0"].keypoints.numpy()
        assert len(kp) and kp[:, 0].min() >= 10 - 0.5 and kp[:, 0].max() <= 70 and kp[:, 1].max() <= 60
        assert store["query0"].global_descriptor is not None
    # a second run reuses the stores (nothing extracted again)
    result = invoke("eval", "revisitop", "--root", oxford_root, "--out", out, "--rerank-k", 0, "--no-report",
                    "--preset", "delg", *TINY_DELG)
    assert result.exit_code == 0, result.output
    assert json.loads((out / "results.json").read_text())["extraction"]["database"]["skipped"] == 5
    # the same stores through ASMK over the local descriptors (no model needed)
    if importlib.util.find_spec("asmk") is not None:
        result = invoke("eval", "revisitop", "--root", oxford_root, "--out", out, "--reuse-features", "--index", "asmk",
                        "--index-param", "codebook_size=8", "--rerank-k", 2, "--no-report")
        assert result.exit_code == 0, result.output
        saved = json.loads((out / "results.json").read_text())
        assert saved["settings"]["index"] == "asmk" and saved["settings"]["index_params"] == {"codebook_size": 8}
    result = invoke("eval", "revisitop", "--root", oxford_root, "--out", out, "--reuse-features", "--index", "lsh")
    assert result.exit_code == 2 and "--index" in result.output


def test_eval_revisitop_missing_dataset(tmp_path):
    result = invoke("eval", "revisitop", "--root", tmp_path, "--dataset", "roxford5k", "--preset", "delg",
                    "--out", tmp_path / "o", *TINY_DELG)
    assert result.exit_code == 2 and "gnd_roxford5k.pkl" in result.output


def test_eval_vpr_and_sweep(tmp_path):
    root = tmp_path / "sf_xs" / "test"
    for sub, coords in (("database", [(0, 0), (10, 0), (500, 0), (900, 0)]), ("queries", [(3, 0), (505, 0)])):
        (root / sub).mkdir(parents=True)
        for i, (e, n) in enumerate(coords):
            _photo(root / sub / f"@{e:.1f}@{n:.1f}@{i}@.jpg", hash((sub, i)) % 1000)
    out = tmp_path / "vpr"
    result = invoke("eval", "vpr", "--root", tmp_path / "sf_xs", "--out", out, "--rerank-k", 2, "--no-report",
                    "--preset", "vpr-delg", *TINY_DELG)
    assert result.exit_code == 0, result.output
    assert "R@1" in result.output and "first positive moved" in result.output
    saved = json.loads((out / "results.json").read_text())
    assert set(saved["recall_before"]) == {"1", "5", "10", "20"}
    assert saved["recall_before"]["5"] == 100.0  # 4 database images: every positive is in the top 5
    result = invoke("eval", "vpr-sweep", "--root", tmp_path / "sf_xs", "--out", out, "--k", 1, "--k", 2,
                    "--max-distance", 1.2, "--ransac-threshold", 20)
    assert result.exit_code == 0, result.output
    assert (out / "sweep.png").stat().st_size > 5000
    assert len(json.loads((out / "sweep.json").read_text())["rows"]) == 2


def test_eval_revisitop_goes_on_without_a_bad_image(tmp_path, oxford_root):
    (oxford_root / "roxford5k" / "jpg" / "db3.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "res"
    result = invoke("eval", "revisitop", "--root", oxford_root, "--out", out, "--preset", "delg", "--rerank-k", 2,
                    "--no-report", *TINY_DELG)
    assert result.exit_code == 1, result.output
    assert "db3" in result.output and "medium" in result.output  # reported, and the results are there
    saved = json.loads((out / "results.json").read_text())
    assert saved["missing"] == ["db3"] and saved["extraction"]["database"]["extracted"] == 4
    assert 0 <= saved["after"]["medium"]["map"] <= 100


def test_eval_retrieval_outputs_never_replace_foreign_files(tmp_path, oxford_root):
    out = tmp_path / "res"
    out.mkdir()
    (out / "results.json").write_text('{"my": "own notes"}')
    result = invoke("eval", "revisitop", "--root", oxford_root, "--out", out, "--preset", "delg", *TINY_DELG)
    assert result.exit_code == 2 and "not a delfi results file" in result.output
    assert (out / "results.json").read_text() == '{"my": "own notes"}'
    inside = invoke("eval", "revisitop", "--root", oxford_root, "--out", oxford_root / "roxford5k" / "res",
                    "--preset", "delg", *TINY_DELG)
    assert inside.exit_code == 2 and "inside the dataset folder" in inside.output
    assert not (oxford_root / "roxford5k" / "res").exists()
    # a sweep only writes into a folder of `eval vpr`
    sweep = invoke("eval", "vpr-sweep", "--root", tmp_path, "--out", out)
    assert sweep.exit_code == 2 and "not a folder written by `delfi eval vpr`" in sweep.output
    assert sorted(p.name for p in out.iterdir()) == ["results.json"]
