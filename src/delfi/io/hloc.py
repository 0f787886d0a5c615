"""hloc interoperability: delfi's stores to and from hloc's ``features.h5`` / ``matches.h5``.

hloc (cvg/Hierarchical-Localization) keeps features and matches in plain HDF5 files, one group per
image or pair. This module writes those files from delfi's stores and reads them back into delfi
stores, so that delfi features run in hloc's localisation / triangulation pipelines and hloc
features in delfi's evaluations.

hloc's features file (``extract_features.py``): one group per image name; a name with ``/``
(``"sub/a.jpg"``) is a nested group (``sub`` holding ``a.jpg``). The group holds the datasets

* ``keypoints`` (N, 2), (x, y) in ORIGINAL image pixels with the centre of the top-left pixel at
  (0, 0) -- delfi's own convention, so keypoints are copied unchanged both ways (hloc adds 0.5
  only when it writes COLMAP's database). The optional attribute ``uncertainty`` of the dataset
  (hloc's detection noise, 1 when absent) is neither written nor read.
* ``descriptors`` (D, N): TRANSPOSED against delfi's (N, D).
* ``scores`` (N,).
* ``image_size`` (2,) integer = (width, height) of the original image.
* ``scales`` (N,), when the extractor has one (hloc's SIFT / DoG): copied to and from delfi's
  ``Features.scales`` as they are.

With hloc's ``as_half`` every float32 array (keypoints too) is float16. Global descriptors live in
a separate file of the same layout whose groups hold ``global_descriptor`` (D,) and ``image_size``.

hloc's matches file (``match_features.py``, ``utils/parsers.py``, ``utils/io.py``): one group per
pair, at ``names_to_pair(name0, name1)`` = ``name0.replace("/", "-") + "/" + name1.replace("/",
"-")`` (two levels), holding ``matches0`` (N0,) integer (int16 as hloc writes it) -- for each
keypoint of image 0 the index of its match in image 1, -1 for none -- and ``matching_scores0``
(N0,) float (float16 as hloc writes it). Older files used ``names_to_pair_old``: the same names
joined by ``_`` in ONE level (``"a.jpg_b.jpg"``). hloc's reader looks a pair up as ``(name0,
name1)``, then ``(name1, name0)`` (reversing the matches), in the new layout first, then in the old.

delfi's mapping:

* `export_features`: every valid entry of a `FeatureStore` becomes a group named by the entry name
  with float32 ``keypoints`` (N, 2), ``descriptors`` (D, N) (float16 with ``as_half``), float32
  ``scores`` (N,), int64 ``image_size`` (2,) and, when present, float32 ``scales`` (N,). Entries
  with a global descriptor go to ``global_out`` as ``global_descriptor`` (G,) (float16 with
  ``as_half``) plus ``image_size``. Keypoints and scores stay float32 even with ``as_half``:
  float16 spaces its values 1 px apart above 1024 and 2 px above 2048.
* `export_matches`: every pair ``(name0, name1)`` of a `MatchStore` becomes the group
  ``names_to_pair(name0, name1)`` (new layout) with int32 ``matches0`` (N0,) and float32
  ``matching_scores0`` (N0,) (0 where unmatched); N0 is the number of keypoints of ``name0`` in the
  given feature store (without one, 1 + the largest index of image 0). int32 instead of hloc's
  int16, which wraps above 32767 keypoints; hloc's readers take any integer type. ``matches0``
  holds one match per keypoint of image 0: when several matches share a keypoint of image 0 the
  best-scored one is kept and the others are counted as dropped. A pair and its reverse are both
  written (hloc reads either). With ``inliers_only`` only the inliers of pairs verified with
  ``meta["status"] == "ok"`` are kept; other pairs are written without matches (all -1) and
  counted. `write_pairs` gives hloc's ``pairs.txt`` of the exported pairs.
* `import_features`: every group holding datasets becomes an entry named by its path; descriptors
  are transposed back to (N, D), keypoints taken as they are (float16 ones widened to float32);
  ``image_size`` from the dataset, else from the global file's, else the keypoint extent
  (``ceil(max + 0.5)`` per axis) with a warning; ``scores`` 1 where absent. A global descriptor
  comes from ``global_h5`` (or from a ``global_descriptor`` dataset of the entry itself; the
  global file wins). A group with only a global descriptor becomes an entry without keypoints.
* `import_matches`: hloc's pair paths are mapped back to real names through the image names of the
  features (``name.replace("/", "-")``), in both layouts; a path no name maps to, or that several
  names (or several ``_`` splits of an old-layout path) map to, is reported, never guessed.
  ``matches0`` rows that are not -1 become ``indices`` (K, 2), their ``matching_scores0`` the
  scores (1 where absent); no inliers, no model, ``meta = {"source": "hloc"}`` (not verified).

Broken entries (missing or mis-shaped datasets, non-finite values, unreadable data, names delfi's
stores cannot hold) are reported with their name and the reason and skipped; the rest is done.

Data safety: the files written here carry the root attributes ``delfi_export`` (`EXPORT_MARK`)
and ``delfi_version``. An existing output is replaced only with ``overwrite`` and only when it
carries that mark (`check_output`); files are written to a temporary file in the same folder and
moved into place with `os.replace` at the end, so a killed run leaves no half file (its temp is
removed by the next run once the process is gone). Imports go through `FeatureStore` /
`MatchStore` (journaled, resumable: entries already present are skipped).
"""

from __future__ import annotations

