"""Tests of the HDF5 match store (delfi.io.matches), including a short SIGKILL crash test."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import h5py
import numpy as np
import pytest
import torch

from delfi.io.features import FeatureStore
from delfi.io.matches import MatchStore, StoreMismatchError, pair_path, reverse_matches
from delfi.types import Matches

ATTRS = {"model": "delf", "weights_sha256": "cd" * 32, "config": {"matching": {"ratio": 0.8}}}


def make_matches(k: int = 23, *, optional: bool = True, kind: str = "homography", seed: int = 0) -> Matches:
    g = torch.Generator().manual_seed(seed)
    model = torch.tensor([[1.1, 0.02, 5.0], [-0.03, 0.95, -7.0], [1e-4, 2e-4, 1.0]], dtype=torch.float64)
    if kind == "affine":
        model[2] = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    return Matches(
        indices=torch.randint(0, 70000, (k, 2), generator=g),  # > int16 range on purpose
        scores=torch.rand(k, generator=g),
        inliers=torch.rand(k, generator=g) > 0.5 if optional else None,
        model=model + seed * (kind != "affine") if optional else None,
        kind=kind if optional else None,
        meta={"status": "ok", "iterations": 100 + seed, "ratio": 0.5} if optional else {},
    )


def assert_same(a: Matches, b: Matches) -> None:
    assert a.indices.dtype == torch.int64 and b.indices.dtype == torch.int64
    assert torch.equal(a.indices, b.indices)
    assert a.scores.dtype == torch.float32 and torch.equal(a.scores, b.scores.float())
    for key in ("inliers", "model"):
        x, y = getattr(a, key), getattr(b, key)
        if x is None or y is None:
            assert x is None and y is None, key
        else:
            assert x.dtype == y.dtype and torch.equal(x, y), key
    assert a.kind == b.kind and a.meta == b.meta


def test_round_trip_all_fields(tmp_path: Path) -> None:
    path = tmp_path / "m.h5"
    entries = {("a.jpg", "b.jpg"): make_matches(seed=1), ("b.jpg", "c.jpg"): make_matches(optional=False, seed=2),
               ("a.jpg", "c.jpg"): make_matches(k=0), ("c.jpg", "d.jpg"): make_matches(k=0, optional=False),
               ("d.jpg", "e.jpg"): make_matches(kind="fundamental", seed=3)}
    with MatchStore(path, "w", attrs=ATTRS) as store:
        for (n0, n1), m in entries.items():
            store.put(n0, n1, m)
        for (n0, n1), m in entries.items():  # from the journal
            assert_same(store.get(n0, n1), m)
    with MatchStore(path) as store:  # from the committed file
        for (n0, n1), m in entries.items():
            assert_same(store.get(n0, n1), m)
            assert_same(store[n0, n1], m)
        assert store.pairs() == sorted(entries) == list(store) and len(store) == len(entries)
        empty = store.get("a.jpg", "c.jpg")
        assert tuple(empty.indices.shape) == (0, 2) and tuple(empty.scores.shape) == (0,)
        assert empty.inliers is not None and tuple(empty.inliers.shape) == (0,)
        assert store.get("a.jpg", "b.jpg", device="cpu").indices.device.type == "cpu"
        assert store.attrs["format"] == "delfi-matches" and store.attrs["config"] == ATTRS["config"]
    with h5py.File(path, "r") as f:
        group = f["a.jpg/b.jpg"]
        assert group["indices"].dtype == np.int64 and group["scores"].dtype == np.float32
        assert group["inliers"].dtype == np.bool_ and group["model"].dtype == np.float64
        assert group.attrs["name0"] == "a.jpg" and group.attrs["kind"] == "homography"
        assert isinstance(group.attrs["meta"], str) and f.attrs["format"] == "delfi-matches"
        assert "kind" not in f["b.jpg/c.jpg"].attrs and "inliers" not in f["b.jpg/c.jpg"]
    assert not Path(f"{path}.journal").exists()


def test_small_indices_are_stored_as_int64(tmp_path: Path) -> None:
    path = tmp_path / "m.h5"
    m = Matches(indices=torch.tensor([[0, 1], [2, 3]], dtype=torch.int16), scores=torch.ones(2, dtype=torch.float64))
    with MatchStore(path, "w") as store:
        store.put("a", "b", m)
    with h5py.File(path, "r") as f:
        assert f["a/b/indices"].dtype == np.int64 and f["a/b/scores"].dtype == np.float32
    back = MatchStore(path).get("a", "b")
    assert back.indices.dtype == torch.int64 and back.indices.tolist() == [[0, 1], [2, 3]]


NAMES = ["sub/a.jpg", "sub/deeper/b.png", "a b.jpg", "100%.jpg", "%2F.jpg", "ü/ñ 日本.jpg", "a", "sub", ".hidden"]


def test_odd_names(tmp_path: Path) -> None:
    path = tmp_path / "m.h5"
    pairs = [(a, b) for a in NAMES for b in NAMES if a != b]
    with MatchStore(path, "w") as store:
        for i, (a, b) in enumerate(pairs):
            store.put(a, b, make_matches(k=3, seed=i))
        assert store.pairs() == sorted(pairs)
    with MatchStore(path) as store:
        assert store.pairs() == sorted(pairs)
        for i, (a, b) in enumerate(pairs):
            assert (a, b) in store
            assert_same(store.get(a, b), make_matches(k=3, seed=i))
        assert ("sub", "a.jpg") not in store and ("a", "a") not in store and "a" not in store
        assert ("x", "") not in store and ("a",) not in store
    with h5py.File(path, "r") as f:  # exactly two levels; original names kept as attrs
        assert set(f) == {quote(n, safe="") for n in NAMES}
        group = f[pair_path("sub/a.jpg", "%2F.jpg")]
        assert group.name == "/sub%2Fa.jpg/%252F.jpg"
        assert group.attrs["name0"] == "sub/a.jpg" and group.attrs["name1"] == "%2F.jpg"


@pytest.mark.parametrize("name", ["", ".", ".."])
def test_invalid_names(tmp_path: Path, name: str) -> None:
    with MatchStore(tmp_path / "m.h5", "w") as store:
        with pytest.raises(ValueError):
            store.put(name, "b", make_matches())
        with pytest.raises(ValueError):
            store.put("a", name, make_matches())
        with pytest.raises(TypeError):
            store.put("a", 3, make_matches())


def test_reversed_lookup(tmp_path: Path) -> None:
    path = tmp_path / "m.h5"
    h = torch.tensor([[1.2, 0.1, 30.0], [-0.05, 0.9, -12.0], [2e-4, -1e-4, 1.0]], dtype=torch.float64)
    f_mat = torch.arange(9, dtype=torch.float64).reshape(3, 3)
    with MatchStore(path, "w") as store:
        store.put("a", "b", Matches(indices=torch.tensor([[0, 5], [1, 7], [2, 9]]),
                                    scores=torch.tensor([0.9, 0.8, 0.7]), inliers=torch.tensor([True, False, True]),
                                    model=h, kind="homography", meta={"status": "ok"}))
        store.put("c", "d", make_matches(kind="fundamental"))
        store.put("e", "f", make_matches(kind="affine"))
        store.put("g", "h", make_matches(optional=False))
        store.put("i", "j", Matches(indices=torch.zeros(0, 2, dtype=torch.int64), scores=torch.zeros(0), model=f_mat,
                                    kind="fundamental"))
    with MatchStore(path) as store:
        with pytest.raises(KeyError, match=r"'b', 'a'"):
            store.get("b", "a")
        ba = store.get("b", "a", allow_reversed=True)
        assert ba.indices.dtype == torch.int64 and ba.indices.tolist() == [[5, 0], [7, 1], [9, 2]]
        assert ba.scores.tolist() == pytest.approx([0.9, 0.8, 0.7]) and ba.inliers.tolist() == [True, False, True]
        assert ba.kind == "homography" and ba.meta == {"status": "ok"} and ba.model.dtype == torch.float64
        assert float(ba.model[2, 2]) == pytest.approx(1.0)
        x0 = torch.tensor([10.0, 20.0, 1.0], dtype=torch.float64)
        x1 = h @ x0
        back = ba.model @ x1
        torch.testing.assert_close(back / back[2], x0)
        torch.testing.assert_close(ba.model @ h / (ba.model @ h)[2, 2], torch.eye(3, dtype=torch.float64))
        assert_same(store.get("a", "b", allow_reversed=True), store.get("a", "b"))  # stored direction wins
        dc = store.get("d", "c", allow_reversed=True)
        assert torch.equal(dc.model, store.get("c", "d").model.T)
        fe = store.get("f", "e", allow_reversed=True)
        assert fe.model[2].tolist() == [0.0, 0.0, 1.0]
        torch.testing.assert_close(fe.model @ store.get("e", "f").model, torch.eye(3, dtype=torch.float64))
        hg = store.get("h", "g", allow_reversed=True)
        assert hg.model is None and torch.equal(hg.indices, store.get("g", "h").indices.flip(1))
        assert torch.equal(store.get("j", "i", allow_reversed=True).model, f_mat.T)
        with pytest.raises(KeyError, match="reversed"):
            store.get("x", "y", allow_reversed=True)
    with pytest.raises(ValueError, match="kind"):
        reverse_matches(Matches(indices=torch.zeros(0, 2, dtype=torch.int64), scores=torch.zeros(0),
                                model=torch.eye(3, dtype=torch.float64)))
    with pytest.raises(ValueError, match="singular"):
        reverse_matches(Matches(indices=torch.zeros(0, 2, dtype=torch.int64), scores=torch.zeros(0),
                                model=torch.zeros(3, 3, dtype=torch.float64), kind="homography"))


def test_meta_json(tmp_path: Path) -> None:
    path = tmp_path / "m.h5"
    meta = {"status": "not enough matches", "required": np.int64(4), "arr": np.arange(3), "nested": {"x": [1.5]}}
    with MatchStore(path, "w") as store:
        store.put("a", "b", Matches(indices=torch.zeros(0, 2, dtype=torch.int64), scores=torch.zeros(0), meta=meta))
        with pytest.raises(TypeError, match="meta"):
            store.put("a", "c", Matches(indices=torch.zeros(0, 2, dtype=torch.int64), scores=torch.zeros(0),
                                        meta={"bad": object()}))
    expected = {"status": "not enough matches", "required": 4, "arr": [0, 1, 2], "nested": {"x": [1.5]}}
    assert MatchStore(path).get("a", "b").meta == expected
    assert MatchStore(path).pairs() == [("a", "b")]


def test_resume_and_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "m.h5"
    with MatchStore(path, "a", attrs=ATTRS) as store:
        store.put("a", "b", make_matches(seed=1))
        store.put("b", "c", make_matches(seed=2))
    with MatchStore(path, "a", attrs=ATTRS) as store:
        assert store.pairs() == [("a", "b"), ("b", "c")]
        store.put("a", "b", make_matches(optional=False, seed=4))  # overwrite: optional fields must go
        store.put("c", "d", make_matches(seed=3))
        store.put("c", "d", make_matches(seed=5))  # overwrite a journaled entry
        assert len(store) == 3
    with MatchStore(path) as store:
        assert store.pairs() == [("a", "b"), ("b", "c"), ("c", "d")]
        assert_same(store.get("a", "b"), make_matches(optional=False, seed=4))
        assert_same(store.get("b", "c"), make_matches(seed=2))
        assert_same(store.get("c", "d"), make_matches(seed=5))
    with h5py.File(path, "r") as f:
        assert "kind" not in f["a/b"].attrs and "model" not in f["a/b"]


@pytest.mark.parametrize("key", ["model", "weights_sha256", "config"])
def test_mismatch(tmp_path: Path, key: str) -> None:
    path = tmp_path / "m.h5"
    with MatchStore(path, "w", attrs=ATTRS) as store:
        store.put("a", "b", make_matches())
    other = {**ATTRS, key: {"matching": {"ratio": 0.9}} if key == "config" else "other"}
    with pytest.raises(StoreMismatchError, match=key) as info:
        MatchStore(path, "a", attrs=other)
    assert "match store" in str(info.value) and str(path) in str(info.value)
    MatchStore(path, "a").close()  # no attrs given: no check
    with MatchStore(path, "w", attrs=other) as store:  # "w" starts afresh
        assert len(store) == 0
    assert MatchStore(path).attrs[key] == other[key]


def test_journal_only_and_mismatch_against_journal(tmp_path: Path) -> None:
    path = tmp_path / "m.h5"
    writer = MatchStore(path, "w", attrs=ATTRS)
    writer.put("a", "b", make_matches())
    assert not path.exists()
    with MatchStore(path) as reader:
        assert reader.pairs() == [("a", "b")] and reader.attrs["model"] == "delf"
        assert_same(reader.get("a", "b"), make_matches())
    with pytest.raises(StoreMismatchError, match="model"):
        MatchStore(path, "a", attrs={**ATTRS, "model": "r2d2"})
    writer.close()
    assert MatchStore(path).pairs() == [("a", "b")]


def test_read_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="match store.*missing.h5"):
        MatchStore(tmp_path / "missing.h5")
    features = tmp_path / "features.h5"
    FeatureStore(features, "w").close()
    with pytest.raises(ValueError, match="not a delfi match file"):
        MatchStore(features)
    path = tmp_path / "m.h5"
    with MatchStore(path, "w", commit_every=2) as store:
        for i in range(5):
            store.put(f"{i}", "x", make_matches(seed=i))
        with h5py.File(path, "r") as f:
            assert sorted(f) == ["0", "1", "2", "3"]
    with MatchStore(path) as store:
        assert len(store) == 5
        with pytest.raises(PermissionError):
            store.put("a", "b", make_matches())
        with pytest.raises(KeyError, match="m.h5"):
            store.get("x", "0")
    with pytest.raises(ValueError, match="not a delfi feature file"):
        FeatureStore(path)


# ------------------------------------------------------------------------------ the crash test
N_PAIRS, K, COMMIT_EVERY = 120, 3000, 20

MAKE_SRC = """
def pair(i):
    return f"d{i % 5}/img {i:04d}.jpg", f"db/{i % 3}%/x{i}.jpg"

