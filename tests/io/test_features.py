"""Tests of the HDF5 feature store (delfi.io.features), including a real SIGKILL crash test."""

from __future__ import annotations

import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from delfi.io.features import FeatureStore, StoreBusyError, StoreMismatchError
from delfi.types import COORDINATE_CONVENTION, Features

ATTRS = {"model": "delf", "weights_sha256": "ab" * 32, "config": {"max_keypoints": 1000, "scales": [0.5, 1.0]}}


def make_features(n: int = 17, d: int = 8, *, optional: bool = True, seed: int = 0) -> Features:
    g = torch.Generator().manual_seed(seed)
    desc = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)
    return Features(
        keypoints=torch.rand(n, 2, generator=g) * 100,
        scores=torch.rand(n, generator=g),
        descriptors=desc,
        scales=torch.rand(n, generator=g) * 10 if optional else None,
        global_descriptor=torch.nn.functional.normalize(torch.randn(5, generator=g), dim=0) if optional else None,
        image_size=(640, 480),
    )


def assert_same(a: Features, b: Features, atol: float = 0.0) -> None:
    assert a.image_size == b.image_size
    for key in ("keypoints", "scores", "descriptors", "scales", "global_descriptor"):
        x, y = getattr(a, key), getattr(b, key)
        if x is None or y is None:
            assert x is None and y is None, key
            continue
        assert x.dtype == torch.float32 and y.dtype == torch.float32, key
        assert tuple(x.shape) == tuple(y.shape), key
        if atol:
            np.testing.assert_allclose(x.numpy(), y.numpy(), atol=atol, rtol=0)
        else:
            assert np.array_equal(x.numpy(), y.numpy()), key


def test_round_trip_all_fields(tmp_path: Path) -> None:
    path = tmp_path / "f.h5"
    feats = {"a.jpg": make_features(seed=1), "b.jpg": make_features(optional=False, seed=2),
             "empty.jpg": make_features(n=0), "empty_opt.jpg": make_features(n=0, optional=False)}
    with FeatureStore(path, "w", attrs=ATTRS) as store:
        for name, f in feats.items():
            store.put(name, f)
        for name, f in feats.items():  # from the journal
            assert_same(store.get(name), f)
    with FeatureStore(path) as store:  # from the committed file
        for name, f in feats.items():
            assert_same(store[name], f)
        assert tuple(store["empty.jpg"].keypoints.shape) == (0, 2)
        assert tuple(store["empty.jpg"].descriptors.shape) == (0, 8)
        assert store.get("a.jpg", device="cpu").keypoints.device.type == "cpu"
    assert not Path(f"{path}.journal").exists()


def test_nested_names_and_listing(tmp_path: Path) -> None:
    path = tmp_path / "f.h5"
    names = ["sub", "sub/a.jpg", "sub/deeper/b.png", "z.jpg", "a b/ü.jpg"]
    with FeatureStore(path, "w") as store:
        for i, name in enumerate(names):
            store.put(name, make_features(seed=i))
        assert store.names() == sorted(names)
    with FeatureStore(path) as store:
        assert store.names() == sorted(names) == list(store)
        assert len(store) == len(names)
        assert "sub/a.jpg" in store and "sub/deeper" not in store and "nope" not in store
        for i, name in enumerate(names):
            assert_same(store[name], make_features(seed=i))
    with h5py.File(path, "r") as f:
        assert isinstance(f["sub/deeper/b.png/keypoints"], h5py.Dataset)


def test_float16_descriptors(tmp_path: Path) -> None:
    path = tmp_path / "f.h5"
    feats = make_features(n=50, d=64)
    with FeatureStore(path, "w", descriptor_dtype="float16") as store:
        store.put("a", feats)
        assert_same(store["a"], feats, atol=1e-3)
    with h5py.File(path, "r") as f:
        assert f["a/descriptors"].dtype == np.float16 and f["a/keypoints"].dtype == np.float32
    with FeatureStore(path, "a") as store:  # a resumed store keeps its dtype
        assert store.attrs["descriptor_dtype"] == "float16"
        back = store["a"]
        assert back.descriptors.dtype == torch.float32
        assert_same(back, feats, atol=1e-3)
        assert torch.equal(back.keypoints, feats.keypoints)