import math
import os
import re
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from delfi.io.locking import process_gone

__all__ = ["EXPORT_MARK", "HlocError", "FeatureExport", "MatchExport", "FeatureImport", "MatchImport",
           "names_to_pair", "names_to_pair_old", "check_output", "check_pairs_output", "check_input",
           "is_delfi_export", "export_features",
           "export_matches", "write_pairs", "import_features", "import_matches"]

EXPORT_MARK = "hloc/1"
"""Value of the root attribute ``delfi_export`` of every file this module writes (format version 1)."""

_MARK_ATTR = "delfi_export"
OnItem = Callable[[str, str], None]
"""Progress callback ``(label, status)``; status is ``"done"``, ``"skipped"`` or ``"failed"``."""


class HlocError(ValueError):
    """A file cannot be read or written as asked; the message names it and the reason."""


class _Broken(Exception):
    """One entry is unusable; the message is the reason."""


@dataclass
class FeatureExport:
    """What `export_features` wrote.

    Attributes:
        path: the features file.
        entries: images written; ``keypoints`` their keypoints in all.
        global_path: the global descriptor file, or None when no entry had a global descriptor.
        global_entries: global descriptors written.
        global_removed: whether an earlier export's global file at ``global_out`` was removed
            (``overwrite`` and no entry had a global descriptor).
        descriptor_dtype: ``"float32"`` or ``"float16"``.
        num_keypoints: keypoints per exported image (for `export_matches`).
        failures: ``(image name, reason)`` of the entries skipped.
    """

    path: Path
    entries: int = 0
    keypoints: int = 0
    global_path: Path | None = None
    global_entries: int = 0
    global_removed: bool = False
    descriptor_dtype: str = "float32"
    num_keypoints: dict[str, int] = field(default_factory=dict)
    failures: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class MatchExport:
    """What `export_matches` wrote.

    Attributes:
        path: the matches file.
        pairs: the ``(name0, name1)`` written, in order.
        matches: matches written in all.
        duplicates_dropped: matches left out because a better one shared their keypoint of image 0.
        unverified: pairs written without matches because ``inliers_only`` and not verified "ok".
        pairs_path: the pairs file written, or None.
        failures: ``("name0 name1", reason)`` of the pairs skipped.
    """

    path: Path
    pairs: list[tuple[str, str]] = field(default_factory=list)
    matches: int = 0
    duplicates_dropped: int = 0
    unverified: int = 0
    pairs_path: Path | None = None
    failures: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class FeatureImport:
    """What `import_features` did.

    Attributes:
        path: the delfi feature store.
        imported: entries added; ``already_present`` skipped because the store had them.
        with_global: imported entries with a global descriptor; ``global_only`` those without keypoints.
        sizes_from_keypoints: imported entries whose image size was taken from the keypoint extent.
        scores_defaulted: imported entries without scores (all set to 1).
        num_keypoints: keypoints of every readable entry of the store after the import.
        failures: ``(name, reason)`` of the entries skipped.
    """

    path: Path
    imported: int = 0
    already_present: int = 0
    with_global: int = 0
    global_only: int = 0
    sizes_from_keypoints: list[str] = field(default_factory=list)
    scores_defaulted: int = 0
    num_keypoints: dict[str, int] = field(default_factory=dict)
    failures: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class MatchImport:
    """What `import_matches` did.

    Attributes:
        path: the delfi match store.
        imported: pairs added; ``already_present`` skipped because the store had them.
        matches: matches imported in all.
        layouts: imported pairs per layout: ``{"/": new layout, "_": old layout}``.
        scores_defaulted: imported pairs without ``matching_scores0`` (scores set to 1).
        failures: ``(hloc pair path, reason)`` of the groups skipped (unknown, ambiguous, broken).
    """

    path: Path
    imported: int = 0
    already_present: int = 0
    matches: int = 0
    layouts: dict[str, int] = field(default_factory=lambda: {"/": 0, "_": 0})
    scores_defaulted: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)


# ---------------------------------------------------------------------------- names


def _dash(name: str) -> str:
    return name.replace("/", "-")


def names_to_pair(name0: str, name1: str) -> str:
    """hloc's group path of a pair (new layout): ``"<name0 with - for />/<name1 with - for />"``."""
    return f"{_dash(name0)}/{_dash(name1)}"


def names_to_pair_old(name0: str, name1: str) -> str:
    """hloc's older group name of a pair: the same names joined by ``_`` in one level."""
    return f"{_dash(name0)}_{_dash(name1)}"


def _pairs_name_problem(name: str, first: bool) -> str | None:
    if not name or any(c.isspace() for c in name):
        return f"image name {name!r} contains whitespace: hloc's pairs files cannot name it"
    if first and name.startswith("#"):
        return f"image name {name!r} starts with '#': a pairs line naming it first reads as a comment"
    return None


# ---------------------------------------------------------------------------- output safety


