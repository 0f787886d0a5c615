"""Safety of the journaled HDF5 stores (delfi.io.journal): concurrent writers in separate processes,
stale-temp cleanup that only touches delfi's own files, clear errors for damaged files, journal files
and entries, and the short settings-mismatch message."""

from __future__ import annotations

import json
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from delfi.io.features import EntryError, FeatureStore, StoreBusyError, StoreError, StoreMismatchError
from delfi.io.journal import _journal_name
from delfi.io.matches import MatchStore, pair_path
from delfi.types import Features, Matches

MAKE_SRC = '''
def make(seed):
    rng = np.random.default_rng(seed)
    n = 3 + seed % 4
    return Features.from_numpy({"keypoints": rng.random((n, 2), dtype=np.float32) * 50,
                                "scores": rng.random(n, dtype=np.float32),
                                "descriptors": rng.random((n, 4), dtype=np.float32)}, image_size=(64, 48))
'''
_ns: dict = {"np": np, "Features": Features}
exec(MAKE_SRC, _ns)
make = _ns["make"]

# A writer process driven line by line over stdin; it answers every command with one line ("ok",
# "bad" or "error <type> <message>"). With "pause on", a commit answers "copied" right after copying
# the committed file and waits for "go": the test uses that to run another writer's commit meanwhile.
WRITER_SRC = f'''
import shutil
import sys
import numpy as np
from delfi.io.features import FeatureStore
from delfi.types import Features
{MAKE_SRC}
real_copy, pause = shutil.copyfile, False

def copy_then_wait(src, dst, **kwargs):
    out = real_copy(src, dst, **kwargs)
    if pause:
        print("copied", flush=True)
        if sys.stdin.readline().strip() != "go":
            raise SystemExit("expected go")
    return out

shutil.copyfile = copy_then_wait
store = None
for line in sys.stdin:
    cmd, *args = line.split()
    try:
        if cmd == "open":
            store = FeatureStore(args[0], args[1], attrs={{"model": "m"}})
        elif cmd == "put":
            store.put(args[0], make(int(args[1])))
        elif cmd == "get":
            if not np.array_equal(store.get(args[0]).descriptors.numpy(), make(int(args[1])).descriptors.numpy()):
                print("bad", flush=True)
                continue
        elif cmd == "commit":
            store.commit()
        elif cmd == "pause":
            pause = args[0] == "on"
        elif cmd == "close":
            store.close()
    except Exception as exc:
        print("error", type(exc).__name__, str(exc).replace(chr(10), " "), flush=True)
        continue
    print("ok", flush=True)
'''


