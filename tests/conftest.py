"""Shared fixtures. Real data made elsewhere lives in ../shared/data (override with DELFI_TEST_DATA);
tests that need it skip with a reason when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_root() -> Path:
    return Path(os.environ.get("DELFI_TEST_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The root of the shared real test data; skips the test when it is not there."""
    root = shared_data_root()
    if not root.is_dir():
        pytest.skip(f"shared test data not found at {root} (set DELFI_TEST_DATA)")
    return root


@pytest.fixture(autouse=True)
def _isolated_delfi_home(tmp_path_factory, monkeypatch):
    """Every test gets its own empty DELFI_HOME so no test touches the user's cache."""
    monkeypatch.setenv("DELFI_HOME", str(tmp_path_factory.mktemp("delfi_home")))


def _sift_store(images: Path, out: Path, nfeatures: int = 4000) -> Path:
    """OpenCV SIFT (``nfeatures`` per image, RootSIFT descriptors) of every ``*.jpg`` of ``images``
    into a delfi feature store ``out`` (names: the file names)."""
    cv2 = pytest.importorskip("cv2")
    import numpy as np
    import torch

    from delfi.io.features import FeatureStore
    from delfi.types import Features

    sift = cv2.SIFT_create(nfeatures=nfeatures)
    with FeatureStore(out, "w", attrs={"model": "opencv-sift"}) as store:
        for path in sorted(Path(images).glob("*.jpg")):
            grey = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
            found, desc = sift.detectAndCompute(grey, None)
            desc = np.sqrt(desc / np.maximum(desc.sum(1, keepdims=True), 1e-8)).astype(np.float32)
            store.put(path.name, Features(torch.tensor([k.pt for k in found], dtype=torch.float32),
                                          torch.tensor([k.response for k in found]), torch.from_numpy(desc),
                                          image_size=(grey.shape[1], grey.shape[0])))  # fmt: skip
    return out


@pytest.fixture(scope="session")
def sift_store():
    """``sift_store(images_dir, out, nfeatures=4000) -> out``: OpenCV SIFT features as a delfi store."""
    return _sift_store


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch intra-op thread for a module (use with ``pytest.mark.usefixtures``): for modules of
    tiny ResNet passes, as fast on an idle machine and free of the OpenMP stalls (20x slower passes)
    seen when other processes share the CPUs."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_configure(config):
    """Under pytest-xdist (``make test`` runs two workers on two cores) each worker, and every
    process it starts, uses one thread: concurrent processes with a thread per core each stall
    one another's OpenMP barriers (passes 10-100x slower)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"
        import torch

        torch.set_num_threads(1)
