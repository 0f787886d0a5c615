"""bfloat16 extraction keeps R2D2's matching quality: MMA@3 on the real v_wormhole sequence within
0.005 of float32 (official r2d2_WASF_N16 weights)."""

from __future__ import annotations

import pytest

from delfi.eval.hpatches import evaluate_sequences
from delfi.models.r2d2 import R2D2, R2D2Config

pytestmark = pytest.mark.slow


def wormhole_mma(shared_data, precision: str) -> dict[int, float]:
    root = shared_data / "hpatches"
    model = R2D2(R2D2Config(precision=precision)).load_weights(shared_data / "r2d2/models/r2d2_WASF_N16.pt")
    features = {k: model.extract(root / "v_wormhole" / f"{k}.ppm") for k in range(1, 7)}
    result = evaluate_sequences(lambda seq, k: features[k], root, ["v_wormhole"])
    return {t: result.mma(t) for t in (1, 3, 5)}


FLOAT32_MMA3 = 0.7921
"""delfi's float32 MMA@3 on v_wormhole (official r2d2_WASF_N16 weights), measured (the official
extractor's own files give 0.803: see the parity notes). The float32 path itself is held to the
official outputs by tests/models/test_r2d2_parity.py, so it is not extracted again here (72 s)."""


def test_bfloat16_mma_within_0005_of_float32(shared_data):
    half = wormhole_mma(shared_data, "bfloat16")
    assert abs(half[3] - FLOAT32_MMA3) <= 0.005, half
