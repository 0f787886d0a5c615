"""Descriptor gathering for indexes."""

from __future__ import annotations

import numpy as np
import pytest

from delfi.retrieval.search import _training_sample


def test_training_sample_equals_sampling_the_concatenation():
    descriptors = [np.random.default_rng(i).standard_normal((n, 4)).astype(np.float32) for i, n in enumerate([3, 0, 5, 2])]
    everything = np.concatenate(descriptors)
    pick = np.sort(np.random.default_rng(7).choice(len(everything), 6, replace=False))
    np.testing.assert_array_equal(_training_sample(descriptors, 6, seed=7), everything[pick])
    np.testing.assert_array_equal(_training_sample(descriptors, 100, seed=7), everything)
    with pytest.raises(ValueError, match="no local descriptors"):
        _training_sample([np.zeros((0, 4), np.float32)], 10, seed=0)