def test_attrs(tmp_path: Path) -> None:
    path = tmp_path / "f.h5"
    with FeatureStore(path, "w", attrs={**ATTRS, "note": "x", "size": 3, "ok": True}) as store:
        store.put("a", make_features())
    attrs = FeatureStore(path).attrs
    assert attrs["config"] == ATTRS["config"] and attrs["model"] == "delf" and attrs["weights_sha256"] == "ab" * 32
    assert attrs["note"] == "x" and attrs["size"] == 3 and attrs["ok"] is True
    assert attrs["format"] == "delfi-features" and attrs["format_version"] == 1
    assert attrs["coordinate_convention"] == COORDINATE_CONVENTION and "delfi_version" in attrs
    with h5py.File(path, "r") as f:
        assert isinstance(f.attrs["config"], str)
    with pytest.raises(ValueError, match="format"):
        FeatureStore(tmp_path / "g.h5", "w", attrs={"format": "x"})
    with pytest.raises(TypeError, match="note"):
        FeatureStore(tmp_path / "g.h5", "w", attrs={"note": [1, 2]})


def test_resume_and_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "f.h5"
    with FeatureStore(path, "a", attrs=ATTRS) as store:
        store.put("a", make_features(seed=1))
        store.put("b", make_features(seed=2))
    with FeatureStore(path, "a", attrs=ATTRS) as store:
        assert store.names() == ["a", "b"]
        store.put("c", make_features(seed=3))
        store.put("a", make_features(seed=4))  # overwrite a committed entry
        assert_same(store["a"], make_features(seed=4))
        store.put("c", make_features(seed=5))  # overwrite a journaled entry
        assert len(store) == 3
    with FeatureStore(path) as store:
        assert store.names() == ["a", "b", "c"]
        assert_same(store["a"], make_features(seed=4))
        assert_same(store["b"], make_features(seed=2))
        assert_same(store["c"], make_features(seed=5))


@pytest.mark.parametrize("key", ["model", "weights_sha256", "config"])
def test_mismatch(tmp_path: Path, key: str) -> None:
    path = tmp_path / "f.h5"
    with FeatureStore(path, "w", attrs=ATTRS) as store:
        store.put("a", make_features())
    other = {**ATTRS, key: {"max_keypoints": 5} if key == "config" else "other"}
    with pytest.raises(StoreMismatchError, match=key) as info:
        FeatureStore(path, "a", attrs=other)
    message = str(info.value)
    assert str(path) in message and "start afresh with --overwrite (mode='w' in Python) or use another path" in message
    if key == "config":  # only the differing nested keys, not both whole configs
        assert "config.max_keypoints: stored 1000, given 5" in message
        assert "config.scales: stored [0.5, 1.0], given (absent)" in message
    else:
        assert f"{key}: stored {ATTRS[key]!r}, given 'other'" in message
    assert "model" not in message or key == "model"
    assert len(message) < 250 + len(str(path))
    FeatureStore(path, "a").close()  # no attrs given: no check
    with FeatureStore(path, "w", attrs=other) as store:  # "w" starts afresh
        assert len(store) == 0
    assert FeatureStore(path).attrs[key] == other[key]


def test_mismatch_against_journal_only(tmp_path: Path) -> None:
    path = tmp_path / "f.h5"
    first = FeatureStore(path, "w", attrs=ATTRS)
    first.put("a", make_features())
    assert not path.exists()
    with pytest.raises(StoreMismatchError, match="model"):
        FeatureStore(path, "a", attrs={**ATTRS, "model": "r2d2"})
    first.close()
    assert FeatureStore(path).names() == ["a"]


