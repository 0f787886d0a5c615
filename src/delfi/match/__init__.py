"""Descriptor matching: chunked (mutual) nearest neighbours with ratio / distance filters, and
geometric verification (robust homography / fundamental / affine fitting)."""

from delfi.match.nn import mutual_nn, nearest_neighbours, similarity_to_distance
from delfi.match.verify import (
    BACKENDS,
    CALIBRATED,
    GEOMETRIES,
    MIN_INLIERS,
    MIN_SAMPLES,
    STATUSES,
    MissingBackendError,
    chance_inliers,
    estimate_geometry,
    verification_status,
    verify,
)

__all__ = [
    "mutual_nn",
    "nearest_neighbours",
    "similarity_to_distance",
    "BACKENDS",
    "CALIBRATED",
    "GEOMETRIES",
    "MIN_INLIERS",
    "MIN_SAMPLES",
    "STATUSES",
    "MissingBackendError",
    "chance_inliers",
    "estimate_geometry",
    "verification_status",
    "verify",
]
