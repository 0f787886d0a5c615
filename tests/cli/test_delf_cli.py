"""DELF / DELG through the command line: extract with query boxes, PCA fit then reduced extraction,
attention pictures. Random weights saved as delfi checkpoints by the test."""

from __future__ import annotations

import pytest
import torch

import delfi
from delfi.io.features import FeatureStore
from delfi.models.delf import save_delfi_checkpoint

from .conftest import invoke, make_images

SMALL = ["score_threshold=0.0", "max_image_size=0", "top_k=50", "scales=[0.5,1.0]"]


@pytest.fixture(scope="module")
def delg_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("delg") / "delg.pt"
    save_delfi_checkpoint(delfi.models.create("delg", load=False), path)
    return path


def test_delg_extract_with_query_boxes(tmp_path, delg_checkpoint):
    make_images(tmp_path / "q", 2, size=(128, 96))
    boxes = tmp_path / "boxes.txt"
    boxes.write_text("# name x0 y0 x1 y1\nimg00.png 32 16 96 80\n")
    out = tmp_path / "q.h5"
    result = invoke("extract", tmp_path / "q", "--preset", "delg", "--weights", delg_checkpoint, "--out", out,
                    "--bbox-file", boxes, *SMALL, "global_scales=[1.0]")  # fmt: skip
    assert result.exit_code == 0, result.output
    with FeatureStore(out) as store:
        cropped, full = store["img00.png"], store["img01.png"]
        assert store.attrs["model"] == "delg"
    assert cropped.global_descriptor.shape == (2048,) and cropped.descriptors.shape[1] == 128
    assert float(cropped.keypoints[:, 0].min()) >= 32 - 16 and float(cropped.keypoints[:, 0].max()) <= 96
    assert float(full.keypoints[:, 0].max()) > 96  # the uncropped image has keypoints outside the box
    bad = tmp_path / "bad.txt"
    bad.write_text("img00.png 1 2 3\n")
    refused = invoke("extract", tmp_path / "q", "--preset", "delg", "--weights", delg_checkpoint, "--bbox-file", bad)
    assert refused.exit_code == 2 and "bad.txt:1" in refused.output


def test_pca_fit_then_reduced_extraction(tmp_path, delg_checkpoint):
    make_images(tmp_path / "train", 3, size=(128, 96))
    train = tmp_path / "train.h5"
    assert invoke("extract", tmp_path / "train", "--preset", "delg", "--weights", delg_checkpoint, "--out", train,
                  *SMALL, "extract_global=false").exit_code == 0  # fmt: skip
    pca = tmp_path / "pca.h5"
    fitted = invoke("pca", "fit", "--features", train, "--dims", "16", "--out", pca)
    assert fitted.exit_code == 0, fitted.output
    reduced = tmp_path / "reduced.h5"
    result = invoke("extract", tmp_path / "train", "--preset", "delg", "--weights", delg_checkpoint, "--out", reduced,
                    *SMALL, "extract_global=false", "--pca", pca, "pca_dims=16")  # fmt: skip
    assert result.exit_code == 0, result.output
    with FeatureStore(reduced) as store:
        assert store["img00.png"].descriptors.shape == (50, 16)
        assert store.attrs["pca_sha256"] == delfi.extract.pca.pca_sha256(pca)


def test_viz_attention_and_r2d2_refusal(tmp_path, delg_checkpoint, checkpoint):
    (image,) = make_images(tmp_path, 1, size=(128, 96))
    out = tmp_path / "attn.png"
    result = invoke("viz", "attention", image, "--preset", "delg", "--weights", delg_checkpoint, "--out", out, *SMALL)
    assert result.exit_code == 0, result.output
    assert out.is_file() and "2 scales" in result.output
    refused = invoke("viz", "attention", image, "--preset", "r2d2", "--weights", checkpoint)
    assert refused.exit_code == 2 and "attention" in refused.output


def test_viz_attention_of_random_weights_says_so(tmp_path):
    (image,) = make_images(tmp_path, 1, size=(64, 48))
    out = tmp_path / "attn.png"
    result = invoke("viz", "attention", image, "--preset", "delf", "--out", out, *SMALL)
    assert result.exit_code == 0, result.output
    assert "warning: delf has no weights" in result.output and "UNTRAINED" in result.output
    refused = invoke("viz", "attention", image, "--preset", "delf", "--out", image, *SMALL)
    assert refused.exit_code == 2 and "also an input" in refused.output
    unknown = invoke("viz", "attention", image, "--preset", "delf", "--out", tmp_path / "attn.xyz", *SMALL)
    assert unknown.exit_code == 2 and "not a picture file name" in unknown.output  # before any network runs


def test_extract_with_random_weights_warns_and_marks_the_store(tmp_path):
    make_images(tmp_path / "q", 1, size=(64, 48))
    out = tmp_path / "q.h5"
    result = invoke("extract", tmp_path / "q", "--preset", "delf", "--out", out, *SMALL)
    assert result.exit_code == 0, result.output
    assert "warning: delf has no weights" in result.output
    with FeatureStore(out) as store:
        assert store.attrs["untrained"] is True