def is_delfi_export(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a regular HDF5 file carrying delfi's ``delfi_export`` root attribute."""
    import h5py

    path = Path(path)
    if path.is_symlink() or not path.is_file():
        return False
    try:
        with h5py.File(path, "r") as f:
            mark = f.attrs.get(_MARK_ATTR)
    except Exception:  # noqa: BLE001 - unreadable: delfi cannot vouch for it
        return False
    mark = mark.decode() if isinstance(mark, bytes) else mark
    return isinstance(mark, str) and mark.startswith("hloc/")


def check_output(path: str | os.PathLike, overwrite: bool) -> Path:
    """Return ``path`` if an hloc file may be written there, else raise `HlocError`.

    Refused: a folder; an existing file without ``overwrite``; an existing file that delfi did not
    export (no ``delfi_export`` attribute), even with ``overwrite``.
    """
    path = Path(path)
    if path.is_dir():
        raise HlocError(f"{path} is a folder, not a file")
    if not (path.exists() or path.is_symlink()):
        return path
    if not overwrite:
        raise HlocError(f"{path} exists; replacing it needs overwrite (--overwrite), and only a file delfi "
                        f"exported is replaced")
    if not is_delfi_export(path):
        raise HlocError(f"refusing to replace {path}: delfi did not make it (no {_MARK_ATTR} attribute); move "
                        f"or delete it yourself, or choose another output folder")
    return path


_TEMP = re.compile(r"\.(?P<name>.+)\.tmp-(?P<pid>\d+)-[0-9a-f]{32}")


def _remove_stale_temps(path: Path) -> None:
    """Delete ``.<name>.tmp-<pid>-<32 hex>`` temps of ``path`` left by killed runs (processes gone)."""
    try:
        entries = os.listdir(path.parent)
    except OSError:
        return
    for entry in entries:
        match = _TEMP.fullmatch(entry)
        if match and match["name"] == path.name and process_gone(int(match["pid"])):
            try:
                (path.parent / entry).unlink()
            except OSError:
                pass


class _AtomicH5:
    """An HDF5 file written under a temporary name and moved onto ``path`` by `commit`."""

    def __init__(self, path: Path, content: str, overwrite: bool) -> None:
        import h5py

        from delfi import __version__

        self.path, self.overwrite = check_output(path, overwrite), overwrite
        _remove_stale_temps(self.path)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex}")
        try:
            self.file = h5py.File(self.tmp, "w")
        except OSError as exc:
            raise HlocError(f"cannot write {self.path}: {exc}") from None
        self.file.attrs[_MARK_ATTR] = EXPORT_MARK
        self.file.attrs["delfi_version"] = __version__
        self.file.attrs["delfi_content"] = content

    def commit(self) -> None:
        self.file.close()
        check_output(self.path, self.overwrite)  # again: the target may have appeared meanwhile
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        try:
            self.file.close()
        finally:
            self.tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------------------- export


def export_features(store_path: str | os.PathLike, out_h5: str | os.PathLike, *,
                    global_out: str | os.PathLike | None = None, as_half: bool = False, overwrite: bool = False,
                    on_item: OnItem | None = None) -> FeatureExport:
    """Write a delfi `FeatureStore` as hloc's features file (and global descriptor file).

    Args:
        store_path: the delfi feature store.
        out_h5: hloc's features file: one group per image with ``keypoints`` (N, 2) float32,
            ``descriptors`` (D, N) (transposed), ``scores`` (N,) float32, ``image_size`` (2,) int64
            (w, h) and ``scales`` (N,) float32 when the store has them.
        global_out: where the global descriptors go (``global_descriptor`` (G,) and ``image_size``
            per image), written only when some entry has one (else, with ``overwrite``, a file an
            earlier delfi export left there is removed); None: not exported.
        as_half: float16 descriptors and global descriptors (keypoints and scores stay float32).
        overwrite: replace existing outputs (only files delfi exported; see `check_output`).
        on_item: progress callback ``(name, status)``.

    Returns:
        A `FeatureExport`. Entries the store cannot read are listed in ``failures`` and skipped.

    Raises:
        HlocError: an output that may not be written; StoreError / FileNotFoundError: the store
            cannot be opened. Nothing is written then.
    """
    from delfi.io.features import EntryError, FeatureStore

    out = Path(out_h5)
    report = FeatureExport(path=out, descriptor_dtype="float16" if as_half else "float32")
    dtype = np.float16 if as_half else np.float32
    if global_out is not None:
        check_output(global_out, overwrite)
    with FeatureStore(store_path, "r") as store:
        local = _AtomicH5(out, "features", overwrite)
        glob = None
        try:
            glob = _AtomicH5(Path(global_out), "global", overwrite) if global_out is not None else None
            for name in store.names():
                try:
                    arrays = store.get(name).numpy()
                    _write_features(local.file, name, arrays, dtype, glob.file if glob else None)
                except (EntryError, _Broken) as exc:
                    report.failures.append((name, exc.reason if isinstance(exc, EntryError) else str(exc)))
                    _notify(on_item, name, "failed")
                    continue
                n = int(arrays["keypoints"].shape[0])
                report.entries += 1
                report.keypoints += n
                report.num_keypoints[name] = n
                report.global_entries += "global_descriptor" in arrays and glob is not None
                _notify(on_item, name, "done")
            if glob is not None and report.global_entries:
                glob.commit()
                report.global_path = glob.path
            elif glob is not None:
                glob.discard()
                if overwrite and is_delfi_export(glob.path):  # an earlier export's: not of these features
                    glob.path.unlink()
                    report.global_removed = True
            glob = None
            local.commit()
        except BaseException:
            local.discard()
            if glob is not None:
                glob.discard()
            raise
    return report


