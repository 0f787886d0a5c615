"""Pictures: keypoints on an image, matches between two images, grids of image pairs,
attention maps of an image pyramid.

Needs matplotlib (the ``viz`` extra). Rendering uses the Agg canvas directly: no pyplot, no
change to matplotlib's global backend. Each function saves to ``out`` and returns the `Path`,
or returns the picture as an ``(H, W, 3)`` uint8 RGB array when ``out`` is None.
"""

from delfi.viz.attention import plot_attention
from delfi.viz.matches import plot_keypoints, plot_match_grid, plot_matches

__all__ = ["plot_attention", "plot_keypoints", "plot_match_grid", "plot_matches"]
