"""delfi: learned local and global image features (DELF, DELG, R2D2, multi-level attention).

The public API is imported lazily so that `import delfi` stays cheap (no torch import until needed).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "Features": "delfi.types",
    "Matches": "delfi.types",
    "rescale_keypoints": "delfi.types",
    "models": "delfi.models",
    "io": "delfi.io",
    "extract": "delfi.extract",
    "eval": "delfi.eval",
    "match": "delfi.match",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'delfi' has no attribute {name!r}")
    module = import_module(_LAZY[name])
    return module if module.__name__ == f"delfi.{name}" else getattr(module, name)
