"""``delfi demo`` end to end with a random R2D2 checkpoint at tiny sizes (numbers need not be good:
the files, table rows and report must exist), its refusals and messages, and (when the shared data is
there) a small run with the official weights."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from delfi.io.features import FeatureStore
from delfi.io.rankings import read_ranking
from delfi.viz.report import is_delfi_report
from tests.cli.conftest import LOW, invoke

TINY = ["--size", "96", "--scenes", "2", "--views", "2", "--distractors", "2"]
ROWS = ["images", "features / image", "mAP before -> after reranking", "recall@1 before -> after reranking",
        "MMA@1 (known homographies)", "MMA@3 (known homographies)", "MMA@5 (known homographies)",
        "time: extract", "time: rerank", "time: total"]


def _numbers(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k not in ("seconds", "files")}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, checkpoint):
    """One tiny demo run, from a git repository as working directory with the default --out."""
    work = tmp_path_factory.mktemp("clone")
    subprocess.run(["git", "init", "-q", str(work)], check=True)
    (work / "README").write_text("a clone\n")
    subprocess.run(["git", "-C", str(work), "add", "README"], check=True)
    command = [sys.executable, "-m", "delfi", "demo", "--weights", str(checkpoint), *TINY, *LOW]
    done = subprocess.run(command, cwd=work, capture_output=True, text=True, timeout=120)
    return work, done


def test_demo_end_to_end_writes_every_product(tiny_run):
    work, done = tiny_run
    assert done.returncode == 0, done.stdout + done.stderr
    out = work / "delfi-demo"
    for row in ROWS:
        assert row in done.stdout, row
    for name in ("features.h5", "index", "rankings/global.txt", "rankings/reranked.txt", "matches.h5",
                 "summary.json", "report.html", ".delfi-demo"):
        assert (out / name).exists(), name
    assert len(list((out / "matches").glob("*.png"))) == 2  # one per query
    assert len(list((out / "maps").glob("*.png"))) == 1
    with FeatureStore(out / "features.h5") as store:
        assert store.names() == sorted(["query/astronaut.png", "query/camera.png", "db/astronaut-1.png",
                                        "db/astronaut-2.png", "db/camera-1.png", "db/camera-2.png",
                                        "db/brick.png", "db/grass.png"])
    reranked = read_ranking(out / "rankings" / "reranked.txt")
    assert reranked.queries == ["query/astronaut.png", "query/camera.png"] and reranked.inliers is not None
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["mma"]) == {"1", "3", "5"} and 0 <= summary["after_rerank"]["map"] <= 100
    page = (out / "report.html").read_text(encoding="utf-8")
    assert is_delfi_report(out / "report.html") and 'id="score-maps"' in page and "data:image/png;base64," in page
    assert "mAP before -&gt; after reranking" in page or "mAP before -> after reranking" in page


def test_demo_leaves_a_clone_clean_and_writes_only_its_folder(tiny_run):
    work, done = tiny_run
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in work.iterdir()) == [".git", "README", "delfi-demo"]
    status = subprocess.run(["git", "-C", str(work), "status", "--porcelain", "--untracked-files=all"],
                            capture_output=True, text=True, check=True).stdout
    assert status.strip() == "A  README", status


def test_demo_reruns_into_its_own_folder_with_the_same_numbers(tiny_run, checkpoint):
    work, first = tiny_run
    out = work / "delfi-demo"
    before = _numbers(json.loads((out / "summary.json").read_text()))
    (out / "rankings" / "global.txt").write_text("stale\n")
    result = invoke("demo", "--weights", checkpoint, "--out", out, *TINY, *LOW)
    assert result.exit_code == 0, result.output
    assert _numbers(json.loads((out / "summary.json").read_text())) == before  # deterministic for a seed
    assert "stale" not in (out / "rankings" / "global.txt").read_text()


def test_demo_refuses_a_folder_it_did_not_make(tmp_path, checkpoint):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    result = invoke("demo", "--weights", checkpoint, "--out", foreign, *TINY, *LOW)
    assert result.exit_code == 2
    assert "was not made by `delfi demo`" in result.output
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"] and (foreign / "notes.txt").read_text() == "keep me"
    afile = tmp_path / "afile"
    afile.write_text("x")
    result = invoke("demo", "--weights", checkpoint, "--out", afile, *TINY, *LOW)
    assert result.exit_code == 2 and "is a file" in result.output and afile.read_text() == "x"


def test_demo_images_below_min_size_are_refused_by_name(tmp_path, checkpoint):
    result = invoke("demo", "--weights", checkpoint, "--out", tmp_path / "demo", "--size", "48", "--scenes", "1",
                    "--views", "1", "--distractors", "0", "min_size=256")
    assert result.exit_code == 1, result.output
    assert "have no keypoints" in result.output and "min_size = 256" in result.output
    assert "unexpected error" not in result.output


def test_demo_without_scikit_image_says_what_to_install(tmp_path, checkpoint, monkeypatch):
    monkeypatch.setitem(sys.modules, "skimage", None)  # import skimage -> ImportError
    result = invoke("demo", "--weights", checkpoint, "--out", tmp_path / "demo", *TINY, *LOW)
    assert result.exit_code == 2
    assert "delfi[demo]" in result.output
    assert not (tmp_path / "demo").exists()


def test_demo_without_weights_runs_on_the_embedded_default_model(tmp_path):
    """What `make demo` does on a fresh machine (DELFI_HOME is empty in tests: nothing cached, no network)."""
    out = tmp_path / "demo"
    result = invoke("demo", "--out", out, "--size", "320", "--scenes", "3", "--views", "2", "--distractors", "3")
    assert result.exit_code == 0, result.output
    assert "delfi-lite" in result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["after_rerank"]["recall@1"] == 100.0 and summary["after_rerank"]["map"] >= 90.0
    assert summary["mma"]["3"] > 0.5


def test_demo_with_weights_not_cached_says_how_to_get_them(tmp_path):
    result = invoke("demo", "--weights", "r2d2-wasf-n16", "--preset", "r2d2", "--out", tmp_path / "demo")
    assert result.exit_code == 2
    assert "The demo needs weights" in result.output and "delfi weights download" in result.output
    assert not (tmp_path / "demo").exists()
    result = invoke("demo", "--weights", tmp_path / "missing.pt", "--out", tmp_path / "demo")
    assert result.exit_code == 2 and "missing.pt" in result.output


def test_demo_report_renders_in_chromium(tiny_run, tmp_path):
    binary = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
                   if shutil.which(n)), None)
    if binary is None:
        pytest.skip("no headless Chromium on PATH")
    work, _ = tiny_run
    page = work / "delfi-demo" / "report.html"
    done = subprocess.run([binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                           "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom",
                           page.resolve().as_uri()], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert 'data-rendered="2"' in done.stdout and 'id="score-maps"' in done.stdout


@pytest.mark.slow
def test_demo_with_the_official_weights_finds_every_scene(shared_data, tmp_path):
    weights = shared_data / "r2d2" / "models" / "r2d2_WASF_N16.pt"
    if not weights.is_file():
        pytest.skip(f"{weights} not found")
    out = tmp_path / "demo"
    result = invoke("demo", "--weights", weights, "--out", out, "--size", "160", "--scenes", "2", "--views", "1",
                    "--distractors", "1", "top_k=300", "min_size=64")
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["after_rerank"]["recall@1"] == 100.0
    assert summary["mma"]["3"] > 0.5


def test_demo_vlad_index_without_asmk(tmp_path, checkpoint):
    out = tmp_path / "demo"
    result = invoke("demo", "--weights", checkpoint, "--out", out, "--index", "vlad", "--size", "64", "--scenes", "1",
                    "--views", "1", "--distractors", "1", *LOW)
    assert result.exit_code == 0, result.output
    assert "vlad (" in result.output and (out / "index" / "vlad_codebook.npy").is_file()
    assert invoke("demo", "--out", tmp_path / "x", "--index", "bow").exit_code == 2