def test_w_starts_afresh(tmp_path: Path) -> None:
    path = tmp_path / "f.h5"
    with FeatureStore(path, "w") as store:
        store.put("a", make_features())
    store = FeatureStore(path, "a")
    store.put("b", make_features())  # journaled, not committed
    with pytest.raises(StoreBusyError, match=r"f\.h5.*another delfi run"):
        FeatureStore(path, "w")  # a live writer's work is not deleted
    assert_same(store["b"], make_features())
    store.close()
    assert FeatureStore(path).names() == ["a", "b"]
    with FeatureStore(path, "w") as fresh:
        assert len(fresh) == 0 and not path.exists() and not any(Path(f"{path}.journal").glob("*.npz"))
        fresh.put("c", make_features())
    assert FeatureStore(path).names() == ["c"]


def test_read_errors(tmp_path: Path) -> None:
    missing = tmp_path / "missing.h5"
    with pytest.raises(FileNotFoundError, match="missing.h5"):
        FeatureStore(missing)
    assert not missing.exists()
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(ValueError, match="foreign.h5.*not a delfi feature file"):
        FeatureStore(foreign)
    with pytest.raises(ValueError, match="foreign.h5"):
        FeatureStore(foreign, "a")
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"not hdf5 at all")
    with pytest.raises(ValueError, match="garbage.h5"):
        FeatureStore(garbage)
    path = tmp_path / "f.h5"
    with FeatureStore(path, "w") as store:
        store.put("a", make_features())
    with FeatureStore(path) as store:
        with pytest.raises(KeyError, match=r"nope.*f\.h5"):
            store.get("nope")
        with pytest.raises(PermissionError):
            store.put("b", make_features())
    with pytest.raises(ValueError, match="mode"):
        FeatureStore(path, "x")


@pytest.mark.parametrize("name", ["", "/a.jpg", "a/../b.jpg", "./a.jpg", "a//b.jpg", "a/", "x/keypoints"])
def test_invalid_names(tmp_path: Path, name: str) -> None:
    with FeatureStore(tmp_path / "f.h5", "w") as store:
        with pytest.raises(ValueError):
            store.put(name, make_features())


def test_journal_visible_before_commit(tmp_path: Path) -> None:
    path = tmp_path / "f.h5"
    with FeatureStore(path, "w", attrs=ATTRS) as store:
        store.put("a", make_features(seed=1))
        store.commit()
        store.put("b", make_features(seed=2))
        with h5py.File(path, "r") as f:
            assert "b" not in f
        reader = FeatureStore(path)
        assert reader.names() == ["a", "b"] and reader.attrs["model"] == "delf"
        assert_same(reader["b"], make_features(seed=2))
        reader.close()
    assert not Path(f"{path}.journal").exists()


def test_reader_survives_a_concurrent_commit(tmp_path: Path) -> None:
    path = tmp_path / "f.h5"
    writer = FeatureStore(path, "w")
    writer.put("a", make_features(seed=1))
    writer.commit()
    writer.put("b", make_features(seed=2))
    reader = FeatureStore(path)
    assert_same(reader["a"], make_features(seed=1))  # opens the committed file
    writer.close()  # merges "b" and deletes its journal file under the reader's feet
    assert_same(reader["b"], make_features(seed=2))
    assert_same(reader["a"], make_features(seed=1))
    reader.close()


def test_journal_only_store_is_readable(tmp_path: Path) -> None:
    path = tmp_path / "f.h5"
    writer = FeatureStore(path, "w", attrs=ATTRS)
    writer.put("a", make_features())
    with FeatureStore(path) as reader:  # nothing committed yet: the journal alone is a store
        assert reader.names() == ["a"] and reader.attrs["config"] == ATTRS["config"]
    writer.close()


