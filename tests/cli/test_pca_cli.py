"""``delfi pca fit`` through a local root app registering the pca sub-app as delfi's main app does."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from delfi.cli import pca as pca_cli
from delfi.extract.pca import load_pca, pca_sha256
from delfi.io.features import FeatureStore
from delfi.types import Features

runner = CliRunner()


@pytest.fixture
def cli() -> typer.Typer:
    root = typer.Typer()
    root.add_typer(pca_cli.app, name="pca")

    @root.callback()
    def _root() -> None:  # keeps the root a group
        pass

    return root


def invoke(cli: typer.Typer, *args):
    return runner.invoke(cli, [str(a) for a in args])


@pytest.fixture
def store(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "features.h5"
    with FeatureStore(path, "w", attrs={"model": "test", "weights_sha256": "none", "config": {}}) as fs:
        for i in range(5):
            desc = rng.normal(size=(40, 16)).astype(np.float32)
            desc /= np.linalg.norm(desc, axis=1, keepdims=True)
            fs.put(f"img{i}.jpg", Features(keypoints=torch.zeros(40, 2), scores=torch.ones(40),
                                           descriptors=torch.from_numpy(desc), image_size=(32, 32)))
    return path


def test_fit_writes_the_file_and_prints_the_sha256(cli, store, tmp_path):
    out = tmp_path / "pca" / "pca.h5"
    result = invoke(cli, "pca", "fit", "--features", store, "--dims", 8, "--out", out)
    assert result.exit_code == 0, result.output
    assert out.is_file()
    digest = pca_sha256(out)
    assert digest in result.stdout
    assert re.search(r"samples\s*│\s*200", result.stdout)
    assert "explained variance" in result.stdout
    pca = load_pca(out)
    assert (pca.n_samples, pca.input_dim, pca.dims) == (200, 16, 8)
    assert pca.source["features"] == str(store)


def test_fit_with_sampling_options(cli, store, tmp_path):
    out = tmp_path / "pca.npz"
    result = invoke(cli, "pca", "fit", "--features", store, "--dims", 4, "--out", out,
                    "--max-per-image", 10, "--max-images", 3, "--seed", 7)
    assert result.exit_code == 0, result.output
    pca = load_pca(out)
    assert pca.n_samples == 30 and pca.source["seed"] == 7 and pca.source["images"] == 3


def test_missing_store_is_a_usage_error(cli, tmp_path):
    out = tmp_path / "pca.h5"
    result = invoke(cli, "pca", "fit", "--features", tmp_path / "missing.h5", "--out", out)
    assert result.exit_code == 2
    assert "missing.h5" in result.output and "does not exist" in result.output
    assert not out.exists()


def test_bad_dims_are_usage_errors(cli, store, tmp_path):
    out = tmp_path / "pca.h5"
    result = invoke(cli, "pca", "fit", "--features", store, "--dims", 17, "--out", out)
    assert result.exit_code == 2 and "16" in result.output
    assert not out.exists()
    assert invoke(cli, "pca", "fit", "--features", store, "--dims", 0, "--out", out).exit_code == 2


def test_not_a_feature_store_is_a_usage_error(cli, tmp_path):
    bogus = tmp_path / "bogus.h5"
    bogus.write_bytes(b"definitely not hdf5")
    result = invoke(cli, "pca", "fit", "--features", bogus, "--out", tmp_path / "pca.h5")
    assert result.exit_code == 2 and "bogus.h5" in result.output
