"""What an extractor can do, declared by the extractor instead of probed by its callers.

Each extractor class has ``capabilities``, a frozenset of the names below; an instance may narrow it
(a DELG built with ``extract_global=False`` gives no global descriptor). Callers ask `supports`:

>>> supports(model, QUERY_BOXES)        # doctest: +SKIP
True

Names:
    ``local``           ``extract`` returns keypoints with local descriptors.
    ``global``          ``extract`` returns a global descriptor (``Features.global_descriptor``).
    ``scales``          keypoints come with a scale (``Features.scales``).
    ``attention_maps``  ``attention_maps(image)`` gives (scale, attention map) per pyramid level.
    ``query_boxes``     ``extract(image, bbox=(x0, y0, x1, y1))`` crops a query to its box.
"""

from __future__ import annotations

from typing import Any

LOCAL = "local"
GLOBAL = "global"
SCALES = "scales"
ATTENTION_MAPS = "attention_maps"
QUERY_BOXES = "query_boxes"

KNOWN: frozenset[str] = frozenset({LOCAL, GLOBAL, SCALES, ATTENTION_MAPS, QUERY_BOXES})
"""Every capability name an extractor may declare."""

__all__ = ["LOCAL", "GLOBAL", "SCALES", "ATTENTION_MAPS", "QUERY_BOXES", "KNOWN", "capabilities_of", "supports"]


def capabilities_of(model: Any) -> frozenset[str]:
    """The capabilities ``model`` declares (empty for an object that declares none)."""
    declared = getattr(model, "capabilities", frozenset())
    return frozenset(declared)


def supports(model: Any, capability: str) -> bool:
    """Whether ``model`` declares ``capability`` (one of `KNOWN`).

    Raises:
        ValueError: ``capability`` is not a known name (a typo would otherwise always say no).
    """
    if capability not in KNOWN:
        raise ValueError(f"unknown capability {capability!r}; known: {', '.join(sorted(KNOWN))}")
    return capability in capabilities_of(model)
