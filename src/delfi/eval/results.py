"""Writing benchmark results: JSON-safe values, atomic ``results.json``, the common report fields.

Results are never written over a file delfi did not make: `claim_results` accepts an existing
``results.json`` only when it is delfi's own results of the same benchmark (its ``benchmark`` field,
or for files of older versions the fields that benchmark always wrote), and `claim_run_dir` also
refuses a run folder holding a benchmark's other products (``hpatches.npy``, ``mma.png``...) without
such a ``results.json`` beside them. `check_outside` keeps outputs out of the dataset folder.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

__all__ = [
    "ResultsConflictError",
    "check_outside",
    "claim_results",
    "claim_run_dir",
    "json_safe",
    "mark_run_dir",
    "report_json",
    "results_benchmark",
    "write_json",
    "write_results",
]


def json_safe(value: Any) -> Any:
    """``value`` with non-finite floats as None and numpy scalars / arrays as Python values."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # numpy scalars and arrays
        value = value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write ``json_safe(data)`` (indented, sorted keys) atomically: a temporary file renamed into place."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(json_safe(data), indent=2, sort_keys=True, allow_nan=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def report_json(benchmark: str, summary: Mapping[str, Any], *, config: Any, n_extracted: int, seconds: float,
                pairs: list, **extra: Any) -> dict[str, Any]:
    """The fields every pair benchmark (HPatches, EVD) writes to results.json, JSON-safe."""
    from delfi import __version__

    out = dict(summary)
    out.update(benchmark=benchmark, **extra, config=config, n_extracted=n_extracted, seconds=seconds,
               delfi_version=__version__, pairs=pairs)
    return json_safe(out)


class ResultsConflictError(ValueError):
    """An output path that holds a file delfi did not write (or another benchmark's results)."""


LEGACY_FIELDS: dict[str, tuple[str, ...]] = {
    "revisitop": ("dataset", "before", "after", "extraction"),
    "vpr": ("recall_before", "recall_after", "rank_change"),
    "vpr-sweep": ("recall_before", "rows"),
}
"""The fields results of each retrieval benchmark always held before they recorded ``benchmark``."""


def results_benchmark(path: str | os.PathLike) -> str | None:
    """The benchmark of the delfi results file at ``path``, or None when it is not one (unreadable,
    not JSON, not a JSON object, without the fields delfi writes)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    if isinstance(data.get("benchmark"), str) and "delfi_version" in data:
        return data["benchmark"]
    for benchmark, fields in LEGACY_FIELDS.items():
        if all(key in data for key in fields) and "benchmark" not in data:
            return benchmark
    return None


def claim_results(path: str | os.PathLike, benchmark: str) -> Path:
    """Check that ``path`` may receive ``benchmark``'s results: absent, or delfi's own results of
    that benchmark (which a new run updates). Raises `ResultsConflictError` naming the file."""
    path = Path(path)
    if path.is_dir():
        raise ResultsConflictError(f"{path}: is a folder, cannot write the {benchmark} results there")
    if path.exists() or path.is_symlink():
        found = results_benchmark(path)
        if found is None:
            raise ResultsConflictError(
                f"{path}: exists and is not a delfi results file: not replaced; choose another --out"
            )
        if found != benchmark:
            raise ResultsConflictError(
                f"{path}: holds delfi's {found} results, not {benchmark}: not replaced; choose another --out"
            )
    return path


def claim_run_dir(run_dir: str | os.PathLike, benchmark: str, products: tuple[str, ...] = (),
                  results: str = "results.json") -> Path:
    """Check that ``run_dir`` may receive a run of ``benchmark``: ``run_dir/results`` passes
    `claim_results`, and none of ``products`` (files the run writes) is there unless that results
    file is delfi's own (so they were written by an earlier run). Raises `ResultsConflictError`."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ResultsConflictError(f"{run_dir}: is a file, not a results folder")
    results_path = claim_results(run_dir / results, benchmark)
    if not results_path.exists():
        for name in products:
            if (run_dir / name).exists():
                raise ResultsConflictError(
                    f"{run_dir / name}: exists but {results_path} does not, so it was not written by a "
                    f"delfi {benchmark} run: not replaced; choose another --out"
                )
    return run_dir


def mark_run_dir(run_dir: str | os.PathLike, benchmark: str, results: str = "results.json") -> None:
    """Write a placeholder ``results`` (``{"complete": false}``) into a claimed run folder that has
    none, so that the products a run writes before its results (rankings...) are known as delfi's
    when it is interrupted, and a rerun is not refused by `claim_run_dir`."""
    path = Path(run_dir) / results
    if not path.exists():
        write_results(path, {"complete": False}, benchmark)


def write_results(path: str | os.PathLike, data: Mapping[str, Any], benchmark: str) -> Path:
    """`write_json` of ``data`` with its ``benchmark`` and ``delfi_version`` fields, after `claim_results`."""
    from delfi import __version__

    claim_results(path, benchmark)
    return write_json(path, {**data, "benchmark": benchmark, "delfi_version": __version__})


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


def check_outside(out: str | os.PathLike, root: str | os.PathLike, what: str = "dataset") -> None:
    """Raise `ResultsConflictError` when the output folder ``out`` is ``root`` or inside it (results
    are never written into the data they are computed from)."""
    out, root = Path(out), Path(root)
    if root.exists() and _inside(out, root):
        raise ResultsConflictError(
            f"{out}: is inside the {what} folder {root}; results are not written into the data: choose another --out"
        )


def first_failure(failures: list[tuple[str, str]], empty: str) -> str:
    """``"<item>: <why> (and N more)"`` for the first of ``failures`` (``(item, reason)`` pairs), or ``empty``."""
    if not failures:
        return empty
    item, why = failures[0]
    return f"{item}: {why}" + (f" (and {len(failures) - 1} more)" if len(failures) > 1 else "")