def make_entry(i):
    k = K + i % 7
    idx = np.stack([np.arange(k), np.arange(k) * 3 + i + 40000], axis=1).astype(np.int64)
    inl = (np.arange(k) % (2 + i % 3)) == 0
    model = np.arange(9, dtype=np.float64).reshape(3, 3) + i
    return Matches(torch.from_numpy(idx), torch.full((k,), i / 7), torch.from_numpy(inl), torch.from_numpy(model),
                   "fundamental" if i % 2 else "homography", {"i": i})
"""

WRITER_SRC = f"""
import sys
import numpy as np
import torch
from delfi.io.matches import MatchStore
from delfi.types import Matches
K = {K}
{MAKE_SRC}
gated = len(sys.argv) > 2  # then each put waits for a permit (a line on stdin)
with MatchStore(sys.argv[1], "a", attrs={{"model": "crash"}}, commit_every={COMMIT_EVERY}) as store:
    print("ready", flush=True)
    for i in range({N_PAIRS}):
        if pair(i) not in store:
            if gated and not sys.stdin.readline():
                break
            store.put(*pair(i), make_entry(i))
            print(i, flush=True)
"""


def _check_store(path: Path, make_entry, pair) -> list[tuple[str, str]]:
    if path.exists():  # the committed file itself is always a readable, consistent HDF5 file
        with h5py.File(path, "r") as f:
            assert f.attrs["format"] == "delfi-matches"
    with MatchStore(path) as store:
        expected = {pair(i): i for i in range(N_PAIRS)}
        pairs = store.pairs()
        for p in pairs:
            assert_same(store.get(*p), make_entry(expected[p]))
        return pairs


def test_sigkill_during_writes(tmp_path: Path) -> None:
    namespace = {"np": np, "torch": torch, "Matches": Matches, "K": K}
    exec(MAKE_SRC, namespace)
    make_entry, pair = namespace["make_entry"], namespace["pair"]
    script = tmp_path / "writer.py"
    script.write_text(WRITER_SRC)
    path = tmp_path / "store.h5"
    rng = random.Random(4321)
    # Each writer gets permits for puts + extra entries (so a slow test process on a busy machine
    # cannot let it run to the end), then is killed a random delay after its puts-th entry: while
    # it puts, commits or waits for a permit. 3 * (35 + 3) < N_PAIRS, so every writer is killed.
    plan = [(rng.randint(1, 35), rng.randint(0, 3), rng.uniform(0.0, 0.1)) for _ in range(3)]
    counts, killed = [], 0
    for puts, extra, delay in plan:
        proc = subprocess.Popen([sys.executable, str(script), str(path), "gated"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE)
        proc.stdin.write(b"\n" * (puts + extra))
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == b"ready"
        for _ in range(puts):
            if not proc.stdout.readline():
                break
        time.sleep(delay)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed += 1
        proc.wait()
        proc.stdin.close()
        proc.stdout.close()
        pairs = _check_store(path, make_entry, pair)
        assert not counts or len(pairs) >= counts[-1], (plan, counts)
        counts.append(len(pairs))
    assert killed == 3 and counts[-1] < N_PAIRS, (plan, counts)
    done = subprocess.run([sys.executable, str(script), str(path)], capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    pairs = _check_store(path, make_entry, pair)
    assert sorted(pairs) == sorted(pair(i) for i in range(N_PAIRS))
    assert not Path(f"{path}.journal").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("store.h5")] == ["store.h5"]