class Writer:
    """A writer process; every request waits for its answer (explicit synchronisation, no sleeps)."""

    def __init__(self, script: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
        self._watchdog = threading.Timer(300, self.proc.kill)  # only so that a bug cannot hang the test run
        self._watchdog.start()

    def send(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def read(self) -> str:
        return self.proc.stdout.readline().strip()

    def do(self, line: str) -> None:
        self.send(line)
        reply = self.read()
        assert reply == "ok", (line, reply)

    def stop(self) -> None:
        self._watchdog.cancel()
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait()
        self.proc.stdout.close()


@pytest.fixture
def writers(tmp_path: Path):
    script = tmp_path / "writer.py"
    script.write_text(WRITER_SRC)
    started = [Writer(script), Writer(script)]
    yield started
    for w in started:
        w.proc.kill()
        w.stop()


def _overlapping_commits(first: Writer, second: Writer) -> None:
    """``second`` asks to commit while ``first`` is inside its commit (after copying the file)."""
    first.do("pause on")
    second.do("pause on")
    first.send("commit")
    reply = first.read()
    assert reply == "copied"  # it has entries to merge
    second.send("commit")  # waits for the commit lock until first is done
    first.send("go")
    assert first.read() == "ok"
    reply = second.read()
    if reply == "copied":  # second had entries left to merge
        second.send("go")
        reply = second.read()
    assert reply == "ok"
    first.do("pause off")
    second.do("pause off")


def test_concurrent_writers_keep_every_entry(tmp_path: Path, writers: list[Writer]) -> None:
    a, b = writers
    for round_ in range(4):
        rng = random.Random(round_)
        folder = tmp_path / f"round{round_}"
        folder.mkdir()
        path = folder / "f.h5"
        with FeatureStore(path, "w", attrs={"model": "m"}) as store:  # a committed file to copy
            store.put("seed", make(0))
        expected = {"seed": 0}
        a.do(f"open {path} a")
        b.do(f"open {path} a")
        for step in range(14):
            op = rng.choice(["put", "put", "put", "reput", "get", "commit", "overlap"])
            me, other = (a, b) if rng.random() < 0.5 else (b, a)
            tag = "A" if me is a else "B"
            mine = sorted(n for n in expected if n.startswith(tag))
            if op == "put" or (op in ("reput", "get") and not mine):
                name, seed = f"{tag}/{step}", 100 * round_ + step + 1
                me.do(f"put {name} {seed}")
                expected[name] = seed
            elif op == "reput":  # replace one of its entries (maybe merged by the other writer already)
                name = rng.choice(mine)
                expected[name] = 1000 + 100 * round_ + step
                me.do(f"put {name} {expected[name]}")
            elif op == "get":  # its journal file may have been merged and removed by the other writer
                name = rng.choice(mine)
                me.do(f"get {name} {expected[name]}")
            elif op == "commit":
                me.do("commit")
            else:
                me.do(f"put {tag}/{step}x {step + 1}")
                other.do(f"put {'B' if me is a else 'A'}/{step}y {step + 2}")
                expected[f"{tag}/{step}x"] = step + 1
                expected[f"{'B' if me is a else 'A'}/{step}y"] = step + 2
                _overlapping_commits(me, other)
        a.do(f"put A/last {round_ + 7}")  # every round ends with one overlap at least
        b.do(f"put B/last {round_ + 8}")
        expected["A/last"], expected["B/last"] = round_ + 7, round_ + 8
        _overlapping_commits(a, b)
        a.do("close")
        b.do("close")
        with FeatureStore(path) as store:
            assert store.names() == sorted(expected), round_
            for name, seed in expected.items():
                assert torch.equal(store[name].descriptors, make(seed).descriptors), (round_, name)
        assert sorted(p.name for p in folder.iterdir()) == ["f.h5"]  # no journal, temps or lock files left


def test_overwrite_refused_while_another_process_writes(tmp_path: Path, writers: list[Writer]) -> None:
    a, _ = writers
    path = tmp_path / "f.h5"
    a.do(f"open {path} a")
    a.do("put mine 3")
    with pytest.raises(StoreBusyError, match=r"f\.h5") as info:
        FeatureStore(path, "w")
    assert isinstance(info.value, ValueError)
    a.do("get mine 3")  # the live writer's work is intact
    a.do("close")
    assert FeatureStore(path).names() == ["mine"]
    # a killed writer's locks go with it: "w" may then start afresh
    a.do(f"open {path} a")
    a.do("put killed 4")
    a.proc.send_signal(signal.SIGKILL)
    a.proc.wait()
    with FeatureStore(path, "a") as store:  # resumes the killed run's entry
        assert store.names() == ["killed", "mine"]
    with FeatureStore(path, "w") as store:
        assert len(store) == 0
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("f.h5")) == ["f.h5"]


# ------------------------------------------------------------------------------ only delfi's files go
def test_stale_temp_cleanup_spares_look_alikes(tmp_path: Path) -> None:
    path = tmp_path / "feats.h5"
    journal = Path(f"{path}.journal")
    with FeatureStore(path, "w") as store:
        store.put("a", make(1))
        store.put("b", make(2))
        store.commit()
        store.put("c", make(3))  # journal stays until close
        dead = 999999999
        ours = [tmp_path / f"feats.h5.tmp-{dead}", journal / f".tmp-{dead}-{'0f' * 16}"]
        look_alikes = [tmp_path / n for n in ("feats.h5.tmp-notes.txt", f"feats.h5.tmp-{dead}.bak", "feats.h5.tmp-",
                                             f"feats.h5.tmp-{dead}-x", "feats.h5.tmp-12ab", f"xfeats.h5.tmp-{dead}")]
        look_alikes += [journal / n for n in (".tmp-notes", f".tmp-{dead}-{'0f' * 15}", f".tmp-{dead}-{'0F' * 16}",
                                             f".tmp-{dead}-{'0f' * 16}.keep", "notes.txt", f".tmp-{dead}")]
        for i, p in enumerate(ours + look_alikes):
            p.write_text(f"user data {i}")
    with FeatureStore(path, "a") as store:  # a no-op resume
        assert store.names() == ["a", "b", "c"]
    assert not any(p.exists() for p in ours)
    for i, p in enumerate(look_alikes, start=len(ours)):
        assert p.read_text() == f"user data {i}", p
    with FeatureStore(path, "w"):  # starting afresh removes delfi's journal files only
        pass
    for i, p in enumerate(look_alikes, start=len(ours)):
        assert p.read_text() == f"user data {i}", p


def test_w_replaces_only_delfi_stores_of_its_kind(tmp_path: Path) -> None:
    notes = tmp_path / "notes.h5"
    notes.write_text("my notes")
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = np.arange(3)
    matches = tmp_path / "m.h5"
    MatchStore(matches, "w").close()
    for path in (notes, foreign, matches):
        before = path.read_bytes()
        with pytest.raises(StoreError, match=f"refusing to replace {re.escape(str(path))}"):
            FeatureStore(path, "w")
        assert path.read_bytes() == before
    empty = tmp_path / "empty.h5"
    empty.touch()
    with FeatureStore(empty, "w") as store:
        store.put("a", make(1))
    with FeatureStore(empty, "w") as store:  # a delfi feature store: replaced
        assert len(store) == 0


def test_lock_files(tmp_path: Path) -> None:
    path = tmp_path / "f.h5"
    first, second = FeatureStore(path, "a"), FeatureStore(path, "a")
    first.put("a", make(1))
    second.put("b", make(2))
    first.close()
    assert Path(f"{path}.lock").exists()  # the other writer is still live
    second.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.h5"]
    assert FeatureStore(path).names() == ["a", "b"]
    user_lock = Path(f"{path}.lock")
    user_lock.write_text("not delfi's")
    with FeatureStore(path, "a") as store:
        store.put("c", make(3))
    assert user_lock.read_text() == "not delfi's"  # never deleted
    assert FeatureStore(path).names() == ["a", "b", "c"]


# ------------------------------------------------------------------------------ damaged files
def _store(path: Path, n: int = 30) -> None:
    with FeatureStore(path, "w", attrs={"model": "m", "config": {"top_k": 1000}}) as store:
        for i in range(n):
            store.put(f"img{i:03d}.jpg", make(i))


@pytest.mark.parametrize("damage", ["header", "truncated", "empty_header"])
def test_damaged_file_is_a_clear_error(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "f.h5"
    _store(path)
    data = bytearray(path.read_bytes())
    if damage == "header":
        data[:8] = b"garbage!"
    elif damage == "truncated":
        data = data[: len(data) // 2]
    else:
        data[:512] = bytes(512)
    path.write_bytes(bytes(data))
    for mode in ("r", "a"):
        with pytest.raises(StoreError, match=re.escape(str(path))):
            FeatureStore(path, mode)
    with pytest.raises(StoreError, match="refusing to replace"):
        FeatureStore(path, "w")  # we cannot vouch that it is ours
    assert path.read_bytes() == bytes(data)


def test_damaged_middle_never_gives_raw_errors(tmp_path: Path) -> None:
    original = tmp_path / "orig.h5"
    _store(original)
    size = original.stat().st_size
    rng = np.random.default_rng(0)
    for fraction in (0.1, 0.3, 0.5, 0.7, 0.9):
        path = tmp_path / f"f{fraction}.h5"
        data = bytearray(original.read_bytes())
        start = int(size * fraction)
        data[start:start + 256] = rng.integers(0, 256, 256, dtype=np.uint8).tobytes()
        path.write_bytes(bytes(data))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                store = FeatureStore(path)
        except StoreError as exc:
            assert str(path) in str(exc)
            continue
        with store:
            for name in store.names():
                try:
                    store.get(name)
                except EntryError as exc:
                    assert str(exc).startswith(f"{path}: entry {name!r}: ")


def test_bad_attrs_json_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "f.h5"
    writer = FeatureStore(path, "w", attrs={"model": "m"})
    writer.put("a", make(1))
    attrs_json = Path(f"{path}.journal", "attrs.json")
    for junk in (b"{not json", b"\xff\xfe", b"[1, 2]", b'{"config": 3}'):
        attrs_json.write_bytes(junk)
        for mode in ("r", "a"):
            with pytest.raises(StoreError, match=re.escape(str(attrs_json))):
                FeatureStore(path, mode)
    attrs_json.write_text(json.dumps({"format": "delfi-features", "format_version": 1, "model": "m"}))
    writer.close()
    assert FeatureStore(path).names() == ["a"]


@pytest.mark.parametrize("key, value, message", [
    ("config", "{not json", "attribute 'config' is not valid JSON"),
    ("config", b"\xff\xfe{}", "attribute 'config' is not valid UTF-8"),
    ("config", "[1, 2]", "attribute 'config' must be a JSON object"),
    ("config", 3, "attribute 'config' must be a JSON string"),
    ("format_version", "1", "format_version '1' is not an integer"),
    ("format_version", 99, "format_version 99 > 1"),
    ("format", b"\xff", "attribute 'format' is not valid UTF-8"),
])
def test_bad_file_attributes(tmp_path: Path, key: str, value, message: str) -> None:
    path = tmp_path / "f.h5"
    _store(path, n=2)
    with h5py.File(path, "r+") as f:
        f.attrs[key] = value
    for mode in ("r", "a"):
        with pytest.raises(StoreError, match=f"{re.escape(str(path))}.*{message}"):
            FeatureStore(path, mode)


def test_odd_group_paths_are_skipped_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "m.h5"
    with MatchStore(path, "w") as store:
        store.put("a", "b", Matches(torch.zeros(2, 2, dtype=torch.int64), torch.ones(2)))
    with h5py.File(path, "r+") as f:
        for odd in ("x", "p/q/r", "a b/c", "%zz/c"):
            group = f.require_group(odd)
            group["indices"], group["scores"] = np.zeros((0, 2), np.int64), np.zeros(0, np.float32)
            group.attrs["complete"] = True
    with pytest.warns(UserWarning, match="ignoring group") as record:
        store = MatchStore(path)
    assert store.pairs() == [("a", "b")]
    store.close()
    assert {str(w.message).split("'")[1] for w in record} == {"x", "p/q/r", "a b/c", "%zz/c"}
    assert all(str(path) in str(w.message) for w in record)


# ------------------------------------------------------------------------------ journal files
def _journal_file(folder: Path, entry: str, **arrays) -> Path:
    path = folder / _journal_name(entry)
    np.savez(path, **arrays)
    return path


def _good(entry: str, n: int = 4, **over) -> dict:
    arrays = {"name": np.array(entry), "token": np.array("ab" * 16), "keypoints": np.zeros((n, 2), np.float32),
              "scores": np.zeros(n, np.float32), "descriptors": np.zeros((n, 8), np.float32),
              "image_size": np.array([64, 48])}
    arrays.update(over)
    return {k: v for k, v in arrays.items() if v is not None}


@pytest.mark.parametrize("name, arrays, reason", [
    ("nodesc", _good("nodesc", descriptors=None), "missing dataset descriptors"),
    ("nokp", _good("nokp", keypoints=None), "missing dataset keypoints"),
    ("nosize", _good("nosize", image_size=None), "missing attribute image_size"),
    ("noname", _good("noname", name=None), "missing name"),
    ("notoken", _good("notoken", token=None), "missing token"),
    ("badtoken", _good("badtoken", token=np.array("x")), "token 'x' is not 32 hex digits"),
    ("transposed", _good("transposed", n=300, descriptors=np.zeros((128, 300), np.float32)),
     r"descriptors shape \(128, 300\) does not match 300 keypoints"),
    ("short", _good("short", scores=np.zeros(3, np.float32)), r"scores shape \(3,\) does not match 4 keypoints"),
    ("../x", _good("../x"), "invalid entry name"),
    ("renamed", _good("other"), "does not match its entry 'other'"),
])
def test_bad_journal_files_are_skipped_and_kept(tmp_path: Path, name: str, arrays: dict, reason: str) -> None:
    path = tmp_path / "f.h5"
    with FeatureStore(path, "w") as store:
        store.put("good", make(1))
    journal = Path(f"{path}.journal")
    journal.mkdir()
    bad = _journal_file(journal, name, **arrays)
    content = bad.read_bytes()
    for mode in ("r", "a"):
        with pytest.warns(UserWarning, match=f"{re.escape(str(bad))}.*{reason}"):
            with FeatureStore(path, mode) as store:
                assert store.names() == ["good"]
                if mode == "a":
                    store.put("new", make(2))
    assert bad.read_bytes() == content  # left in place, never merged
    with h5py.File(path, "r") as f:
        assert sorted(f) == ["good", "new"]


def test_unreadable_journal_file_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "f.h5"
    with FeatureStore(path, "w") as store:
        store.put("good", make(1))
    journal = Path(f"{path}.journal")
    journal.mkdir()
    bad = journal / _journal_name("junk")
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.warns(UserWarning, match=f"{re.escape(str(bad))}.*unreadable"):
        with FeatureStore(path, "a") as store:
            assert store.names() == ["good"]
    assert bad.exists()


def test_journal_file_with_non_finite_values_is_not_merged(tmp_path: Path) -> None:
    path = tmp_path / "f.h5"
    with FeatureStore(path, "w") as store:
        store.put("good", make(1))
    journal = Path(f"{path}.journal")
    journal.mkdir()
    bad = _journal_file(journal, "nan", **_good("nan", descriptors=np.full((4, 8), np.nan, np.float32)))
    with pytest.warns(UserWarning, match=f"{re.escape(str(bad))}.*non-finite values in descriptors"):
        with FeatureStore(path, "a") as store:
            with pytest.raises(EntryError, match=re.escape(f"{path}: entry 'nan': non-finite values in descriptors")):
                store.get("nan")
    assert bad.exists()
    with h5py.File(path, "r") as f:
        assert list(f) == ["good"]


def test_bad_match_journal_files(tmp_path: Path) -> None:
    path = tmp_path / "m.h5"
    MatchStore(path, "w").close()
    journal = Path(f"{path}.journal")
    journal.mkdir()
    token = np.array("cd" * 16)
    no_indices = _journal_file(journal, pair_path("a", "b"), name=np.array(pair_path("a", "b")), token=token,
                               scores=np.zeros(3, np.float32))
    three = _journal_file(journal, "a/b/c", name=np.array("a/b/c"), token=token,
                          indices=np.zeros((3, 2), np.int64), scores=np.zeros(3, np.float32))
    with pytest.warns(UserWarning) as record:
        with MatchStore(path, "a") as store:
            assert store.pairs() == []
    messages = " | ".join(str(w.message) for w in record)
    assert f"{no_indices}: entry ('a', 'b'): missing dataset indices" in messages
    assert f"{three}: invalid entry name 'a/b/c'" in messages
    assert no_indices.exists() and three.exists()


# ------------------------------------------------------------------------------ bad entries
def _feature_group(f: h5py.File, name: str, n: int = 300, d: int = 128, **over) -> None:
    arrays = {"keypoints": np.zeros((n, 2), np.float32), "scores": np.zeros(n, np.float32),
              "descriptors": np.zeros((n, d), np.float32)}
    arrays.update(over)
    group = f.require_group(name)
    for key, value in arrays.items():
        if value is not None:
            group[key] = value
    group.attrs["image_size"] = np.array([640, 480])
    group.attrs["complete"] = True


@pytest.mark.parametrize("over, reason", [
    ({"descriptors": None}, "missing dataset descriptors"),
    ({"keypoints": None}, "missing dataset keypoints"),
    ({"descriptors": np.zeros((128, 300), np.float32)}, "descriptors shape (128, 300) does not match 300 keypoints"),
    ({"keypoints": np.zeros((300, 3), np.float32)}, "keypoints shape (300, 3) is not (N, 2)"),
    ({"descriptors": np.full((300, 128), np.inf, np.float32)}, "non-finite values in descriptors"),
    ({"keypoints": np.full((300, 2), np.nan, np.float32)}, "non-finite values in keypoints"),
    ({"global_descriptor": np.full(8, np.nan, np.float32)}, "non-finite values in global_descriptor"),
    ({"scales": np.zeros(5, np.float32)}, "scales shape (5,) does not match 300 keypoints"),
    ({"descriptors": np.array([b"x"] * 300)}, "descriptors has dtype |S1, expected numeric values"),
])
def test_bad_feature_entries_raise_entry_error(tmp_path: Path, over: dict, reason: str) -> None:
    path = tmp_path / "f.h5"
    with FeatureStore(path, "w") as store:
        store.put("good.jpg", make(1))
    with h5py.File(path, "r+") as f:
        _feature_group(f, "bad.jpg", **over)
    with FeatureStore(path) as store:
        assert store.names() == ["bad.jpg", "good.jpg"]
        with pytest.raises(EntryError) as info:
            store.get("bad.jpg")
        assert str(info.value) == f"{path}: entry 'bad.jpg': {reason}"
        assert isinstance(info.value, ValueError) and info.value.entry == "bad.jpg"
        assert torch.equal(store.get("good.jpg").descriptors, make(1).descriptors)  # the others still work
        with pytest.raises(KeyError, match=rf"nope\.jpg.*{path.name}"):
            store.get("nope.jpg")


def test_dataset_that_is_a_group(tmp_path: Path) -> None:
    path = tmp_path / "f.h5"
    FeatureStore(path, "w").close()
    with h5py.File(path, "r+") as f:
        _feature_group(f, "bad.jpg", descriptors=None)
        f["bad.jpg"].create_group("descriptors")
    with FeatureStore(path) as store, pytest.raises(EntryError, match="descriptors is a group, not a dataset"):
        store.get("bad.jpg")


@pytest.mark.parametrize("over, reason", [
    ({"indices": None}, "missing dataset indices"),
    ({"scores": np.zeros(2, np.float32)}, "scores shape (2,) does not match 3 matches"),
    ({"indices": np.zeros((3, 3), np.int64)}, "indices shape (3, 3) is not (N, 2)"),
    ({"indices": np.full((3, 2), -1, np.int64)}, "negative indices"),
    ({"indices": np.zeros((3, 2), np.float32)}, "indices has dtype float32, expected integer values"),
    ({"scores": np.full(3, np.nan, np.float32)}, "non-finite values in scores"),
    ({"model": np.zeros((2, 2))}, "model shape (2, 2) is not (3, 3)"),
    ({"meta": "{oops"}, "meta is not valid JSON"),
    ({"kind": "banana"}, "kind 'banana' is not one of"),
])
def test_bad_match_entries_raise_entry_error(tmp_path: Path, over: dict, reason: str) -> None:
    path = tmp_path / "m.h5"
    with MatchStore(path, "w") as store:
        store.put("g0", "g1", Matches(torch.zeros(1, 2, dtype=torch.int64), torch.ones(1)))
    arrays = {"indices": np.zeros((3, 2), np.int64), "scores": np.zeros(3, np.float32), **over}
    with h5py.File(path, "r+") as f:
        group = f.require_group(pair_path("a", "b"))
        for key, value in arrays.items():
            if key in ("meta", "kind"):
                group.attrs[key] = value
            elif value is not None:
                group[key] = value
        group.attrs["complete"] = True
    with MatchStore(path) as store:
        with pytest.raises(EntryError) as info:
            store.get("a", "b")
        assert str(info.value).startswith(f"{path}: entry ('a', 'b'): {reason}")
        assert len(store.get("g0", "g1")) == 1
        with pytest.raises(KeyError, match=f"'x', 'y'.*{path.name}"):
            store.get("x", "y")


def test_put_refuses_non_finite_values(tmp_path: Path) -> None:
    with FeatureStore(tmp_path / "f.h5", "w") as store:
        for key in ("keypoints", "scores", "descriptors", "scales", "global_descriptor"):
            good = make(1)
            arrays = {k: v for k, v in good.numpy().items() if k != "image_size"}
            arrays["scales"], arrays["global_descriptor"] = np.ones(len(good), np.float32), np.ones(3, np.float32)
            arrays[key] = arrays[key].copy()
            arrays[key].flat[0] = np.nan
            with pytest.raises(ValueError, match=f"f.h5: entry 'x/{key}.jpg': non-finite values in {key}"):
                store.put(f"x/{key}.jpg", Features.from_numpy(arrays, image_size=(64, 48)))
        big = make(2)
        big.descriptors[0, 0] = 1e6  # finite in float32, inf in a float16 store
        store.put("float32.jpg", big)
        assert store.names() == ["float32.jpg"]
    with FeatureStore(tmp_path / "h.h5", "w", descriptor_dtype="float16") as store:
        with pytest.raises(ValueError, match="non-finite values in descriptors"):
            store.put("big.jpg", big)
    with MatchStore(tmp_path / "m.h5", "w") as store:
        with pytest.raises(ValueError, match=r"entry \('a', 'b'\): non-finite values in scores"):
            store.put("a", "b", Matches(torch.zeros(1, 2, dtype=torch.int64), torch.tensor([float("inf")])))
        with pytest.raises(ValueError, match="non-finite values in model"):
            store.put("a", "b", Matches(torch.zeros(1, 2, dtype=torch.int64), torch.ones(1),
                                        model=torch.full((3, 3), float("nan"), dtype=torch.float64), kind="homography"))
        with pytest.raises(ValueError, match="negative indices"):
            store.put("a", "b", Matches(torch.full((1, 2), -1, dtype=torch.int64), torch.ones(1)))
        assert store.pairs() == []


@pytest.mark.parametrize("name", ["a\0b.jpg", "bad\udcff.jpg"])
def test_put_refuses_names_hdf5_cannot_hold(tmp_path: Path, name: str) -> None:
    with FeatureStore(tmp_path / "f.h5", "w") as store:
        with pytest.raises(ValueError, match="entry name"):
            store.put(name, make(1))
        store.put("ok.jpg", make(1))
    assert FeatureStore(tmp_path / "f.h5").names() == ["ok.jpg"]


# ------------------------------------------------------------------------------ mismatch message
def test_mismatch_message_is_short(tmp_path: Path) -> None:
    path = tmp_path / "f.h5"
    big = {f"option_{i}": list(range(20)) for i in range(30)}
    stored = {"model": "delf", "weights_sha256": "ab" * 32, "config": {**big, "top_k": 1000, "nested": {"x": 1}}}
    with FeatureStore(path, "w", attrs=stored):
        pass
    given = {**stored, "config": {**big, "top_k": 2000, "nested": {"x": 2}}}
    with pytest.raises(StoreMismatchError) as info:
        FeatureStore(path, "a", attrs=given)
    message = str(info.value)
    assert message == (f"feature store {path} was written with other settings (config.nested.x: stored 1, given 2; "
                       f"config.top_k: stored 1000, given 2000); start afresh with --overwrite (mode='w' in Python) "
                       f"or use another path")
    many = {**stored, "model": "r2d2", "config": {f"option_{i}": 0 for i in range(30)}}
    with pytest.raises(StoreMismatchError) as info:
        FeatureStore(path, "a", attrs=many)
    message = str(info.value)
    assert "model: stored 'delf', given 'r2d2'" in message and message.count("config.") == 3 and "; 29 more)" in message
    assert len(message) < 550
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.h5"]  # a refused open leaves nothing behind


def test_reader_opening_during_a_commit_keeps_every_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A reader takes no lock: a commit that runs while it opens (here: right after it read the
    committed file) moves entries from the journal into a newer file, never out of its view."""
    path = tmp_path / "f.h5"
    with FeatureStore(path, "w") as store:
        store.put("old.jpg", make(0))
    writer = FeatureStore(path, "a")
    writer.put("new.jpg", make(1))
    real = FeatureStore._read_file_index

    def read_then_commit(self):
        out = real(self)
        if self.mode == "r":
            writer.commit()  # merges new.jpg and deletes its journal file
        return out

    monkeypatch.setattr(FeatureStore, "_read_file_index", read_then_commit)
    with FeatureStore(path, "r") as reader:
        assert reader.names() == ["new.jpg", "old.jpg"]
        monkeypatch.setattr(FeatureStore, "_read_file_index", real)
        assert torch.equal(reader.get("new.jpg").keypoints, make(1).keypoints)
    writer.close()


def test_opening_spares_journal_temps_of_this_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two writers of one store in one process: opening the second must not delete the temp the
    first is writing (journal temps are written outside the commit lock)."""
    path = tmp_path / "f.h5"
    first = FeatureStore(path, "w")
    real = np.savez

    def savez_then_open_another(fh, **arrays):
        real(fh, **arrays)
        FeatureStore(path, "a").close()  # opens (stale-temp cleanup) while the temp is not yet in place

    monkeypatch.setattr(np, "savez", savez_then_open_another)
    first.put("a.jpg", make(0))
    monkeypatch.setattr(np, "savez", real)
    first.close()
    with FeatureStore(path) as store:
        assert store.names() == ["a.jpg"]
