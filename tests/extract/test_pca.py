"""Streaming PCA: equals numpy's full-batch fit, apply / whiten / renormalise, files, feature stores."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from delfi.extract.pca import (
    PCA,
    PCAFileError,
    apply_pca,
    fit_pca_from_store,
    fit_pca_streaming,
    load_pca,
    pca_sha256,
    save_pca,
)
from delfi.io.features import FeatureStore
from delfi.types import Features

STORE_ATTRS = {"model": "test", "weights_sha256": "none", "config": {}}


def random_data(n=500, d=8, seed=0) -> np.ndarray:
    """Correlated data with distinct variances and a mean far from 0."""
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(d, d)) * np.linspace(3.0, 0.2, d)[:, None]
    return rng.normal(size=(n, d)) @ mixing + 5.0 * rng.normal(size=d)


def numpy_reference(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mean = x.mean(axis=0)
    values, vectors = np.linalg.eigh(np.cov(x, rowvar=False))
    order = np.argsort(values)[::-1]
    return mean, values[order], vectors[:, order].T


def assert_same_up_to_sign(a: np.ndarray, b: np.ndarray, atol=1e-8):
    for row_a, row_b in zip(a, b):
        sign = np.sign(row_a @ row_b)
        np.testing.assert_allclose(row_a, sign * row_b, atol=atol)


@pytest.mark.parametrize("split", [[500], [1, 499], [100, 0, 150, 250], [7] * 71 + [3]])
def test_streaming_equals_full_batch(split):
    x = random_data()
    mean, values, vectors = numpy_reference(x)
    bounds = np.cumsum([0, *split])
    pca = fit_pca_streaming(x[a:b] for a, b in zip(bounds[:-1], bounds[1:]))
    assert pca.n_samples == 500 and pca.input_dim == 8
    np.testing.assert_allclose(pca.mean, mean, atol=1e-10)
    np.testing.assert_allclose(pca.eigenvalues, values, atol=1e-8)
    assert np.all(np.diff(pca.eigenvalues) <= 0)
    assert_same_up_to_sign(pca.components, vectors)
    np.testing.assert_allclose(pca.components @ pca.components.T, np.eye(8), atol=1e-10)


def test_streaming_is_independent_of_the_split_and_accepts_tensors():
    x = random_data(seed=3)
    one = fit_pca_streaming([x])
    many = fit_pca_streaming(torch.from_numpy(x[i:i + 13]).float() if i % 2 else x[i:i + 13]
                             for i in range(0, 500, 13))
    # signs are fixed by convention, so the components agree exactly (up to float32 input rounding)
    np.testing.assert_allclose(many.components, one.components, atol=1e-5)
    np.testing.assert_allclose(many.eigenvalues, one.eigenvalues, rtol=1e-5)


def test_streaming_ddof_and_errors():
    x = random_data(n=50)
    pca0 = fit_pca_streaming([x], ddof=0)
    values = np.sort(np.linalg.eigvalsh(np.cov(x, rowvar=False, ddof=0)))[::-1]
    np.testing.assert_allclose(pca0.eigenvalues, values, atol=1e-8)
    with pytest.raises(ValueError, match="more than 1"):
        fit_pca_streaming([x[:1]])
    with pytest.raises(ValueError, match="more than"):
        fit_pca_streaming([])
    with pytest.raises(ValueError, match="dimension"):
        fit_pca_streaming([x, x[:, :3]])
    with pytest.raises(ValueError, match=r"\(n, D\)"):
        fit_pca_streaming([x[0]])


def test_streaming_keeps_one_batch_at_a_time():
    seen = []

    def batches():
        for i in range(5):
            seen.append(i)
            yield random_data(n=20, seed=i)

    pca = fit_pca_streaming(batches())
    assert seen == list(range(5)) and pca.n_samples == 100


def test_apply_round_trip_full_dims():
    x = random_data()
    pca = fit_pca_streaming([x])
    y = apply_pca(x, pca, dims=8, whiten=False, renormalise=False)
    np.testing.assert_allclose(y @ pca.components + pca.mean, x, atol=1e-9)
    np.testing.assert_allclose(y, (x - pca.mean) @ pca.components.T, atol=1e-12)


def test_apply_whitening_gives_unit_variance():
    x = random_data()
    pca = fit_pca_streaming([x])
    y = apply_pca(x, pca, dims=5, whiten=True, renormalise=False)
    assert y.shape == (500, 5)
    np.testing.assert_allclose(y.mean(axis=0), 0.0, atol=1e-9)
    np.testing.assert_allclose(np.cov(y, rowvar=False), np.eye(5), atol=1e-8)


def test_apply_renormalise_and_types():
    x = random_data().astype(np.float32)
    pca = fit_pca_streaming([x])
    y = apply_pca(x, pca, dims=3)
    assert y.dtype == np.float32 and y.shape == (500, 3)
    np.testing.assert_allclose(np.linalg.norm(y, axis=1), 1.0, atol=1e-6)
    yt = apply_pca(torch.from_numpy(x), pca, dims=3)
    assert isinstance(yt, torch.Tensor) and yt.dtype == torch.float32
    np.testing.assert_allclose(yt.numpy(), y, atol=1e-4)
    yw = apply_pca(torch.from_numpy(x).double(), pca, dims=3, whiten=True, renormalise=False)
    np.testing.assert_allclose(yw.numpy(), apply_pca(x.astype(np.float64), pca, dims=3, whiten=True,
                                                     renormalise=False), atol=1e-9)
    assert apply_pca(np.zeros((0, 8)), pca, dims=3).shape == (0, 3)
    with pytest.raises(ValueError, match="dims"):
        apply_pca(x, pca, dims=9)
    with pytest.raises(ValueError, match=r"\(N, 8\)"):
        apply_pca(x[:, :4], pca, dims=3)


def test_apply_dims_none_uses_the_recorded_dims():
    x = random_data()
    pca = fit_pca_streaming([x], dims=4)
    assert apply_pca(x, pca, dims=None).shape == (500, 4)
    assert 0 < pca.explained_variance_ratio() < pca.explained_variance_ratio(8) == pytest.approx(1.0)


@pytest.mark.parametrize("suffix", [".h5", ".npz"])
def test_save_load_round_trip_exact(tmp_path, suffix):
    pca = fit_pca_streaming([random_data()], dims=6, source={"features": "x.h5", "seed": 1})
    path = save_pca(pca, tmp_path / f"sub/pca{suffix}")
    loaded = load_pca(path)
    for name in ("mean", "components", "eigenvalues"):
        got, want = getattr(loaded, name), getattr(pca, name)
        assert got.dtype == np.float64 and np.array_equal(got, want)
    assert (loaded.n_samples, loaded.dims, loaded.ddof) == (500, 6, 1)
    assert loaded.source == {"features": "x.h5", "seed": 1}
    digest = pca_sha256(path)
    assert len(digest) == 64 and int(digest, 16) >= 0
    # the same PCA gives the same bytes (no timestamps): the hash identifies it
    again = save_pca(pca, tmp_path / f"again{suffix}")
    assert pca_sha256(again) == digest


def test_saved_h5_attrs(tmp_path):
    pca = fit_pca_streaming([random_data()], dims=6, source={"features": "x.h5"})
    path = save_pca(pca, tmp_path / "pca.h5")
    with h5py.File(path, "r") as f:
        assert f.attrs["format"] == "delfi-pca"
        assert f.attrs["dims"] == 6 and f.attrs["n_samples"] == 500 and f.attrs["input_dim"] == 8
        assert "x.h5" in f.attrs["source"]
        assert f["components"].dtype == np.float64


def test_load_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.h5"
    with pytest.raises(FileNotFoundError, match="nope.h5"):
        load_pca(missing)
    with pytest.raises(FileNotFoundError, match="nope.h5"):
        pca_sha256(missing)
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"not a pca file at all")
    with pytest.raises(PCAFileError, match="garbage.h5"):
        load_pca(garbage)
    incomplete = tmp_path / "incomplete.h5"
    with h5py.File(incomplete, "w") as f:
        f["mean"] = np.zeros(3)
        f.attrs["format"] = "delfi-pca"
    with pytest.raises(PCAFileError, match="incomplete.h5.*components"):
        load_pca(incomplete)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["mean"], f["components"], f["eigenvalues"] = np.zeros(3), np.eye(3), np.ones(3)
        f.attrs["format"] = "delfi-features"
    with pytest.raises(PCAFileError, match="other.h5.*not a delfi-pca"):
        load_pca(other)
    shapes = tmp_path / "shapes.h5"
    with h5py.File(shapes, "w") as f:
        f["mean"], f["components"], f["eigenvalues"] = np.zeros(3), np.eye(2), np.ones(3)
        f.attrs["format"] = "delfi-pca"
    with pytest.raises(PCAFileError, match="shapes.h5"):
        load_pca(shapes)
    npz = tmp_path / "bad.npz"
    np.savez(npz, mean=np.zeros(3))
    with pytest.raises(PCAFileError, match="bad.npz"):
        load_pca(npz)


def test_pca_validates_shapes():
    with pytest.raises(ValueError):
        PCA(mean=np.zeros(3), components=np.eye(2), eigenvalues=np.ones(3))
    with pytest.raises(ValueError, match="dims"):
        PCA(mean=np.zeros(3), components=np.eye(3), eigenvalues=np.ones(3), dims=4)


def make_store(path, per_image: dict[str, np.ndarray]) -> None:
    with FeatureStore(path, "w", attrs=STORE_ATTRS) as store:
        for name, desc in per_image.items():
            n = desc.shape[0]
            store.put(name, Features(
                keypoints=torch.zeros(n, 2), scores=torch.ones(n), descriptors=torch.from_numpy(desc).float(),
                image_size=(64, 48),
            ))


def test_fit_from_store_equals_full_batch(tmp_path):
    data = {f"img{i}.jpg": random_data(n=30 + 10 * i, seed=i).astype(np.float32) for i in range(4)}
    data["sub/empty.jpg"] = np.zeros((0, 8), np.float32)
    path = tmp_path / "features.h5"
    make_store(path, data)
    pca = fit_pca_from_store(path)
    everything = np.concatenate(list(data.values())).astype(np.float64)
    mean, values, vectors = numpy_reference(everything)
    assert pca.n_samples == everything.shape[0] == 180
    np.testing.assert_allclose(pca.mean, mean, atol=1e-9)
    np.testing.assert_allclose(pca.eigenvalues, values, atol=1e-8)
    assert_same_up_to_sign(pca.components, vectors)
    assert pca.source["features"] == str(path) and pca.source["model"] == "test"
    assert pca.source["images"] == 5


def test_fit_from_store_sampling(tmp_path):
    data = {f"img{i}.jpg": random_data(n=50, seed=i).astype(np.float32) for i in range(6)}
    path = tmp_path / "features.h5"
    make_store(path, data)
    seen = []
    pca = fit_pca_from_store(path, max_per_image=10, max_images=4, seed=3, progress=seen.append)
    assert pca.n_samples == 40 and pca.source["images"] == 4 and len(seen) == 4
    assert set(seen) <= set(data)
    again = fit_pca_from_store(path, max_per_image=10, max_images=4, seed=3)
    assert np.array_equal(again.components, pca.components)
    other = fit_pca_from_store(path, max_per_image=10, max_images=4, seed=4)
    assert not np.array_equal(other.mean, pca.mean)
    with pytest.raises(ValueError, match="max_images"):
        fit_pca_from_store(path, max_images=0)


def test_fit_from_store_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.h5"):
        fit_pca_from_store(tmp_path / "missing.h5")
    path = tmp_path / "empty.h5"
    make_store(path, {})
    with pytest.raises(ValueError, match="empty.h5"):
        fit_pca_from_store(path)