def test_temp_files_ignored_and_cleaned(tmp_path: Path) -> None:
    path = tmp_path / "f.h5"
    journal = Path(f"{path}.journal")
    with FeatureStore(path, "w") as store:
        store.put("a", make_features())
        (journal / f".tmp-999999999-{'de' * 16}").write_bytes(b"PK\x03\x04 half an npz")
        (journal / "notes.txt").write_text("unrelated")
        assert FeatureStore(path).names() == ["a"]
    assert (journal / f".tmp-999999999-{'de' * 16}").exists()  # ignored, not ours to delete while it runs
    stale_h5 = tmp_path / "f.h5.tmp-999999999"
    stale_h5.write_bytes(b"half a copy")
    with FeatureStore(path) as reader:  # readers modify nothing
        assert reader.names() == ["a"]
    assert stale_h5.exists()
    with FeatureStore(path, "a") as store:  # writers remove temps of dead processes
        assert store.names() == ["a"]
    assert not stale_h5.exists() and not (journal / f".tmp-999999999-{'de' * 16}").exists()
    assert (journal / "notes.txt").read_text() == "unrelated"  # not delfi's: never deleted


def test_already_merged_journal_is_recognised(tmp_path: Path) -> None:
    """Simulate a kill after the atomic replace but before the journal was cleaned up."""
    path = tmp_path / "f.h5"
    journal = Path(f"{path}.journal")
    store = FeatureStore(path, "w")
    store.put("a", make_features(seed=1))
    saved = tmp_path / "saved"
    shutil.copytree(journal, saved)
    store.close()
    shutil.copytree(saved, journal)
    with FeatureStore(path) as reader:
        assert reader.names() == ["a"]
        assert_same(reader["a"], make_features(seed=1))
    assert any(journal.glob("*.npz"))  # the reader left it alone
    with FeatureStore(path, "a") as store:
        assert store.names() == ["a"]
        assert not any(journal.glob("*.npz"))  # recognised as merged and deleted
    assert not journal.exists()  # nothing left to merge: the directory goes too
    with h5py.File(path, "r") as f:
        assert list(f) == ["a"] and f["a"].attrs["complete"]


def test_exit_commits_on_exception(tmp_path: Path) -> None:
    path = tmp_path / "f.h5"
    with pytest.raises(RuntimeError):
        with FeatureStore(path, "w") as store:
            store.put("a", make_features())
            raise RuntimeError("boom")
    with h5py.File(path, "r") as f:
        assert "a" in f and f["a"].attrs["complete"]


def test_commit_every(tmp_path: Path) -> None:
    path = tmp_path / "f.h5"
    with FeatureStore(path, "w", commit_every=3) as store:
        for i in range(7):
            store.put(f"{i}", make_features(seed=i))
        with h5py.File(path, "r") as f:
            assert sorted(f) == [str(i) for i in range(6)]
        assert len(store) == 7
    with FeatureStore(path) as store:
        assert len(store) == 7


# ------------------------------------------------------------------------------ the crash test
N_ENTRIES, N_POINTS, DIM, COMMIT_EVERY = 400, 1000, 128, 50

MAKE_SRC = """
def entry_name(i):
    return f"d{i % 7}/img{i:04d}.jpg"

def make_entry(i):
    n = N_POINTS + i % 5
    kp = np.stack([np.arange(n, dtype=np.float32), np.full(n, i, dtype=np.float32)], axis=1)
    desc = np.full((n, DIM), i, dtype=np.float32)
    desc[:, 0] = np.arange(n)
    arrays = {"keypoints": kp, "scores": np.full(n, i / 7, dtype=np.float32), "descriptors": desc,
              "scales": np.full(n, -i, dtype=np.float32), "global_descriptor": np.full(16, i, dtype=np.float32)}
    return Features.from_numpy(arrays, image_size=(1000 + i, 500 + i))
"""

