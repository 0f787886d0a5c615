"""The bad-input corpus: every command fed broken, hostile or mistaken input, end to end.

Each case builds its input in a fresh folder, runs one command and checks the invariants that hold
for every bad input, whatever the command:

- no traceback and no "unexpected error" (the guard's last resort) reaches the user;
- the exit code says what happened (1: some items failed and the rest was done; 2: nothing done);
- the message names the file (or entry) at fault;
- no file that existed before the command is changed or deleted, except the outputs the case names
  as delfi's own (a store being resumed), and those stay readable.

The cases are grouped by the fault classes of the outside trial; the per-module tests check the
details of each fix.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import h5py
import numpy as np
import pytest
from PIL import Image

from .conftest import LOW, invoke, make_images

pytest.importorskip("cv2")


@dataclass
class Case:
    """One command run on bad input and what must hold afterwards."""

    args: list
    codes: tuple[int, ...]  # acceptable exit codes
    mentions: tuple[str, ...] = ()  # substrings the output must contain (file names, reasons)
    may_change: tuple[str, ...] = ()  # files (relative to the case folder) delfi may update
    check: Callable[[Path], None] | None = None  # extra assertions on the folder afterwards
    absent: tuple[str, ...] = field(default=("Traceback", "unexpected error"))


def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (relative posix path -> hex digest)."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            out[path.relative_to(root).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def base(tmp_path_factory, checkpoint) -> Path:
    """A folder with three images, a feature store of them and a pairs file (made once, copied per case)."""
    root = tmp_path_factory.mktemp("corpus_base")
    make_images(root / "imgs", 3, size=(96, 72))
    shutil.copy(checkpoint, root / "ckpt.pt")
    cwd = os.getcwd()
    os.chdir(root)  # the cases run in a copy of this folder, with the same relative paths
    try:
        result = invoke("extract", "imgs", "--weights", "ckpt.pt", "--out", "f.h5", *LOW)
    finally:
        os.chdir(cwd)
    assert result.exit_code == 0, result.output
    (root / "pairs.txt").write_text("img00.png img01.png\nimg00.png img02.png\nimg01.png img02.png\n")
    return root


@pytest.fixture
def work(base, tmp_path, monkeypatch) -> Path:
    """A private copy of the base folder, also the working directory."""
    folder = tmp_path / "w"
    shutil.copytree(base, folder)
    monkeypatch.chdir(folder)
    return folder


def run_case(work: Path, case: Case):
    before = snapshot(work)
    result = invoke(*case.args)
    output = result.output
    assert result.exit_code in case.codes, f"exit {result.exit_code}, expected {case.codes}:\n{output}"
    for text in case.absent:
        assert text not in output, output
    flat = " ".join(output.split())
    for text in case.mentions:
        assert text in output or text in flat, f"{text!r} not in:\n{output}"
    after = snapshot(work)
    for name, digest in before.items():
        if name in case.may_change:
            continue
        assert name in after, f"{name} was deleted"
        assert after[name] == digest, f"{name} was changed"
    if case.check is not None:
        case.check(work)
    return result


# --- helpers that make bad inputs ----------------------------------------------------------------


def corrupt_header(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[:64] = b"\x00" * 64
    path.write_bytes(bytes(data))


def add_bad_entry(store: Path, name: str, drop: str | None = None, transpose: bool = False,
                  nan: bool = False) -> None:
    """Add an entry written by 'another tool': a complete group with a dataset missing or bad."""
    with h5py.File(store, "a") as f:
        group = f.create_group(name)
        kp = np.random.default_rng(0).uniform(0, 60, (20, 2)).astype(np.float32)
        desc = np.random.default_rng(1).normal(size=(20, 128)).astype(np.float32)
        desc /= np.linalg.norm(desc, axis=1, keepdims=True)
        if nan:
            desc[3, 5] = np.nan
        arrays = {"keypoints": kp, "scores": np.ones(20, np.float32),
                  "descriptors": desc.T.copy() if transpose else desc}
        for key, value in arrays.items():
            if key != drop:
                group.create_dataset(key, data=value)
        group.attrs["image_size"] = np.array([96, 72])
        group.attrs["token"] = "x" * 32
        group.attrs["complete"] = True


def store_names(path: Path) -> list[str]:
    from delfi.io.features import FeatureStore

    with FeatureStore(path) as store:
        return store.names()


# --- data loss -----------------------------------------------------------------------------------


def test_match_output_equal_to_feature_store_is_refused(work):
    run_case(work, Case(["match", "--features", "f.h5", "--pairs", "pairs.txt", "--out", "f.h5", "--overwrite"],
                        (2,), ("f.h5",)))


def test_match_output_equal_to_pairs_file_is_refused(work):
    run_case(work, Case(["match", "--features", "f.h5", "--pairs", "pairs.txt", "--out", "./pairs.txt"], (2,),
                        ("pairs.txt",)))


def test_pairs_output_equal_to_its_input_is_refused(work):
    run_case(work, Case(["pairs", "from-list", "pairs.txt", "--out", "pairs.txt"], (2,), ("pairs.txt",)))


def test_extract_output_equal_to_an_input_list_is_refused(work):
    (work / "list.txt").write_text("imgs/img00.png\n")
    run_case(work, Case(["extract", "list.txt", "--weights", "ckpt.pt", "--out", "list.txt", *LOW], (2,),
                        ("list.txt",)))


def test_index_build_into_a_folder_of_user_files_is_refused(work):
    (work / "mydir").mkdir()
    (work / "mydir" / "thesis.tex").write_text("years of work")
    run_case(work, Case(["index", "build", "--features", "f.h5", "--out", "mydir"], (2,), ("mydir",)))


def test_index_build_onto_a_user_file_is_refused(work):
    (work / "notes.txt").write_text("mine")
    run_case(work, Case(["index", "build", "--features", "f.h5", "--out", "notes.txt"], (2,), ("notes.txt",),
                        check=lambda w: [p.name for p in w.iterdir() if p.name.startswith("notes")] == ["notes.txt"]
                        or pytest.fail("notes.txt was renamed aside")))


def test_resume_keeps_lookalike_temp_files(work, checkpoint):
    (work / "f.h5.tmp-notes.txt").write_text("not delfi's")
    (work / "f.h5.tmp-123abc").write_text("not delfi's either")
    run_case(work, Case(["extract", "imgs", "--weights", "ckpt.pt", "--out", "f.h5", *LOW], (0,),
                        may_change=("f.h5",)))


# --- one bad item must not stop a run --------------------------------------------------------------


def test_image_outside_the_working_directory_is_extracted(work, tmp_path):
    outside = tmp_path / "elsewhere"
    make_images(outside, 1)
    (work / "sub").mkdir()
    result = run_case(work, Case(["extract", outside / "img00.png", "--weights", "ckpt.pt", "--out", "o.h5", *LOW],
                                 (0,)))
    assert len(store_names(work / "o.h5")) == 1, result.output


def test_relative_path_above_the_working_directory_is_extracted(work, tmp_path):
    make_images(tmp_path / "up", 1)
    (work / "list.txt").write_text("../up/img00.png\nimgs/img01.png\n")
    run_case(work, Case(["extract", "list.txt", "--weights", "ckpt.pt", "--out", "o.h5", *LOW], (0,)))
    assert len(store_names(work / "o.h5")) == 2


def test_broken_images_are_failures_of_their_own(work):
    (work / "imgs" / "empty.png").write_bytes(b"")
    (work / "imgs" / "text.jpg").write_text("not an image")
    good = (work / "imgs" / "img00.png").read_bytes()
    (work / "imgs" / "truncated.png").write_bytes(good[: len(good) // 3])
    run_case(work, Case(["extract", "imgs", "--weights", "ckpt.pt", "--out", "o.h5", *LOW], (1,),
                        ("empty.png", "text.jpg", "truncated.png")))
    assert {"img00.png", "img01.png", "img02.png"} <= set(store_names(work / "o.h5"))


@pytest.mark.parametrize("bad", ["drop_descriptors", "drop_keypoints", "transpose", "nan"])
def test_bad_store_entry_is_a_failure_of_its_pairs(work, bad):
    add_bad_entry(work / "f.h5", "bad.png", drop={"drop_descriptors": "descriptors",
                                                 "drop_keypoints": "keypoints"}.get(bad),
                  transpose=bad == "transpose", nan=bad == "nan")
    (work / "pairs.txt").write_text("img00.png bad.png\nimg00.png img01.png\n")
    run_case(work, Case(["match", "--features", "f.h5", "--pairs", "pairs.txt", "--out", "m.h5", "--geometry", "none"],
                        (1,), ("bad.png", "1 matched")))


@pytest.mark.parametrize("command", [
    ["match", "--features", "f.h5", "--pairs", "pairs.txt", "--out", "m.h5"],
    ["pairs", "exhaustive", "--features", "f.h5", "--out", "p2.txt"],
    ["index", "build", "--features", "f.h5", "--out", "db.index"],
    ["pca", "fit", "--features", "f.h5", "--dims", "4", "--out", "pca.h5"],
    ["viz", "keypoints", "--features", "f.h5", "--name", "img00.png", "--images", "imgs", "--out", "k.png"],
    ["extract", "imgs", "--weights", "ckpt.pt", "--out", "f.h5", *LOW],
])
def test_corrupt_store_header_is_named(work, command):
    corrupt_header(work / "f.h5")
    run_case(work, Case(command, (1, 2), ("f.h5",)))


def test_journal_file_missing_arrays_is_not_merged(work):
    journal = work / "f.h5.journal"
    journal.mkdir()
    bad = journal / ("0" * 40 + ".npz")
    np.savez(bad, name=np.array("ghost.png"), token=np.array("t" * 32))
    run_case(work, Case(["pairs", "exhaustive", "--features", "f.h5", "--out", "p2.txt"], (0,),
                        ("ignoring journal file", bad.name)))
    pairs = (work / "p2.txt").read_text()
    assert "ghost.png" not in pairs and "img00.png img01.png" in pairs
    assert bad.exists()  # left in place, never merged, never deleted


@pytest.mark.parametrize("out", ["missing_dir/p.txt"])
def test_pairs_into_a_missing_folder(work, out):
    run_case(work, Case(["pairs", "exhaustive", "--features", "f.h5", "--out", out], (0,)))
    assert (work / out).is_file()


@pytest.mark.parametrize("command", [
    ["pairs", "exhaustive", "--features", "f.h5", "--out", "imgs"],
    ["search", "--index", "db.index", "--features", "f.h5", "--out", "imgs"],
])
def test_output_naming_a_folder_is_refused(work, command):
    run_case(work, Case(command, (2,), ("imgs",)))


def test_non_utf8_pairs_file_is_named(work):
    (work / "pairs.txt").write_bytes(b"img00.png \xff\xfe.png\n")
    run_case(work, Case(["match", "--features", "f.h5", "--pairs", "pairs.txt", "--out", "m.h5"], (1, 2),
                        ("pairs.txt",)))


def test_folder_scan_lists_what_it_skips(work):
    (work / "imgs" / "dangling.png").symlink_to(work / "nowhere.png")
    (work / "imgs" / "loop.png").symlink_to(work / "imgs" / "loop.png")
    (work / "imgs" / "cycle").symlink_to(work / "imgs")
    (work / "imgs" / "folder.jpg").mkdir()
    result = run_case(work, Case(["extract", "imgs", "--weights", "ckpt.pt", "--out", "o.h5", *LOW], (0, 1),
                                 ("dangling.png", "loop.png", "cycle")))
    assert "skipped" in result.output


# --- outputs that look valid but are not --------------------------------------------------------


def test_pca_on_nan_descriptors_is_refused_or_skips_the_entry(work):
    add_bad_entry(work / "f.h5", "bad.png", nan=True)
    result = run_case(work, Case(["pca", "fit", "--features", "f.h5", "--dims", "4", "--out", "pca.h5"], (1, 2),
                                 ("bad.png",)))
    if (work / "pca.h5").exists():
        with h5py.File(work / "pca.h5") as f:
            for key in f:
                if isinstance(f[key], h5py.Dataset) and f[key].dtype.kind == "f":
                    assert np.isfinite(f[key][()]).all(), result.output


@pytest.mark.parametrize("setting", [["max_size=256", "min_size=256"], ["min_size=5000"], ["reliability_threshold=nan"]])
def test_settings_that_cannot_produce_features_are_refused(work, setting):
    keys = {s.split("=")[0] for s in setting}
    low = [s for s in LOW if s.split("=")[0] not in keys]
    run_case(work, Case(["extract", "imgs", "--weights", "ckpt.pt", "--out", "o.h5", *low, *setting], (2,),
                        (setting[0].split("=")[0],)))
    assert not (work / "o.h5").exists()


def test_override_without_equals_sign_is_explained(work):
    run_case(work, Case(["extract", "imgs", "--weights", "ckpt.pt", "--out", "o.h5", "top_k", "2000"], (2,),
                        ("top_k=2000",)))


# --- containment -------------------------------------------------------------------------------


def test_index_meta_naming_files_outside_the_index_is_refused(work):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "eval"))
    from retrieval_scene import make_scene, write_store

    _, db, _ = make_scene()
    write_store(work / "g.h5", db)  # a store with global descriptors
    built = invoke("index", "build", "--features", "g.h5", "--out", "db.index")
    assert built.exit_code == 0, built.output
    meta_path = work / "db.index" / "meta.json"
    meta = json.loads(meta_path.read_text())
    (work / "secret.txt").write_text("outside")
    digest = hashlib.sha256(b"outside").hexdigest()
    files = meta["files"]
    if isinstance(files, dict):
        files["../secret.txt"] = digest
    else:
        files.append({"name": "../secret.txt", "sha256": digest})
    meta_path.write_text(json.dumps(meta))
    run_case(work, Case(["search", "--index", "db.index", "--features", "g.h5", "--out", "r.txt"], (2,),
                        ("meta.json",)))


def test_malicious_checkpoint_is_refused_without_suggesting_to_run_it(work):
    import torch

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned > pwned.txt",))

    torch.save({"net": "Quad_L2Net_ConfCFS()", "state_dict": Payload()}, work / "evil.pt")
    result = run_case(work, Case(["extract", "imgs", "--weights", "evil.pt", "--out", "o.h5", *LOW], (2,),
                                 ("evil.pt",)))
    assert "weights_only" not in result.output
    assert not (work / "pwned.txt").exists()


def test_checkpoint_with_wrong_shapes_is_named(work):
    import torch

    state = torch.load(work / "ckpt.pt", weights_only=True)
    key = next(k for k, v in state["state_dict"].items() if v.ndim == 4)
    state["state_dict"][key] = torch.zeros(3, 3, 1, 1)
    torch.save(state, work / "wrong.pt")
    run_case(work, Case(["extract", "imgs", "--weights", "wrong.pt", "--out", "o.h5", *LOW], (2,), ("wrong.pt",)))


# --- messages -----------------------------------------------------------------------------------


def test_index_setting_typo_names_the_setting(work):
    pytest.importorskip("faiss")
    run_case(work, Case(["index", "build", "--features", "f.h5", "--out", "db.index", "--kind", "ivfpq", "nlsit=4"],
                        (2,), ("nlsit", "nlist")))


def test_viz_matches_without_images_folder_says_where_it_looked(work):
    assert invoke("match", "--features", "f.h5", "--pairs", "pairs.txt", "--out", "m.h5", "--geometry", "none").exit_code == 0
    run_case(work, Case(["viz", "matches", "--features", "f.h5", "--matches", "m.h5", "--pair", "img00.png img01.png",
                         "--out", "pic.png"], (2,), ("img00.png", "--images")))


def test_ranking_with_wrong_columns_is_named_by_line(work):
    (work / "r.txt").write_text("img00.png img01.png 0.5\nimg00.png\n")
    run_case(work, Case(["pairs", "from-ranking", "--ranking", "r.txt", "--out", "p2.txt"], (2,), ("r.txt:2",)))


def test_the_same_weights_spelled_otherwise_resume_the_store(work):
    result = run_case(work, Case(["extract", "imgs", "--weights", work / "ckpt.pt", "--out", "f.h5", *LOW], (0,),
                                 ("3 already done",), may_change=("f.h5", "f.h5.config.yaml")))
    assert "0 extracted" in result.output


def test_settings_mismatch_names_only_the_differing_key_and_overwrite(work):
    low = [s for s in LOW if not s.startswith("top_k=")]
    result = run_case(work, Case(["extract", "imgs", "--weights", "ckpt.pt", "--out", "f.h5", *low, "top_k=100"], (2,),
                                 ("config.top_k", "--overwrite")))
    assert "reliability_threshold" not in result.output  # not the whole config


@pytest.mark.parametrize("device", ["nonsense", "meta", "cuda:7"])
def test_unusable_device_is_refused(work, device):
    import torch

    if device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.device_count() > 7:
        pytest.skip("this machine has that GPU")
    run_case(work, Case(["extract", "imgs", "--weights", "ckpt.pt", "--device", device, "--out", "o.h5", *LOW], (2,),
                        ("--device",)))