def _write_features(f: Any, name: str, arrays: dict[str, Any], dtype: Any, glob: Any) -> None:
    """Write one entry (delfi's numpy arrays) in hloc's layout; _Broken if float16 cannot hold it."""
    size = np.asarray(arrays["image_size"], dtype=np.int64)
    descriptors = _as(arrays["descriptors"], dtype, "descriptors").T
    global_descriptor = arrays.get("global_descriptor")
    if global_descriptor is not None and glob is not None:
        global_descriptor = _as(global_descriptor, dtype, "global_descriptor")
    group = f.require_group(name)  # "sub" may exist already as the parent of "sub/a.jpg"
    group.create_dataset("keypoints", data=np.asarray(arrays["keypoints"], dtype=np.float32))
    group.create_dataset("descriptors", data=np.ascontiguousarray(descriptors))
    group.create_dataset("scores", data=np.asarray(arrays["scores"], dtype=np.float32))
    group.create_dataset("image_size", data=size)
    if "scales" in arrays:
        group.create_dataset("scales", data=np.asarray(arrays["scales"], dtype=np.float32))
    if global_descriptor is not None and glob is not None:
        entry = glob.require_group(name)
        entry.create_dataset("global_descriptor", data=global_descriptor)
        entry.create_dataset("image_size", data=size)


def _as(values: Any, dtype: Any, what: str) -> np.ndarray:
    with np.errstate(over="ignore"):
        out = np.asarray(values).astype(dtype)
    if not np.isfinite(out).all():
        raise _Broken(f"{what} values exceed the float16 range")
    return out


def export_matches(match_store_path: str | os.PathLike, out_h5: str | os.PathLike, *,
                   features: str | os.PathLike | Mapping[str, int] | None = None, inliers_only: bool = False,
                   pairs_out: str | os.PathLike | None = None, overwrite: bool = False,
                   on_item: OnItem | None = None) -> MatchExport:
    """Write a delfi `MatchStore` as hloc's matches file (new ``/`` layout), and its pairs file.

    Args:
        match_store_path: the delfi match store.
        out_h5: hloc's matches file: per pair ``matches0`` (N0,) int32 (index into image 1, -1 for
            none) and ``matching_scores0`` (N0,) float32 (0 where unmatched).
        features: the feature store the matches index (a path), or ``{name: number of keypoints}``:
            gives N0 and checks every index. None: N0 = 1 + the largest index of image 0, no checks.
        inliers_only: keep only the inliers of pairs verified with status "ok"; other pairs are
            written without matches.
        pairs_out: also write hloc's pairs file of the exported pairs here (`write_pairs`).
        overwrite: replace existing outputs (only files delfi wrote; see `check_output`).
        on_item: progress callback ``(name1, status)``.

    Returns:
        A `MatchExport`. Pairs that cannot be read or exported (indices beyond the keypoints, an
        image missing from ``features``, names a pairs file cannot hold, two pairs with one hloc
        path) are listed in ``failures`` and skipped.

    Raises:
        HlocError: an output that may not be written; StoreError / FileNotFoundError: a store
            cannot be opened. Nothing is written then.
    """
    from delfi.io.matches import EntryError, MatchStore

    out = Path(out_h5)
    report = MatchExport(path=out)
    if pairs_out is not None:
        check_pairs_output(Path(pairs_out), overwrite)
    counts = _keypoint_counts(features) if features is not None else None
    with MatchStore(match_store_path, "r") as store:
        target = _AtomicH5(out, "matches", overwrite)
        try:
            written: dict[str, tuple[str, str]] = {}
            for name0, name1 in store.pairs():
                label = f"{name0} {name1}"
                try:
                    problem = _pairs_name_problem(name0, True) or _pairs_name_problem(name1, False)
                    if problem:
                        raise _Broken(problem)
                    path = names_to_pair(name0, name1)
                    if path in written:
                        raise _Broken(f"hloc names it {path!r}, as the pair {' '.join(written[path])}")
                    matches0, scores0, kept, dropped, verified = _hloc_matches(
                        store.get(name0, name1), name0, name1, counts, inliers_only)
                except (EntryError, _Broken) as exc:
                    report.failures.append((label, exc.reason if isinstance(exc, EntryError) else str(exc)))
                    _notify(on_item, name1, "failed")
                    continue
                group = target.file.require_group(_dash(name0)).create_group(_dash(name1))
                group.create_dataset("matches0", data=matches0)
                group.create_dataset("matching_scores0", data=scores0)
                written[path] = (name0, name1)
                report.pairs.append((name0, name1))
                report.matches += kept
                report.duplicates_dropped += dropped
                report.unverified += not verified
                _notify(on_item, name1, "done")
            target.commit()
        except BaseException:
            target.discard()
            raise
    if pairs_out is not None:
        report.pairs_path = write_pairs(pairs_out, report.pairs, overwrite=True)
    return report


def _keypoint_counts(features: str | os.PathLike | Mapping[str, int]) -> dict[str, int]:
    if isinstance(features, Mapping):
        return {str(k): int(v) for k, v in features.items()}
    from delfi.io.features import EntryError, FeatureStore

    counts = {}
    with FeatureStore(features, "r") as store:
        for name in store.names():
            try:
                counts[name] = len(store.get(name))
            except EntryError:
                continue  # its pairs fail as "not in the feature store"
    return counts


