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


def test_bfloat16_mma_within_0005_of_float32(shared_data):
    full = wormhole_mma(shared_data, "float32")
    half = wormhole_mma(shared_data, "bfloat16")
    assert full[3] == pytest.approx(0.7921, abs=0.002)  # measured; the official files give 0.803 (see notes)
    assert abs(half[3] - full[3]) <= 0.005, (full, half)
