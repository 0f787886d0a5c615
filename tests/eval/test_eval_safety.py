"""Evaluation runs never lose or replace data, never stop on one bad item, and say what went wrong.

Tiny synthetic HPatches / EVD folders are made per test (64 x 48 images, an extractor that projects
its keypoints through the ground truth read from the dataset), so each test can damage its own copy.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from delfi.eval.evd import run_evd
from delfi.eval.homography import MISSING_STATUS, pair_status, status_counts
from delfi.eval.hpatches_run import run_hpatches
from delfi.eval.results import (
    ResultsConflictError,
    check_outside,
    claim_results,
    claim_run_dir,
    mark_run_dir,
    results_benchmark,
    write_results,
)
from delfi.types import Features

W, H = 64, 48
N = 60


def _shift(dx: float, dy: float) -> np.ndarray:
    return np.array([[1, 0, dx], [0, 1, dy], [0, 0, 1]], float)


def _image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((H, W), 128, np.uint8)).save(path)


def _features(kp: np.ndarray) -> Features:
    desc = np.random.default_rng(0).standard_normal((N, 16)).astype(np.float32)
    return Features(
        keypoints=torch.tensor(kp, dtype=torch.float32),
        scores=torch.linspace(1, 0, N),
        descriptors=torch.from_numpy(desc / np.linalg.norm(desc, axis=1, keepdims=True)),
        image_size=(W, H),
    )


def _base_points() -> np.ndarray:
    return np.random.default_rng(1).uniform([8, 8], [W - 8, H - 8], (N, 2))


def _project(Hm: np.ndarray, p: np.ndarray) -> np.ndarray:
    q = np.c_[p, np.ones(len(p))] @ Hm.T
    return q[:, :2] / q[:, 2:]


class GroundTruthExtractor:
    """HPatches: image k's keypoints are image 1's through ``H_1_k``; EVD: image 2's through h/<name>.txt.

    ``fail_on`` names image paths whose extraction raises (a broken image)."""

    def __init__(self, fail_on: tuple[str, ...] = ()) -> None:
        self.fail_on, self.calls = fail_on, []

    def __call__(self, path: Path) -> Features:
        self.calls.append(path)
        if any(str(path).endswith(f) for f in self.fail_on):
            raise OSError(f"cannot identify image file {str(path)!r}")
        if path.parent.name in ("1", "2"):  # EVD
            Hm = np.eye(3) if path.parent.name == "1" else np.loadtxt(path.parent.parent / "h" / f"{path.stem}.txt")
        else:
            k = int(path.stem)
            Hm = np.eye(3) if k == 1 else np.loadtxt(path.parent / f"H_1_{k}")
        return _features(_project(Hm, _base_points()))


@pytest.fixture
def hpatches(tmp_path) -> Path:
    root = tmp_path / "hpatches"
    for n, seq in enumerate(("i_a", "v_b", "v_c")):
        for k in range(1, 7):
            _image(root / seq / f"{k}.ppm")
            if k > 1:
                np.savetxt(root / seq / f"H_1_{k}", np.eye(3) if seq.startswith("i") else _shift(k + n, -k))
    return root


@pytest.fixture
def evd(tmp_path) -> Path:
    root = tmp_path / "evd"
    for name, shift in (("p", (3, 2)), ("q", (-4, 1)), ("r", (2, -2))):
        _image(root / "1" / f"{name}.png")
        _image(root / "2" / f"{name}.png")
        (root / "h").mkdir(parents=True, exist_ok=True)
        np.savetxt(root / "h" / f"{name}.txt", _shift(*shift))
    return root


# ----------------------------------------------------------------------------- 1. one place per benchmark


def test_hpatches_and_evd_with_the_same_out_and_method_keep_both(hpatches, evd, tmp_path):
    out = tmp_path / "results"
    run_hpatches(hpatches, GroundTruthExtractor(), out, method="m", plot=False)
    run_evd(evd, GroundTruthExtractor(), out, method="m", pictures=False)
    hp = json.loads((out / "hpatches" / "m" / "results.json").read_text())
    ev = json.loads((out / "evd" / "m" / "results.json").read_text())
    assert hp["benchmark"] == "hpatches" and hp["n_pairs"] == 15
    assert ev["benchmark"] == "evd" and ev["n_pairs"] == 3
    assert (out / "hpatches" / "m" / "hpatches.npy").is_file()
    # the same benchmark again updates its own results
    again = run_hpatches(hpatches, None, out, method="m", plot=False)
    assert again.n_extracted == 0 and results_benchmark(out / "hpatches" / "m" / "results.json") == "hpatches"


@pytest.mark.parametrize("content", [b"my notes, not JSON", b"[1, 2, 3]", b'{"mma": {"3": 0.5}}', b"\xff\xfe"])
def test_a_results_json_delfi_did_not_write_is_never_replaced(hpatches, tmp_path, content):
    run_dir = tmp_path / "out" / "hpatches" / "m"
    run_dir.mkdir(parents=True)
    (run_dir / "results.json").write_bytes(content)
    extract = GroundTruthExtractor()
    with pytest.raises(ResultsConflictError, match=r"results.json: exists and is not a delfi results file"):
        run_hpatches(hpatches, extract, tmp_path / "out", method="m", plot=False)
    assert (run_dir / "results.json").read_bytes() == content
    assert extract.calls == [] and sorted(os.listdir(run_dir)) == ["results.json"]  # refused before any work


def test_another_benchmarks_results_are_not_replaced(evd, tmp_path):
    run_dir = tmp_path / "out" / "evd" / "m"
    run_dir.mkdir(parents=True)
    theirs = write_results(run_dir / "results.json", {"mma": {}}, "hpatches").read_bytes()
    with pytest.raises(ResultsConflictError, match="holds delfi's hpatches results, not evd"):
        run_evd(evd, GroundTruthExtractor(), tmp_path / "out", method="m", pictures=False)
    assert (run_dir / "results.json").read_bytes() == theirs


def test_products_without_our_results_are_not_replaced(hpatches, evd, tmp_path):
    run_dir = tmp_path / "out" / "hpatches" / "m"
    run_dir.mkdir(parents=True)
    (run_dir / "hpatches.npy").write_bytes(b"a published cache someone put here")
    with pytest.raises(ResultsConflictError, match="hpatches.npy: exists but"):
        run_hpatches(hpatches, GroundTruthExtractor(), tmp_path / "out", method="m", plot=False)
    assert (run_dir / "hpatches.npy").read_bytes() == b"a published cache someone put here"
    pictures = tmp_path / "out" / "evd" / "m" / "pairs"
    pictures.mkdir(parents=True)
    with pytest.raises(ResultsConflictError, match="pairs: exists but"):
        run_evd(evd, GroundTruthExtractor(), tmp_path / "out", method="m")


def test_claim_results_rules(tmp_path):
    path = tmp_path / "results.json"
    assert claim_results(path, "vpr") == path  # absent: fine
    write_results(path, {"recall_before": {}}, "vpr")
    assert claim_results(path, "vpr") == path  # ours, same benchmark: fine
    with pytest.raises(ResultsConflictError, match="vpr results, not revisitop"):
        claim_results(path, "revisitop")
    # results of earlier delfi versions (no 'benchmark' field) are recognised by their fields
    path.write_text(json.dumps({"dataset": "roxford5k", "before": {}, "after": None, "extraction": {}}))
    assert results_benchmark(path) == "revisitop"
    with pytest.raises(ResultsConflictError, match="is a folder"):
        claim_results(tmp_path, "vpr")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ResultsConflictError, match="is a file, not a results folder"):
        claim_run_dir(tmp_path / "file", "vpr")


def test_a_marked_run_folder_stays_claimable_after_an_interruption(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    mark_run_dir(run, "vpr")
    assert json.loads((run / "results.json").read_text())["complete"] is False
    (run / "ranking.txt").write_text("# delfi ranking: query db score [global_score inliers]\n")  # then interrupted
    assert claim_run_dir(run, "vpr", ("ranking.txt",)) == run  # a rerun may use the folder
    write_results(run / "results.json", {"recall_before": {}}, "vpr")
    mark_run_dir(run, "vpr")  # finished results are never replaced by the placeholder
    assert "complete" not in json.loads((run / "results.json").read_text())


def test_outputs_inside_the_dataset_are_refused(hpatches, evd, tmp_path):
    for out in (hpatches, hpatches / "v_b", hpatches / "results"):
        with pytest.raises(ResultsConflictError, match="inside the HPatches folder"):
            run_hpatches(hpatches, GroundTruthExtractor(), out, method="m", plot=False)
    with pytest.raises(ResultsConflictError, match="inside the EVD folder"):
        run_evd(evd, GroundTruthExtractor(), evd / "h", method="m", pictures=False)
    assert sorted(p.name for p in (evd / "h").iterdir()) == ["p.txt", "q.txt", "r.txt"]
    check_outside(tmp_path / "elsewhere", hpatches)  # a sibling is fine
    link = tmp_path / "link"
    link.symlink_to(hpatches)
    with pytest.raises(ResultsConflictError):
        check_outside(link / "x", hpatches)  # through a link too


# ----------------------------------------------------------------------------- 5. status from verification


class _Verified:
    def __init__(self, meta, model):
        self.meta, self.model = meta, model


@pytest.mark.parametrize(
    "meta, model, expected",
    [
        ({"status": "too few inliers"}, torch.eye(3), "too few inliers"),
        ({"status": "ok"}, torch.eye(3), "ok"),
        ({}, torch.eye(3), MISSING_STATUS),  # a missing status is not ok
        ({}, None, "estimation failed"),
        ({"status": ""}, torch.eye(3), MISSING_STATUS),
        (None, None, "estimation failed"),
    ],
)
def test_pair_status_never_invents_ok(meta, model, expected):
    assert pair_status(_Verified(meta, model)) == expected


def test_status_counts_order():
    assert list(status_counts(["too few inliers", "ok", "too few inliers", "estimation failed"]).items()) == [
        ("ok", 1), ("too few inliers", 2), ("estimation failed", 1)]


def test_statuses_come_from_the_verification_and_are_counted(evd, tmp_path, monkeypatch):
    verify_module = importlib.import_module("delfi.match.verify")  # the package re-exports the function

    real = verify_module.verify

    def weak(*args, **kwargs):  # what a model with too few inliers looks like: a model, not accepted
        result = real(*args, **kwargs)
        result.meta["status"] = "too few inliers"
        return result

    good = run_evd(evd, GroundTruthExtractor(), tmp_path / "a", method="m", pictures=False)
    assert [p.status for p in good.pairs] == ["ok"] * 3 and good.summary()["n_verified"] == 3
    monkeypatch.setattr(verify_module, "verify", weak)
    report = run_evd(evd, None, tmp_path / "a", method="m", pictures=False)
    assert [p.status for p in report.pairs] == ["too few inliers"] * 3
    assert all(p.success for p in report.pairs)  # solved is still the corner error's verdict
    data = json.loads((tmp_path / "a" / "evd" / "m" / "results.json").read_text())
    assert data["status_counts"] == {"too few inliers": 3} and data["n_verified"] == 0
    assert {p["status"] for p in data["pairs"]} == {"too few inliers"}
    row = report.table().columns[-1]._cells
    assert "ok" not in row[:3] and "3 too few inliers" in row[-1]


def test_hpatches_pairs_carry_the_verification_status(hpatches, tmp_path, monkeypatch):
    verify_module = importlib.import_module("delfi.match.verify")  # the package re-exports the function

    real = verify_module.verify

    def no_status(*args, **kwargs):
        result = real(*args, **kwargs)
        result.meta.pop("status", None)
        return result

    monkeypatch.setattr(verify_module, "verify", no_status)
    report = run_hpatches(hpatches, GroundTruthExtractor(), tmp_path / "o", method="m", plot=False)
    assert {p.status for p in report.pairs} == {MISSING_STATUS}
    summary = report.summary()
    assert summary["status_counts"] == {MISSING_STATUS: 15} and summary["n_verified"] == 0


# ----------------------------------------------------------------------------- 6. one bad item, the rest runs


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda seq: (seq / "H_1_4").write_text("1 0 0\n0 1 zero\n0 0 1\n"), "H_1_4: not a numeric matrix"),
        (lambda seq: (seq / "H_1_3").write_text("1 0 0\n0 1 0\n"), "H_1_3: expected a 3x3 matrix"),
        (lambda seq: (seq / "H_1_5").write_bytes(b"\x00\xff\xfe binary"), "H_1_5: not a text file"),
        (lambda seq: (seq / "H_1_6").unlink(), "H_1_6: homography file not found"),
        (lambda seq: (seq / "H_1_2").write_text("0 0 0\n0 0 0\n0 0 0\n"), "H_1_2: matrix is singular"),
        (lambda seq: (seq / "4.ppm").unlink(), "4.ppm: image not found"),
    ],
)
def test_a_bad_sequence_is_listed_and_the_rest_is_scored(hpatches, tmp_path, damage, reason):
    damage(hpatches / "v_b")
    report = run_hpatches(hpatches, GroundTruthExtractor(), tmp_path / "o", method="m", plot=False)
    assert [s for s, _ in report.failures] == ["v_b"] and reason in report.failures[0][1]
    assert str(hpatches / "v_b") in report.failures[0][1]  # names the file
    assert {p.seq for p in report.pairs} == {"i_a", "v_c"} and report.result.n_pairs == 10
    assert report.summary()["mma"][1] == pytest.approx(1.0)
    data = json.loads((tmp_path / "o" / "hpatches" / "m" / "results.json").read_text())
    assert data["failures"][0]["sequence"] == "v_b" and data["n_failed_sequences"] == 1


def test_an_image_whose_extraction_fails_leaves_only_its_sequence_out(hpatches, tmp_path):
    extract = GroundTruthExtractor(fail_on=("v_c/3.ppm",))
    report = run_hpatches(hpatches, extract, tmp_path / "o", method="m", plot=False)
    assert report.failures == [("v_c", f"{hpatches / 'v_c' / '3.ppm'}: extraction failed (OSError: "
                                       f"cannot identify image file {str(hpatches / 'v_c' / '3.ppm')!r})")]
    assert {p.seq for p in report.pairs} == {"i_a", "v_b"}
    # what was extracted is kept: a second run extracts only the failed image again
    again = GroundTruthExtractor()
    second = run_hpatches(hpatches, again, tmp_path / "o", method="m", plot=False)
    assert again.calls == [hpatches / "v_c" / "3.ppm"] and second.failures == [] and len(second.pairs) == 15


def test_every_sequence_bad_is_one_clear_error(hpatches, tmp_path):
    from delfi.datasets.hpatches import HPatchesError

    for seq in ("i_a", "v_b", "v_c"):
        (hpatches / seq / "H_1_2").write_text("garbled")
    with pytest.raises(HPatchesError, match=r"no usable sequence: i_a: .*H_1_2.*\(and 2 more\)"):
        run_hpatches(hpatches, GroundTruthExtractor(), tmp_path / "o", method="m", plot=False)


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda root: (root / "h" / "q.txt").unlink(), "q.txt: EVD homography of pair 'q' not found"),
        (lambda root: (root / "2" / "q.png").unlink(), "EVD image 2 of pair 'q' not found"),
        (lambda root: (root / "h" / "q.txt").write_text("1 2\n3 4\n"), "q.txt: expected a 3x3 matrix"),
        (lambda root: (root / "h" / "q.txt").write_bytes(b"\xff\x00"), "q.txt: not a text file"),
    ],
)
def test_a_bad_evd_pair_is_listed_and_the_rest_is_scored(evd, tmp_path, damage, reason):
    damage(evd)
    report = run_evd(evd, GroundTruthExtractor(), tmp_path / "o", method="m", pictures=False)
    assert [n for n, _ in report.failures] == ["q"] and reason in report.failures[0][1]
    assert [p.name for p in report.pairs] == ["p", "r"] and report.summary()["n_failed_pairs"] == 1
    data = json.loads((tmp_path / "o" / "evd" / "m" / "results.json").read_text())
    assert data["failures"] == [{"pair": "q", "reason": report.failures[0][1]}]


def test_an_evd_image_whose_extraction_fails_is_listed(evd, tmp_path):
    report = run_evd(evd, GroundTruthExtractor(fail_on=("2/r.png",)), tmp_path / "o", method="m", pictures=False)
    assert [n for n, _ in report.failures] == ["r"] and "extraction failed" in report.failures[0][1]
    assert [p.name for p in report.pairs] == ["p", "q"]


def test_a_copy_of_the_dataset_elsewhere_is_untouched(hpatches, tmp_path):
    before = {p: p.read_bytes() for p in hpatches.rglob("*") if p.is_file()}
    run_hpatches(hpatches, GroundTruthExtractor(), tmp_path / "o", method="m", plot=False)
    assert {p: p.read_bytes() for p in hpatches.rglob("*") if p.is_file()} == before
    shutil.rmtree(tmp_path / "o")
