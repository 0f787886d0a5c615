"""The settings of each index kind, checked by name and type before anything is built.

`check_index_settings` is what `delfi.retrieval.search.build_index`, `GlobalIndex.build` and the
loaders call, so every command that builds or reads an index (``delfi index build``, the ``eval``
commands) refuses a misspelt or mistyped setting with one message: which setting, which kind,
what was expected, and the closest known name.
"""

from __future__ import annotations

import difflib
import math
from typing import Any, Mapping

import numpy as np

__all__ = ["IndexSettingsError", "INDEX_SETTINGS", "check_index_settings"]

# kind -> setting -> (type, lowest value or None); "exact" and "flat" take none.
_IVFPQ = {"nlist": ("int", 1), "m": ("int", 1), "nbits": ("int", 1), "nprobe": ("int", 1), "refine": ("int", 0),
          "refine_type": ("str", None), "seed": ("int", None)}
_ASMK = {"codebook_size": ("int", 1), "binary": ("bool", None), "alpha": ("float", None),
         "similarity_threshold": ("float", None), "multiple_assignment_db": ("int", 1),
         "multiple_assignment_query": ("int", 1), "use_idf": ("bool", None), "seed": ("int", None)}
INDEX_SETTINGS: dict[str, dict[str, tuple[str, int | None]]] = {"exact": {}, "flat": {}, "ivfpq": _IVFPQ,
                                                                  "asmk": _ASMK}
_CHOICES = {"refine_type": ("flat", "fp16", "sq8")}
_EXPECTED = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}


class IndexSettingsError(ValueError):
    """An index setting that is unknown for the kind or has a wrong value (the message names both)."""


def _type_ok(kind: str, value: Any) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return kind == "bool"
    if kind == "int":
        return isinstance(value, (int, np.integer))
    if kind == "float":
        return isinstance(value, (int, float, np.integer, np.floating)) and math.isfinite(value)
    return kind == "str" and isinstance(value, str)


def check_index_settings(kind: str, settings: Mapping[str, Any] | None) -> dict[str, Any]:
    """``settings`` (name -> value) checked against the known settings of an index ``kind``.

    Returns:
        A copy of ``settings``.

    Raises:
        IndexSettingsError: an unknown kind, an unknown setting (with the closest known name), or a
            value of the wrong type or range.
    """
    settings = dict(settings or {})
    if kind not in INDEX_SETTINGS:
        raise IndexSettingsError(f"unknown index kind {kind!r}; choose one of {', '.join(INDEX_SETTINGS)}")
    known = INDEX_SETTINGS[kind]
    article = "an" if kind[0] in "aeiou" else "a"
    for name, value in settings.items():
        if name not in known:
            if not known:
                raise IndexSettingsError(f"unknown setting {name!r} for {article} {kind} index (it takes no settings; "
                                         "nlist, m, nprobe ... are ivfpq settings)")
            close = difflib.get_close_matches(str(name), list(known), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise IndexSettingsError(f"unknown setting {name!r} for {article} {kind} index "
                                     f"(known: {', '.join(known)}){hint}")
        expected, low = known[name]
        if not _type_ok(expected, value):
            raise IndexSettingsError(f"setting {name}={value!r} for {article} {kind} index: expected "
                                     f"{_EXPECTED[expected]}, got {type(value).__name__}")
        if low is not None and value < low:
            raise IndexSettingsError(f"setting {name}={value!r} for {article} {kind} index: must be >= {low}")
        if name in _CHOICES and value not in _CHOICES[name]:
            raise IndexSettingsError(f"setting {name}={value!r} for {article} {kind} index: choose one of "
                                     f"{', '.join(_CHOICES[name])}")
    return settings
