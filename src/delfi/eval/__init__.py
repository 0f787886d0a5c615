"""Benchmarks and metrics: HPatches (MMA, homography accuracy)."""