def _hloc_matches(matches: Any, name0: str, name1: str, counts: dict[str, int] | None,
                  inliers_only: bool) -> tuple[np.ndarray, np.ndarray, int, int, bool]:
    """``(matches0 (N0,) int32, matching_scores0 (N0,) float32, kept, dropped, verified)`` of a pair."""
    verified = True
    if inliers_only:
        verified = matches.inliers is not None and matches.meta.get("status") == "ok"
        matches = matches.select(matches.inliers if verified else np.zeros(len(matches), dtype=bool))
    idx = matches.indices.numpy().astype(np.int64).reshape(-1, 2)
    scores = matches.scores.numpy().astype(np.float32)
    if counts is not None:
        for side, name in ((0, name0), (1, name1)):
            if name not in counts:
                raise _Broken(f"image {name!r} is not in the feature store")
            if idx.shape[0] and idx[:, side].max() >= counts[name]:
                raise _Broken(f"index {int(idx[:, side].max())} of image {side} is beyond the "
                              f"{counts[name]} keypoints of {name!r}")
        n0 = counts[name0]
    else:
        n0 = int(idx[:, 0].max()) + 1 if idx.shape[0] else 0
    if idx.shape[0] and idx.max() > np.iinfo(np.int32).max:
        raise _Broken("keypoint indices beyond int32")
    order = np.argsort(-scores, kind="stable")  # best first; ties keep store order
    _, first = np.unique(idx[order, 0], return_index=True)
    keep = order[first]
    matches0 = np.full(n0, -1, dtype=np.int32)
    scores0 = np.zeros(n0, dtype=np.float32)
    matches0[idx[keep, 0]] = idx[keep, 1]
    scores0[idx[keep, 0]] = scores[keep]
    return matches0, scores0, int(len(keep)), int(len(idx) - len(keep)), verified


def check_pairs_output(path: str | os.PathLike, overwrite: bool) -> Path:
    """Return ``path`` if a pairs file may be written there, else raise `HlocError`: a folder; an
    existing file without ``overwrite``; an existing file that is not a pairs file, even with it."""
    from delfi.io.pairs import is_pairs_file

    path = Path(path)
    if path.is_dir():
        raise HlocError(f"{path} is a folder, not a file")
    if path.exists() or path.is_symlink():
        if not overwrite:
            raise HlocError(f"{path} exists; replacing it needs overwrite (--overwrite), and only a pairs file "
                            f"is replaced")
        if path.is_symlink() or not is_pairs_file(path):
            raise HlocError(f"refusing to replace {path}: it is not a pairs file (`name0 name1 [score]` lines); "
                            f"move or delete it yourself, or choose another output folder")
    return path


def write_pairs(path: str | os.PathLike, pairs: Iterable[Sequence[str]], *, overwrite: bool = False) -> Path:
    """Write hloc's ``pairs.txt`` (``name0 name1`` lines) atomically with `delfi.io.pairs.write_pairs`.

    An existing file is replaced only with ``overwrite`` and only when it reads as a pairs file
    (`HlocError` otherwise); ValueError for a name a pairs file cannot hold (nothing written).
    """
    from delfi.io import pairs as pairs_io

    path = Path(path)
    check_pairs_output(path, overwrite)
    pairs_io.write_pairs(path, [(a, b) for a, b in pairs])
    return path


def _notify(on_item: OnItem | None, label: str, status: str) -> None:
    if on_item is not None:
        on_item(label, status)


# ---------------------------------------------------------------------------- reading hloc files


def _open(path: str | os.PathLike) -> Any:
    """``h5py.File(path, "r")``, or `HlocError` naming the file and why it cannot be read."""
    import h5py

    path = Path(path)
    if not path.exists():
        raise HlocError(f"{path} does not exist")
    if path.is_dir():
        raise HlocError(f"{path} is a folder, not an HDF5 file")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise HlocError(f"{path} cannot be read as an HDF5 file ({exc})") from None


def check_input(path: str | os.PathLike) -> Path:
    """Return ``path`` if it opens as an HDF5 file, else raise `HlocError` naming it and why."""
    _open(path).close()
    return Path(path)


def _groups(f: Any) -> Iterator[tuple[str, Any]]:
    """``(path, group)`` of every group holding datasets (the entries), sorted by path. Objects that
    cannot be read, and datasets at the root, come as ``(path, _Broken(reason))``."""
    import h5py

    found: list[tuple[str, Any]] = []

    def walk(group: Any, prefix: str) -> None:
        has_data = False
        try:
            keys = sorted(group.keys())
        except Exception as exc:  # noqa: BLE001 - a damaged group
            found.append((prefix.rstrip("/") or "/", _Broken(f"cannot be listed ({exc})")))
            return
        for key in keys:
            try:
                obj = group[key]
            except Exception as exc:  # noqa: BLE001 - a dangling link, a damaged object
                found.append((prefix + key, _Broken(f"cannot be read ({exc})")))
                continue
            if isinstance(obj, h5py.Dataset):
                has_data = True
            elif isinstance(obj, h5py.Group):
                walk(obj, prefix + key + "/")
        if has_data:
            found.append((prefix.rstrip("/") or "/", group if prefix else _Broken(
                "datasets at the file's root belong to no image")))

    walk(f, "")
    return iter(sorted(found, key=lambda item: item[0]))


def _dataset(group: Any, key: str) -> np.ndarray | None:
    import h5py

    try:
        obj = group.get(key)
    except Exception as exc:  # noqa: BLE001
        raise _Broken(f"{key} cannot be read ({exc})") from None
    if obj is None:
        return None
    if not isinstance(obj, h5py.Dataset):
        raise _Broken(f"{key} is a group, not a dataset")
    try:
        return np.asarray(obj[()])
    except Exception as exc:  # noqa: BLE001 - damaged data, an unsupported type
        raise _Broken(f"{key} cannot be read ({exc})") from None


