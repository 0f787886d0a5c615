"""Descriptor matching: chunked (mutual) nearest neighbours with ratio / distance filters."""

from delfi.match.nn import mutual_nn, nearest_neighbours, similarity_to_distance

__all__ = ["mutual_nn", "nearest_neighbours", "similarity_to_distance"]
