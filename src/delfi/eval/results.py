"""Writing benchmark results: JSON-safe values, atomic ``results.json``, the common report fields."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

__all__ = ["json_safe", "write_json", "report_json"]


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