def _numeric(value: np.ndarray, key: str, shape: tuple[int | None, ...], what: str | None = None) -> np.ndarray:
    if value.dtype.kind not in "fiu":
        raise _Broken(f"{key} has dtype {value.dtype}, expected numbers")
    if value.ndim != len(shape) or any(s is not None and s != g for s, g in zip(shape, value.shape)):
        dims = ", ".join("N" if s is None else str(s) for s in shape) + ("," if len(shape) == 1 else "")
        raise _Broken(f"{key} shape {tuple(value.shape)} {what or f'is not ({dims})'}")
    value = value.astype(np.float64 if value.dtype.kind in "iu" else value.dtype, copy=False)
    if not np.isfinite(value).all():
        raise _Broken(f"non-finite values in {key}")
    return value


def _image_size(value: np.ndarray) -> tuple[int, int]:
    size = _numeric(value, "image_size", (2,), "is not (width, height)")
    if (size < 0).any() or (size != np.round(size)).any():
        raise _Broken(f"image_size {tuple(size.tolist())} is not two whole numbers >= 0")
    return int(size[0]), int(size[1])


def _local_entry(group: Any) -> dict[str, Any]:
    """The arrays of one hloc feature group in delfi's layout (descriptors (N, D)); `_Broken` if unusable.

    Keys: ``keypoints`` (N, 2), ``descriptors`` (N, D), ``scores`` (N,) or absent, ``scales``
    (N,) or absent, ``global_descriptor`` (G,) or absent, ``image_size`` (w, h) or absent. A group
    with a global descriptor and no keypoints gives zero keypoints, (0, 0) descriptors and
    ``global_only = True``.
    """
    out: dict[str, Any] = {}
    glob = _dataset(group, "global_descriptor")
    if glob is not None:
        out["global_descriptor"] = _numeric(glob, "global_descriptor", (None,))
    size = _dataset(group, "image_size")
    if size is not None:
        out["image_size"] = _image_size(size)
    kp = _dataset(group, "keypoints")
    if kp is None:
        if glob is None:
            raise _Broken("missing dataset keypoints")
        if _dataset(group, "descriptors") is not None:
            raise _Broken("descriptors without keypoints")
        out.update(keypoints=np.zeros((0, 2)), descriptors=np.zeros((0, 0)), global_only=True)
        return out
    kp = _numeric(kp, "keypoints", (None, 2))
    n = kp.shape[0]
    de = _dataset(group, "descriptors")
    if de is None:
        raise _Broken("missing dataset descriptors")
    if de.ndim == 2 and de.shape[1] != n and de.shape[0] == n:
        raise _Broken(f"descriptors shape {tuple(de.shape)} is (N, D) for {n} keypoints: hloc stores them "
                      f"transposed, (D, N)")
    de = _numeric(de, "descriptors", (None, n), f"is not (D, {n}) for {n} keypoints")
    out.update(keypoints=kp, descriptors=de.T)
    for key in ("scores", "scales"):
        value = _dataset(group, key)
        if value is not None:
            out[key] = _numeric(value, key, (n,), f"does not match {n} keypoints")
    return out


def _global_entry(group: Any) -> dict[str, Any]:
    """``global_descriptor`` (G,) and, if present, ``image_size`` of one group of a global file."""
    glob = _dataset(group, "global_descriptor")
    if glob is None:
        raise _Broken("missing dataset global_descriptor")
    out: dict[str, Any] = {"global_descriptor": _numeric(glob, "global_descriptor", (None,))}
    size = _dataset(group, "image_size")
    if size is not None:
        out["image_size"] = _image_size(size)
    return out


def _extent(keypoints: np.ndarray) -> tuple[int, int]:
    """The smallest (w, h) holding every keypoint (pixel-centre origin): ``ceil(max + 0.5)``."""
    if keypoints.shape[0] == 0:
        return 0, 0
    top = np.maximum(keypoints.max(axis=0), -0.5)
    return int(math.ceil(top[0] + 0.5)), int(math.ceil(top[1] + 0.5))


def _descriptor_dtype(entries: list[tuple[str, Any]]) -> str:
    """``"float16"`` when the first descriptors dataset of the entries is float16, else ``"float32"``."""
    for _, group in entries:
        if isinstance(group, _Broken):
            continue
        try:
            obj = group.get("descriptors")
        except Exception:  # noqa: BLE001
            continue
        if obj is not None and hasattr(obj, "dtype"):
            return "float16" if obj.dtype == np.float16 else "float32"
    return "float32"


# ---------------------------------------------------------------------------- import