WRITER_SRC = f"""
import sys
import numpy as np
from delfi.io.features import FeatureStore
from delfi.types import Features
N_POINTS, DIM = {N_POINTS}, {DIM}
{MAKE_SRC}
with FeatureStore(sys.argv[1], "a", attrs={{"model": "crash"}}, commit_every={COMMIT_EVERY}) as store:
    print("ready", flush=True)
    for i in range({N_ENTRIES}):
        if entry_name(i) not in store:
            store.put(entry_name(i), make_entry(i))
            print(i, flush=True)
"""


def _check_store(path: Path, make_entry, entry_name) -> list[str]:
    if path.exists():  # the committed file itself is always a readable, consistent HDF5 file
        with h5py.File(path, "r") as f:
            assert f.attrs["format"] == "delfi-features"
    with FeatureStore(path) as store:
        expected = {entry_name(i): i for i in range(N_ENTRIES)}
        names = store.names()
        for name in names:
            assert_same(store[name], make_entry(expected[name]))
        return names


def test_sigkill_during_writes(tmp_path: Path) -> None:
    namespace = {"np": np, "Features": Features, "N_POINTS": N_POINTS, "DIM": DIM}
    exec(MAKE_SRC, namespace)
    make_entry, entry_name = namespace["make_entry"], namespace["entry_name"]
    script = tmp_path / "writer.py"
    script.write_text(WRITER_SRC)
    path = tmp_path / "store.h5"
    rng = random.Random(1234)
    # kill after a random number of puts plus a random delay, so kills land in puts and in commits
    plan = [(rng.randint(1, 60), rng.uniform(0.0, 0.3)) for _ in range(6)]
    counts, killed = [], 0
    for puts, delay in plan:
        proc = subprocess.Popen([sys.executable, str(script), str(path)], stdout=subprocess.PIPE)
        assert proc.stdout.readline().strip() == b"ready"
        for _ in range(puts):
            if not proc.stdout.readline():
                break
        time.sleep(delay)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed += 1
        proc.wait()
        proc.stdout.close()
        names = _check_store(path, make_entry, entry_name)
        assert not counts or len(names) >= counts[-1], (plan, counts)
        counts.append(len(names))
    assert killed >= 5 and counts[0] < N_ENTRIES, (plan, counts)
    done = subprocess.run([sys.executable, str(script), str(path)], capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    names = _check_store(path, make_entry, entry_name)
    assert sorted(names) == sorted(entry_name(i) for i in range(N_ENTRIES))
    assert not Path(f"{path}.journal").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("store.h5")] == ["store.h5"]


def test_resume_ignores_the_spelling_of_file_settings_but_not_their_content(tmp_path):
    """``weights`` / ``pca`` name files: ``ckpt.pt`` and ``/abs/ckpt.pt`` resume one store (their
    content is checked through ``weights_sha256`` / ``pca_sha256``); other content is refused."""
    import pytest

    from delfi.io.features import FeatureStore, StoreMismatchError

    def attrs(weights: str, sha: str, pca_sha: str | None = None) -> dict:
        found = {"model": "r2d2", "weights_sha256": sha, "config": {"weights": weights, "top_k": 5}}
        return {**found, "pca_sha256": pca_sha} if pca_sha else found

    path = tmp_path / "f.h5"
    FeatureStore(path, "a", attrs=attrs("ckpt.pt", "a" * 64, "p" * 64)).close()
    with FeatureStore(path, "a", attrs=attrs(str(tmp_path / "ckpt.pt"), "a" * 64, "p" * 64)) as store:
        assert store.attrs["config"]["weights"] == str(tmp_path / "ckpt.pt")  # the latest spelling is kept
    with pytest.raises(StoreMismatchError, match="weights_sha256"):
        FeatureStore(path, "a", attrs=attrs("ckpt.pt", "b" * 64, "p" * 64))
    with pytest.raises(StoreMismatchError, match="pca_sha256"):
        FeatureStore(path, "a", attrs=attrs("ckpt.pt", "a" * 64, "q" * 64))
