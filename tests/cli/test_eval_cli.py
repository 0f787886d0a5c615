"""`delfi eval hpatches` and `delfi eval evd` wiring, on tiny synthetic data sets made here."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import torch
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


# --------------------------------------------------------------------------------------------------
# the default method name follows the weights' content, not their spelling
# --------------------------------------------------------------------------------------------------


def _name(weights) -> str:
    from delfi.cli.eval import method_name
    from delfi.models import resolve_config

    return method_name("r2d2", resolve_config("r2d2", [f"weights={weights}", *LOW]))


def test_method_name_is_the_same_for_a_copy_and_a_link(tmp_path, checkpoint):
    copy = tmp_path / "a" / "some_other_name.pt"
    copy.parent.mkdir()
    shutil.copyfile(checkpoint, copy)
    link = tmp_path / "link.pt"
    link.symlink_to(checkpoint)
    names = {_name(checkpoint), _name(copy), _name(link), _name(f"{tmp_path}/a/../a/some_other_name.pt")}
    assert len(names) == 1
    assert next(iter(names)).startswith("r2d2-sha-" + hashlib.sha256(checkpoint.read_bytes()).hexdigest()[:10])
    other = tmp_path / "other.pt"
    data = torch.load(checkpoint, weights_only=True)
    data["state_dict"]["module.clf.bias"] = data["state_dict"]["module.clf.bias"] + 1
    torch.save(data, other)
    assert _name(other) not in names  # other content, other name


def test_method_name_is_the_same_by_known_name_and_by_path(tmp_path, checkpoint, monkeypatch):
    from delfi.models import weights as w

    digest = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    info = w.WeightsInfo(name="toy-r2d2", filename="toy_r2d2.pt", url="http://example.invalid/toy_r2d2.pt",
                         sha256=digest, preset="r2d2", licence="test", source="tests", description="random")
    monkeypatch.setitem(w.KNOWN_WEIGHTS, info.name, info)
    monkeypatch.setenv("DELFI_HOME", str(tmp_path / "home"))
    w.weights_dir().mkdir(parents=True)
    shutil.copyfile(checkpoint, w.cached_path(info))
    by_name, by_path, by_cache = _name("toy-r2d2"), _name(checkpoint), _name(w.cached_path(info))
    assert by_name == by_path == by_cache and by_name.startswith("r2d2-toy-r2d2-")


def test_eval_runs_with_two_spellings_share_the_feature_cache(tmp_path, checkpoint):
    root = _evd_root(tmp_path)
    link = tmp_path / "link.pt"
    link.symlink_to(checkpoint)
    out = tmp_path / "res"
    for weights in (checkpoint, link):
        result = invoke("eval", "evd", "--root", root, "--weights", weights, "--out", out, "--no-pictures", *LOW)
        assert result.exit_code == 0, result.output
    (run_dir,) = (out / "evd").iterdir()
    assert json.loads((run_dir / "results.json").read_text())["n_extracted"] == 0  # the second run re-scored


# --------------------------------------------------------------------------------------------------
# bad input: clear messages naming the file; one bad item is listed and the rest runs
# --------------------------------------------------------------------------------------------------


def _evd_root(tmp_path, names=("toy",)):
    root = tmp_path / "evd"
    for folder in ("1", "2", "h"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for n, name in enumerate(names):
        first = textured_image(96, 72, seed=3 + n)
        save(first, root / "1" / f"{name}.png")
        save(warp_image(first, shift(3, 2)), root / "2" / f"{name}.png")
        np.savetxt(root / "h" / f"{name}.txt", shift(3, 2))
    return root


def _hpatches_root(tmp_path, seqs=("i_synth", "v_synth")):
    root = tmp_path / "hpatches"
    for seq in seqs:
        (root / seq).mkdir(parents=True)
        first = textured_image(96, 72, seed=len(seq))
        save(first, root / seq / "1.ppm")
        for k in range(2, 7):
            h = shift(k, -k) if seq.startswith("v") else np.eye(3)
            save(warp_image(first, h), root / seq / f"{k}.ppm")
            np.savetxt(root / seq / f"H_1_{k}", h)
    return root


def test_eval_hpatches_lists_a_bad_sequence_and_scores_the_rest(tmp_path, checkpoint):
    root = _hpatches_root(tmp_path, ("i_synth", "v_bad"))
    (root / "v_bad" / "H_1_3").write_text("not a matrix\n")
    result = invoke("eval", "hpatches", "--root", root, "--weights", checkpoint, "--out", tmp_path / "res",
                    "--method", "rand", *LOW)
    assert result.exit_code == 1, result.output
    assert "sequences left out of" in result.output and "v_bad/H_1_3" in result.output
    data = json.loads((tmp_path / "res" / "hpatches" / "rand" / "results.json").read_text())
    assert data["n_pairs"] == 5 and data["failures"][0]["sequence"] == "v_bad"
    assert "Traceback" not in result.output


def test_eval_hpatches_refined(tmp_path, checkpoint):
    from delfi.eval.hpatches import load_cache

    root = _hpatches_root(tmp_path)
    base = ["eval", "hpatches", "--root", root, "--weights", checkpoint, "--out", tmp_path / "res", "--method", "rand"]
    alone = invoke(*base, "--refine-threshold", "5", *LOW)
    assert alone.exit_code == 2 and "--refined" in alone.output and not (tmp_path / "res").exists()
    bad = invoke(*base, "--refined", "--refine-threshold", "0", *LOW)
    assert bad.exit_code == 2 and "positive" in bad.output
    result = invoke(*base, "--refined", "--refine-threshold", "5", *LOW)
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "res" / "hpatches" / "rand"
    assert "rand (refined)" in result.output and "hpatches-refined.npy" in result.output
    data = json.loads((run_dir / "results.json").read_text())
    assert data["refined"]["threshold"] == 5.0 and data["config"]["refined"] is True
    cache = load_cache(run_dir / "hpatches-refined.npy")
    assert {int(t): v for t, v in data["refined"]["mma"].items()} == {t: cache["mma"][t] for t in range(1, 11)}
    assert cache["n_matches"] == data["refined"]["n_matches"] <= data["n_matches"]
    # --compare: a published-style cache beside both rows of this run (features come from the cache)
    compared = invoke(*base, "--refined", "--compare", run_dir / "hpatches.npy", *LOW)
    assert compared.exit_code == 0, compared.output
    header = next(line for line in compared.output.splitlines() if "metric" in line)
    assert header.count("rand") == 3 and "cached" in compared.output


def test_eval_evd_lists_a_bad_pair_and_scores_the_rest(tmp_path, checkpoint):
    root = _evd_root(tmp_path, ("toy", "odd"))
    (root / "h" / "odd.txt").unlink()
    result = invoke("eval", "evd", "--root", root, "--weights", checkpoint, "--out", tmp_path / "res",
                    "--method", "rand", "--no-pictures", *LOW)
    assert result.exit_code == 1, result.output
    assert "pairs left out of" in result.output and "h/odd.txt" in result.output
    assert [p["name"] for p in json.loads((tmp_path / "res" / "evd" / "rand" / "results.json").read_text())["pairs"]] == ["toy"]


def test_eval_status_column_never_says_ok_without_an_accepted_model(tmp_path, checkpoint):
    root = _evd_root(tmp_path)
    result = invoke("eval", "evd", "--root", root, "--weights", checkpoint, "--out", tmp_path / "res",
                    "--method", "rand", "--no-pictures", *LOW)
    data = json.loads((tmp_path / "res" / "evd" / "rand" / "results.json").read_text())
    for pair in data["pairs"]:
        assert (pair["status"] == "ok") == (pair["n_inliers"] >= 15), pair  # verify's MIN_INLIERS
    assert sum(data["status_counts"].values()) == 1 and result.exit_code == 0


def test_eval_usage_errors_name_the_file(tmp_path, checkpoint):
    def run(*args):
        return invoke("eval", *args, "--weights", checkpoint, *LOW)

    empty = tmp_path / "empty"
    empty.mkdir()
    wrong = run("hpatches", "--root", empty, "--out", tmp_path / "r")
    assert wrong.exit_code == 2 and "no HPatches sequences" in wrong.output and str(empty) in wrong.output
    wrong = run("evd", "--root", empty, "--out", tmp_path / "r")
    assert wrong.exit_code == 2 and str(empty / "1") in wrong.output
    hp = _hpatches_root(tmp_path)
    for out in (hp, hp / "results", hp / "v_synth"):
        inside = run("hpatches", "--root", hp, "--out", out)
        assert inside.exit_code == 2
        assert "inside the dataset folder" in inside.output or "is also an input" in inside.output
    assert sorted(p.name for p in hp.iterdir()) == ["i_synth", "v_synth"]
    not_cache = tmp_path / "notes.npy"
    not_cache.write_bytes(b"hello")
    bad = run("hpatches", "--root", hp, "--out", tmp_path / "r", "--compare", not_cache)
    assert bad.exit_code == 2 and "notes.npy" in bad.output and "not an HPatches" in bad.output
    assert not (tmp_path / "r").exists()  # refused before any work
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"benchmark": "evd", "delfi_version": "0", "pairs": []}))
    bad = run("hpatches", "--root", hp, "--out", tmp_path / "r", "--compare", other)
    assert bad.exit_code == 2 and "other.json" in bad.output and "evd results" in bad.output
    mine = tmp_path / "r" / "hpatches" / "rand" / "results.json"
    mine.parent.mkdir(parents=True)
    mine.write_text("my own notes")
    clash = run("hpatches", "--root", hp, "--out", tmp_path / "r", "--method", "rand")
    assert clash.exit_code == 2 and "not a delfi results file" in clash.output
    assert mine.read_text() == "my own notes"
    assert "Traceback" not in wrong.output + bad.output + clash.output


def test_eval_bad_checkpoints_are_usage_errors_naming_the_file(tmp_path, checkpoint):
    root = _evd_root(tmp_path)
    data = torch.load(checkpoint, weights_only=True)
    shapes = dict(data, state_dict={**data["state_dict"], "module.clf.weight": torch.zeros(2, 64, 1, 1)})
    nan = dict(data, state_dict={**data["state_dict"], "module.sal.bias": torch.tensor([float("nan")])})
    for name, content, expected in (("shapes.pt", shapes, "clf.weight: expected (2, 128, 1, 1), found (2, 64, 1, 1)"),
                                    ("nan.pt", nan, "'state_dict/module.sal.bias' has non-finite")):
        torch.save(content, tmp_path / name)
        result = invoke("eval", "evd", "--root", root, "--weights", tmp_path / name, "--out", tmp_path / "res", *LOW)
        assert result.exit_code == 2, result.output
        assert name in result.output and expected in " ".join(result.output.split())
    (tmp_path / "cut.pt").write_bytes(checkpoint.read_bytes()[:1000])
    result = invoke("eval", "evd", "--root", root, "--weights", tmp_path / "cut.pt", "--out", tmp_path / "res", *LOW)
    assert result.exit_code == 2 and "truncated or corrupted" in result.output
    assert not (tmp_path / "res").exists()