def import_features(hloc_h5: str | os.PathLike, out_store: str | os.PathLike, *,
                    global_h5: str | os.PathLike | None = None, overwrite: bool = False,
                    on_item: OnItem | None = None) -> FeatureImport:
    """Read hloc's features file (and global descriptor file) into a delfi `FeatureStore`.

    Args:
        hloc_h5: hloc's features file (groups with ``keypoints`` (N, 2), ``descriptors`` (D, N),
            ``scores`` (N,), ``image_size`` (2,); see the module docstring).
        out_store: the delfi feature store to create or resume (entries it has are skipped); new
            stores get float16 descriptors when hloc's are float16.
        global_h5: hloc's global descriptor file (``global_descriptor`` (G,) per image). Images
            it has and ``hloc_h5`` lacks are reported, not imported.
        overwrite: start the store afresh (only a delfi feature store is replaced).
        on_item: progress callback ``(name, status)``.

    Returns:
        A `FeatureImport`; broken entries are listed in ``failures`` and skipped. One warning
        names the entries whose image size came from their keypoint extent.

    Raises:
        HlocError: an input that cannot be read as HDF5; StoreError: ``out_store`` cannot be
            written (not a delfi feature store, other settings, busy).
    """
    from delfi.io.features import EntryError, FeatureStore
    from delfi.types import Features

    report = FeatureImport(path=Path(out_store))
    f = _open(hloc_h5)
    g = _open(global_h5) if global_h5 is not None else None
    try:
        entries = list(_groups(f))
        dtype = _descriptor_dtype(entries)
        globals_ = dict(_groups(g)) if g is not None else {}
        local_names = {name for name, _ in entries}
        for name, group in globals_.items():
            if name not in local_names:
                reason = str(group) if isinstance(group, _Broken) else f"in {global_h5} but not in {hloc_h5}"
                report.failures.append((name, f"global descriptor: {reason}"))
        with FeatureStore(out_store, "w" if overwrite else "a", attrs={"model": "hloc", "source": "hloc"},
                          descriptor_dtype=dtype) as store:
            for name, group in entries:
                if name in store:
                    report.already_present += 1
                    _notify(on_item, name, "skipped")
                    continue
                try:
                    if isinstance(group, _Broken):
                        raise group
                    arrays = _local_entry(group)
                    global_only = arrays.pop("global_only", False)
                    if name in globals_:
                        other = globals_[name]
                        if isinstance(other, _Broken):
                            raise _Broken(f"global descriptor in {global_h5}: {other}")
                        try:
                            extra = _global_entry(other)
                        except _Broken as exc:
                            raise _Broken(f"global descriptor in {global_h5}: {exc}") from None
                        arrays["global_descriptor"] = extra["global_descriptor"]
                        arrays.setdefault("image_size", extra.get("image_size"))
                    if arrays.get("image_size") is None:
                        arrays["image_size"] = _extent(arrays["keypoints"])
                        guessed = True
                    else:
                        guessed = False
                    defaulted = "scores" not in arrays
                    if defaulted:
                        arrays["scores"] = np.ones(arrays["keypoints"].shape[0])
                    arrays = {k: np.asarray(v, dtype=np.float32) if k != "image_size" else v
                              for k, v in arrays.items()}
                    store.put(name, Features.from_numpy(arrays, image_size=arrays["image_size"]))
                except (_Broken, ValueError) as exc:
                    report.failures.append((name, str(exc)))
                    _notify(on_item, name, "failed")
                    continue
                report.imported += 1
                report.num_keypoints[name] = int(arrays["keypoints"].shape[0])
                report.with_global += "global_descriptor" in arrays
                report.global_only += global_only
                report.scores_defaulted += defaulted
                if guessed:
                    report.sizes_from_keypoints.append(name)
                _notify(on_item, name, "done")
            for name in store.names():
                if name not in report.num_keypoints:  # entries of earlier runs
                    try:
                        report.num_keypoints[name] = len(store.get(name))
                    except EntryError:
                        continue
            report.num_keypoints = dict(sorted(report.num_keypoints.items()))
    finally:
        f.close()
        if g is not None:
            g.close()
    if report.sizes_from_keypoints:
        shown = ", ".join(report.sizes_from_keypoints[:3]) + (", ..." if len(report.sizes_from_keypoints) > 3 else "")
        warnings.warn(f"{len(report.sizes_from_keypoints)} entries of {hloc_h5} have no image_size: taken from "
                      f"the extent of their keypoints ({shown})", stacklevel=2)
    return report


def import_matches(hloc_h5: str | os.PathLike, out_store: str | os.PathLike, names: Iterable[str], *,
                   num_keypoints: Mapping[str, int] | None = None, overwrite: bool = False,
                   on_item: OnItem | None = None) -> MatchImport:
    """Read hloc's matches file into a delfi `MatchStore`, both layouts.

    Args:
        hloc_h5: hloc's matches file: groups ``"<name0>/<name1>"`` (new) or ``"<name0>_<name1>"``
            (old), names with ``/`` written as ``-``, holding ``matches0`` (N0,) and
            ``matching_scores0`` (N0,).
        out_store: the delfi match store to create or resume (pairs it has are skipped).
        names: the image names of the features; they map hloc's pair paths back to real names.
        num_keypoints: keypoints per image; when given, ``len(matches0)`` must be N0 and every
            index of image 1 below N1.
        overwrite: start the store afresh (only a delfi match store is replaced).
        on_item: progress callback ``(hloc path, status)``.

    Returns:
        A `MatchImport`. Pair paths that no name or several names map to, and broken pairs, are
        listed in ``failures`` with the reason and skipped; a pair found in both layouts is imported
        from the new one and the old one reported.

    Raises:
        HlocError: ``hloc_h5`` cannot be read as HDF5; StoreError: ``out_store`` cannot be written.
    """
    from delfi.io.matches import MatchStore

    report = MatchImport(path=Path(out_store))
    by_dash: dict[str, list[str]] = {}
    for name in sorted(set(names)):
        by_dash.setdefault(_dash(name), []).append(name)
    counts = dict(num_keypoints) if num_keypoints is not None else None
    f = _open(hloc_h5)
    try:
        groups = _pair_groups(f)
        with MatchStore(out_store, "w" if overwrite else "a", attrs={"model": "hloc", "source": "hloc"}) as store:
            seen: dict[tuple[str, str], str] = {}
            for path, layout, group in groups:
                try:
                    if isinstance(group, _Broken):
                        raise group
                    pair = _resolve(path, layout, by_dash)
                    if pair in seen:
                        raise _Broken(f"the pair {pair[0]} {pair[1]} is also at {seen[pair]!r} (imported from there)")
                    seen[pair] = path
                    if pair in store:
                        report.already_present += 1
                        _notify(on_item, path, "skipped")
                        continue
                    matches, defaulted = _delfi_matches(group, pair, counts)
                    store.put(pair[0], pair[1], matches)
                except (_Broken, ValueError) as exc:
                    report.failures.append((path, str(exc)))
                    _notify(on_item, path, "failed")
                    continue
                report.imported += 1
                report.matches += len(matches)
                report.layouts[layout] += 1
                report.scores_defaulted += defaulted
                _notify(on_item, path, "done")
    finally:
        f.close()
    return report


