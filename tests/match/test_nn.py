"""Chunked nearest-neighbour matching against a dense brute-force reference."""

from __future__ import annotations

import itertools

import pytest
import torch

from delfi.match import mutual_nn, nearest_neighbours, similarity_to_distance
from delfi.types import Matches


def _desc(n: int, d: int = 32, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    return torch.nn.functional.normalize(x, dim=1).to(dtype)


def _dense(desc0, desc1, ratio=None, max_distance=None, mutual=True) -> list[tuple[int, int]]:
    """Reference: the full similarity matrix, one element at a time where it matters."""
    sim = desc0.double() @ desc1.double().T
    n0, n1 = sim.shape
    if n0 == 0 or n1 == 0 or (ratio is not None and n1 < 2):
        return []
    nn01 = sim.argmax(dim=1)
    nn10 = sim.argmax(dim=0)
    out = []
    for i in range(n0):
        j = int(nn01[i])
        if mutual and int(nn10[j]) != i:
            continue
        d = torch.sqrt(torch.clamp(2 - 2 * sim[i], min=0))
        d_sorted = torch.sort(d).values
        if ratio is not None and not (d_sorted[1] > 0 and d_sorted[0] / d_sorted[1] < ratio):
            continue
        if max_distance is not None and not d[j] <= max_distance:
            continue
        out.append((i, j))
    return out


def _pairs(m: Matches) -> list[tuple[int, int]]:
    return [tuple(r) for r in m.indices.tolist()]


@pytest.mark.parametrize(
    "ratio,max_distance,mutual", list(itertools.product([None, 0.9, 0.97], [None, 1.25], [True, False]))
)
@pytest.mark.parametrize("chunk_size", [1, 7, 64, 4096])
def test_matches_dense_reference(ratio, max_distance, mutual, chunk_size):
    # Correlated sets so that some matches pass every filter.
    desc1 = _desc(150, seed=1)
    noise = _desc(120, seed=2)
    desc0 = torch.nn.functional.normalize(desc1[:120] + 0.6 * noise, dim=1)
    m = mutual_nn(desc0, desc1, ratio=ratio, max_distance=max_distance, mutual=mutual, chunk_size=chunk_size)
    expected = _dense(desc0, desc1, ratio, max_distance, mutual)
    assert _pairs(m) == expected
    assert m.indices.dtype == torch.int64 and m.scores.dtype == torch.float32
    assert len(m) > 0
    if m.indices.shape[0]:
        sims = (desc0[m.indices[:, 0]] * desc1[m.indices[:, 1]]).sum(1)
        torch.testing.assert_close(m.scores, sims, rtol=0, atol=1e-5)
        assert torch.all(m.indices[1:, 0] > m.indices[:-1, 0])


def test_filters_actually_filter():
    desc1 = _desc(200, seed=3)
    desc0 = torch.nn.functional.normalize(desc1[:150] + 1.5 * _desc(150, seed=4), dim=1)
    plain = len(mutual_nn(desc0, desc1, mutual=False))
    mnn = len(mutual_nn(desc0, desc1))
    ratio = len(mutual_nn(desc0, desc1, ratio=0.8))
    dist = len(mutual_nn(desc0, desc1, max_distance=1.0))
    assert plain == 150 and mnn < plain and ratio < mnn and dist < mnn


def test_chunk_size_and_shapes_do_not_change_result():
    desc0, desc1 = _desc(333, seed=5), _desc(211, seed=6)
    ref = mutual_nn(desc0, desc1, chunk_size=10_000)
    for cs in (1, 2, 50, 332, 333):
        m = mutual_nn(desc0, desc1, chunk_size=cs)
        assert torch.equal(m.indices, ref.indices)
        torch.testing.assert_close(m.scores, ref.scores, rtol=0, atol=1e-6)  # BLAS blocking may differ


def test_float16_input_upcast():
    desc0, desc1 = _desc(90, seed=7, dtype=torch.float16), _desc(80, seed=8, dtype=torch.float16)
    m = mutual_nn(desc0, desc1, ratio=0.95, chunk_size=16)
    assert m.scores.dtype == torch.float32
    assert _pairs(m) == _dense(desc0.float(), desc1.float(), ratio=0.95)
    # mixed precision is promoted too
    assert _pairs(mutual_nn(desc0, desc1.float())) == _dense(desc0.float(), desc1.float())


@pytest.mark.parametrize("n0,n1", [(0, 5), (5, 0), (0, 0)])
def test_empty_inputs(n0, n1):
    m = mutual_nn(torch.zeros(n0, 8), torch.zeros(n1, 8), ratio=0.8, max_distance=1.0)
    assert m.indices.shape == (0, 2) and m.indices.dtype == torch.int64
    assert m.scores.shape == (0,) and m.scores.dtype == torch.float32


def test_ratio_with_single_candidate_is_empty_but_plain_works():
    desc0, desc1 = _desc(4, seed=9), _desc(1, seed=10)
    assert len(mutual_nn(desc0, desc1, ratio=0.99)) == 0
    m = mutual_nn(desc0, desc1, mutual=False)
    assert m.indices[:, 1].tolist() == [0, 0, 0, 0]
    assert len(mutual_nn(desc0, desc1)) == 1
    idx, best, second = nearest_neighbours(desc0, desc1)
    assert idx.tolist() == [0] * 4 and torch.isinf(second).all()


def test_ties_broken_towards_lowest_index():
    # desc1 rows 1 and 3 are identical; desc0 rows 0 and 2 are identical.
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    desc1 = torch.stack([a[1], a[0], a[1], a[0]])
    desc0 = torch.stack([a[0], a[1], a[0]])
    for cs in (1, 2, 3):
        m = mutual_nn(desc0, desc1, mutual=False, chunk_size=cs)
        assert _pairs(m) == [(0, 1), (1, 0), (2, 1)]
        m = mutual_nn(desc0, desc1, chunk_size=cs)
        assert _pairs(m) == [(0, 1), (1, 0)]
        # exact duplicates make d2 == d1: the ratio test rejects them
        assert len(mutual_nn(desc0, desc1, ratio=0.99, chunk_size=cs)) == 0


def test_distance_and_nearest_neighbours_helper():
    assert torch.allclose(similarity_to_distance(torch.tensor([1.0, 0.0, -1.0, 1.0000001])),
                          torch.tensor([0.0, 2**0.5, 2.0, 0.0]))  # fmt: skip
    desc0, desc1 = _desc(50, seed=11), _desc(60, seed=12)
    idx, best, second = nearest_neighbours(desc0, desc1, chunk_size=7)
    sim = desc0 @ desc1.T
    top = sim.topk(2, dim=1).values
    assert torch.equal(idx, sim.argmax(1))
    torch.testing.assert_close(best, top[:, 0])
    torch.testing.assert_close(second, top[:, 1])


def test_bad_inputs():
    with pytest.raises(ValueError, match="dimensions"):
        mutual_nn(torch.zeros(3, 4), torch.zeros(3, 5))
    with pytest.raises(ValueError, match="chunk_size"):
        mutual_nn(torch.zeros(3, 4), torch.zeros(3, 4), chunk_size=0)
    with pytest.raises(ValueError):
        mutual_nn(torch.zeros(4), torch.zeros(3, 4))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cpu_equals_gpu():
    desc1 = _desc(3000, d=128, seed=13)
    desc0 = torch.nn.functional.normalize(desc1[:2500] + 0.7 * _desc(2500, d=128, seed=14), dim=1)
    for kwargs in ({}, {"ratio": 0.9}, {"max_distance": 1.1, "mutual": False}):
        cpu = mutual_nn(desc0, desc1, chunk_size=333, **kwargs)
        gpu = mutual_nn(desc0.cuda(), desc1.cuda(), chunk_size=333, **kwargs)
        assert gpu.indices.device.type == "cuda"
        assert torch.equal(cpu.indices, gpu.indices.cpu())
        torch.testing.assert_close(cpu.scores, gpu.scores.cpu(), rtol=0, atol=1e-5)
    half = mutual_nn(desc0.half().cuda(), desc1.half().cuda(), chunk_size=1000)
    assert torch.equal(half.indices.cpu(), mutual_nn(desc0.half(), desc1.half(), chunk_size=1000).indices)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_large_fits_on_gpu():
    desc0, desc1 = _desc(20_000, d=128, seed=15).cuda(), _desc(20_000, d=128, seed=16).cuda()
    m = mutual_nn(desc0, desc1, chunk_size=2048)
    assert m.indices.shape[1] == 2 and len(m) > 0