def _pair_groups(f: Any) -> list[tuple[str, str, Any]]:
    """``(hloc path, layout, group or _Broken)`` of every pair group: new-layout ones first."""
    import h5py

    new: list[tuple[str, str, Any]] = []
    old: list[tuple[str, str, Any]] = []
    other: list[tuple[str, str, Any]] = []
    for key0 in sorted(f.keys()):
        try:
            obj0 = f[key0]
        except Exception as exc:  # noqa: BLE001
            other.append((key0, "/", _Broken(f"cannot be read ({exc})")))
            continue
        if not isinstance(obj0, h5py.Group):
            other.append((key0, "/", _Broken("a dataset at the file's root, not a pair group")))
            continue
        if "matches0" in obj0:
            old.append((key0, "_", obj0))
        for key1 in sorted(obj0.keys()):
            path = f"{key0}/{key1}"
            try:
                obj1 = obj0[key1]
            except Exception as exc:  # noqa: BLE001
                other.append((path, "/", _Broken(f"cannot be read ({exc})")))
                continue
            if isinstance(obj1, h5py.Group):
                new.append((path, "/", obj1))
            elif key1 not in ("matches0", "matching_scores0") or "matches0" not in obj0:
                other.append((path, "/", _Broken("not a pair group (no matches0)")))
    return new + old + other


def _resolve(path: str, layout: str, by_dash: dict[str, list[str]]) -> tuple[str, str]:
    """The real ``(name0, name1)`` of an hloc pair path; `_Broken` if unknown or ambiguous."""
    if layout == "/":
        key0, key1 = path.split("/", 1)
        candidates = [(a, b) for a in by_dash.get(key0, []) for b in by_dash.get(key1, [])]
        if not candidates:
            missing = [k for k in (key0, key1) if k not in by_dash]
            raise _Broken(f"no image of the features is named {' or '.join(map(repr, missing))} "
                          f"(with '-' for '/')")
    else:
        splits = [(path[:i], path[i + 1:]) for i, c in enumerate(path) if c == "_"]
        candidates = [(a, b) for left, right in splits
                      for a in by_dash.get(left, []) for b in by_dash.get(right, [])]
        if not candidates:
            raise _Broken("no two image names of the features joined by '_' (with '-' for '/') give this name")
    if len(candidates) > 1:
        shown = "; ".join(f"{a} {b}" for a, b in candidates[:4]) + ("; ..." if len(candidates) > 4 else "")
        raise _Broken(f"ambiguous: it could be the pair {shown}")
    return candidates[0]


def _delfi_matches(group: Any, pair: tuple[str, str], counts: dict[str, int] | None) -> tuple[Any, bool]:
    """`Matches` of one hloc pair group and whether its scores were defaulted; `_Broken` if unusable."""
    import torch

    from delfi.types import Matches

    m = _dataset(group, "matches0")
    if m is None:
        raise _Broken("missing dataset matches0")
    if m.dtype.kind not in "iu" or m.ndim != 1:
        raise _Broken(f"matches0 must be (N0,) integers, got shape {tuple(m.shape)} dtype {m.dtype}")
    m = m.astype(np.int64)
    if (m < -1).any():
        raise _Broken(f"matches0 holds negative values other than -1 (e.g. {int(m[m < -1][0])}): int16 overflow?")
    s = _dataset(group, "matching_scores0")
    defaulted = s is None
    s = np.ones(m.shape[0]) if s is None else _numeric(s, "matching_scores0", (m.shape[0],),
                                                        f"does not match matches0 ({m.shape[0]},)")
    i0 = np.flatnonzero(m != -1)
    i1 = m[i0]
    if counts is not None:
        for name in pair:
            if name not in counts:
                raise _Broken(f"image {name!r} has no readable features")
        if m.shape[0] != counts[pair[0]]:
            raise _Broken(f"matches0 has {m.shape[0]} entries, {pair[0]!r} has {counts[pair[0]]} keypoints")
        if i1.size and i1.max() >= counts[pair[1]]:
            raise _Broken(f"matches0 index {int(i1.max())} is beyond the {counts[pair[1]]} keypoints of {pair[1]!r}")
    indices = torch.from_numpy(np.stack([i0, i1], axis=1).astype(np.int64).reshape(-1, 2))
    scores = torch.from_numpy(np.asarray(s, dtype=np.float32)[i0])
    return Matches(indices=indices, scores=scores, meta={"source": "hloc"}), defaulted
