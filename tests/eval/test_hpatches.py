"""D2-Net HPatches protocol: hand-built cases, real caches (published numbers), real v_wormhole."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from delfi.datasets.hpatches import load_homography
from delfi.eval.hpatches import (
    HPatchesResult,
    evaluate_sequences,
    load_cache,
    load_result,
    pair_errors,
    refine_inliers,
    save_cache,
)
from delfi.types import Features

PUBLISHED_MMA3 = {
    "r2d2_WAF_N16.size-256-1024.npy": 0.687,
    "r2d2_WASF_N16.size-256-1024.npy": 0.721,
    "r2d2_WASF_N16.scale-0.3-1.npy": 0.758,
    "delf.npy": 0.489,
    "superpoint.npy": 0.645,
    "d2-net.npy": 0.406,
    "disk.npy": 0.776,
}


def _features(kp, desc) -> Features:
    kp = torch.as_tensor(np.asarray(kp, dtype=np.float32).reshape(-1, 2))
    desc = torch.as_tensor(np.ascontiguousarray(desc, dtype=np.float32))
    return Features(keypoints=kp, scores=torch.ones(len(kp)), descriptors=desc)


def _write_seq(root, name, H):
    (root / name).mkdir(parents=True)
    for k in range(2, 7):
        np.savetxt(root / name / f"H_1_{k}", H)


def _project(kp, H):
    p = np.c_[kp, np.ones(len(kp))] @ np.asarray(H).T
    return p[:, :2] / p[:, 2:]


KP1 = np.array([[10.0, 10.0], [20.0, 20.0], [30.0, 30.0], [40.0, 40.0]])
OFFSETS = np.array([[0.5, 0.0], [0.0, 1.5], [2.5, 0.0], [0.0, 20.0]])  # errors 0.5, 1.5, 2.5, 20
DESC = np.eye(4)


def test_pair_errors_identity_translation_projective():
    m = np.array([[0, 0], [1, 1], [2, 2], [3, 3]])
    np.testing.assert_allclose(pair_errors(KP1, KP1 + OFFSETS, m, np.eye(3)), [0.5, 1.5, 2.5, 20])
    T = np.array([[1, 0, 5], [0, 1, -3], [0, 0, 1.0]])
    np.testing.assert_allclose(pair_errors(KP1, KP1 + [5, -3], m, T), 0, atol=1e-12)
    P = np.array([[1.2, 0.1, 3], [0.05, 0.9, -2], [1e-3, 2e-4, 1.1]])
    kp1 = _project(KP1, P)
    reversed_matches = np.array([[0, 3], [1, 2], [2, 1], [3, 0]])
    np.testing.assert_allclose(pair_errors(KP1, kp1[::-1], reversed_matches, P), 0, atol=1e-9)
    np.testing.assert_allclose(pair_errors(KP1, kp1 + [3, 4], m, P), 5.0)
    no_matches = torch.zeros((0, 2), dtype=torch.int64)
    assert pair_errors(torch.tensor(KP1), torch.tensor(KP1), no_matches, np.eye(3)).shape == (0,)
    at_infinity = np.array([[1, 0, 0], [0, 1, 0], [1, 0, -10.0]])  # w = 0 at x = 10
    assert np.isinf(pair_errors(KP1[:1], KP1[:1], [[0, 0]], at_infinity)).all()


def test_evaluate_hand_built(tmp_path):
    root = tmp_path / "hp"
    T = np.array([[1, 0, 5], [0, 1, -3], [0, 0, 1.0]])
    _write_seq(root, "i_identity", np.eye(3))
    _write_seq(root, "v_shift", T)
    feats = {("i_identity", 1): _features(KP1, DESC), ("v_shift", 1): _features(KP1, DESC)}
    for k in range(2, 7):
        feats[("i_identity", k)] = _features(KP1 + OFFSETS, DESC)
        # v_shift: image k reversed order; errors 0, 0, 0, 1.5 (k<6); image 6 has no features at all
        kpk = _project(KP1, T) + [[0, 0], [0, 0], [0, 0], [1.5, 0]]
        empty = _features(np.zeros((0, 2)), np.zeros((0, 4)))
        feats[("v_shift", k)] = _features(kpk[::-1], DESC[::-1]) if k < 6 else empty
    res = evaluate_sequences(feats, root, ["i_identity", "v_shift"], thresholds=range(1, 16))
    assert (res.n_i_pairs, res.n_v_pairs) == (5, 5)
    assert res.seq_type == ["i"] * 5 + ["v"] * 5
    assert res.n_matches == [4] * 9 + [0]
    assert res.n_feats == [4] * 6 + [4] * 5 + [0]
    for t, p in {1: 0.25, 2: 0.5, 3: 0.75, 15: 0.75}.items():
        assert res.i_err[t] == pytest.approx(5 * p) and res.mma(t, "i") == pytest.approx(p)
    assert res.v_err[1] == pytest.approx(4 * 0.75) and res.v_err[2] == pytest.approx(4 * 1.0)  # pair 6 adds 0
    assert res.mma(2, "v") == pytest.approx(0.8)
    assert res.mma(1) == pytest.approx((1.25 + 3.0) / 10)
    assert res.mma_curve("i")[3] == pytest.approx(0.75)
    s = res.summary()
    assert sorted(s["mma"]) == list(range(1, 11)) and s["n_matches"] == pytest.approx(3.6)
    assert s["n_feats"] == pytest.approx(44 / 12)
    with pytest.raises(KeyError):
        res.mma(16)
    with pytest.raises(ValueError):
        res.mma(1, "x")
    # a callable source gives the same result
    res2 = evaluate_sequences(lambda s, k: feats[(s, k)], root, ["i_identity", "v_shift"])
    assert res2 == res


def test_zero_match_pair_counts_zero(tmp_path):
    root = tmp_path / "hp"
    _write_seq(root, "v_empty", np.eye(3))
    feats = {("v_empty", 1): _features(KP1, DESC)}
    for k in range(2, 7):
        feats[("v_empty", k)] = _features(np.zeros((0, 2)), np.zeros((0, 4)))
    res = evaluate_sequences(feats, root)
    assert res.n_v_pairs == 5 and res.n_i_pairs == 0 and res.n_matches == [0] * 5
    assert res.mma(5) == 0.0 and np.isnan(res.mma(5, "i"))


PROJECTIVE = np.array([[1.1, 0.05, 4.0], [-0.03, 0.95, -2.0], [2e-4, -1e-4, 1.0]])


def _inliers_and_outliers(n_in: int = 40, n_out: int = 10, noise: float = 0.0, seed: int = 0):
    """Image 1 and image k keypoints of ``n_in`` true correspondences under `PROJECTIVE` (within
    ``noise`` px) followed by ``n_out`` gross outliers (moved 30-80 px); descriptors match index i to i."""
    rng = np.random.default_rng(seed)
    n = n_in + n_out
    kp1 = rng.uniform(20, 300, (n, 2))
    kpk = _project(kp1, PROJECTIVE) + rng.uniform(-noise, noise, (n, 2))
    angle = rng.uniform(0, 2 * np.pi, n_out)
    kpk[n_in:] += rng.uniform(30, 80, (n_out, 1)) * np.c_[np.cos(angle), np.sin(angle)]
    return _features(kp1, np.eye(n)), _features(kpk, np.eye(n))


def _all_matches(n: int):
    from delfi.types import Matches

    return Matches(indices=torch.arange(n).repeat(2, 1).T.contiguous(), scores=torch.ones(n))


def test_refined_scores_only_the_homography_inliers(tmp_path):
    root = tmp_path / "hp"
    _write_seq(root, "v_proj", PROJECTIVE)
    f1, fk = _inliers_and_outliers()
    feats = {("v_proj", 1): f1, **{("v_proj", k): fk for k in range(2, 7)}}
    plain = evaluate_sequences(feats, root, thresholds=[1, 3, 5])
    refined = evaluate_sequences(feats, root, thresholds=[1, 3, 5], refine="ransac")
    assert plain.mma(3) == pytest.approx(0.8) and plain.n_matches == [50] * 5
    assert refined.mma(1) == 1.0 and refined.mma(3) == 1.0 and refined.n_matches == [40] * 5
    assert refined.n_feats == plain.n_feats and refined.seq_type == plain.seq_type == ["v"] * 5
    found = []
    evaluate_sequences(feats, root, ["v_proj"], [3], refine="ransac", on_pair=lambda *a: found.append(len(a[4])))
    assert found == [50] * 5  # on_pair still sees every mutual-NN match
    mask = refine_inliers(f1, fk, _all_matches(50))
    assert mask.dtype == bool and mask[:40].all() and not mask[40:].any()
    with pytest.raises(ValueError, match="refine"):
        evaluate_sequences(feats, root, refine="lmeds")


def test_refined_too_few_matches_or_failed_fit_count_zero(tmp_path):
    root = tmp_path / "hp"
    _write_seq(root, "i_few", np.eye(3))
    _write_seq(root, "v_flat", np.eye(3))
    same = _features([[7.0, 7.0]] * 6, np.eye(6))  # six matches at one point: no homography fits
    feats = {("i_few", k): _features(KP1[:3], DESC[:3, :3]) for k in range(1, 7)}  # three exact matches
    feats.update({("v_flat", k): same for k in range(1, 7)})
    plain = evaluate_sequences(feats, root, thresholds=[3])
    refined = evaluate_sequences(feats, root, thresholds=[3], refine="ransac")
    assert plain.mma(3) == 1.0 and plain.n_matches == [3] * 5 + [6] * 5
    assert refined.mma(3) == 0.0 and refined.n_matches == [0] * 10 and refined.n_pairs == 10


def test_refined_is_deterministic_for_a_seed(tmp_path):
    root = tmp_path / "hp"
    _write_seq(root, "v_noisy", PROJECTIVE)
    f1, fk = _inliers_and_outliers(n_in=60, n_out=40, noise=3.0, seed=1)
    feats = {("v_noisy", 1): f1, **{("v_noisy", k): fk for k in range(2, 7)}}
    runs = [evaluate_sequences(feats, root, refine="ransac", seed=7, refine_threshold=2.0) for _ in range(2)]
    assert runs[0] == runs[1]
    assert 0 < runs[0].n_matches[0] < 100 and runs[0].mma(5) > evaluate_sequences(feats, root).mma(5)
    save_cache(runs[0], tmp_path / "refined.npy")
    assert load_result(tmp_path / "refined.npy") == runs[0]


def test_cache_round_trip(tmp_path):
    res = HPatchesResult(
        i_err={t: 0.1 * t for t in range(1, 16)}, v_err={t: 0.2 * t for t in range(1, 16)}, n_i_pairs=5,
        n_v_pairs=10, n_feats=list(range(18)), n_matches=list(range(15)), seq_type=["i"] * 5 + ["v"] * 10,
    )  # fmt: skip
    path = save_cache(res, tmp_path / "mine")  # exactly this path, no .npy appended
    assert path == tmp_path / "mine" and path.is_file()
    assert load_result(path) == res
    c = load_cache(path)
    assert c["mma"][3] == pytest.approx((0.3 + 0.6) / 15) and c["mma_i"][2] == pytest.approx(0.04)
    assert c["n_feats"] == pytest.approx(8.5) and c["n_matches"] == pytest.approx(7.0)
    # readable by plain numpy as the D2-Net notebook would
    raw = np.load(path, allow_pickle=True)
    assert raw.shape == (3,) and raw[0][3] == pytest.approx(0.3) and list(raw[2][0]) == res.seq_type


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_load_cache_refuses_foreign_pickles(tmp_path, capsys):
    arr = np.empty(3, dtype=object)
    arr[0], arr[1], arr[2] = {1: 0.5}, {1: 0.5}, [_Evil(), np.array([1]), np.array([1])]
    np.save(tmp_path / "evil.npy", arr, allow_pickle=True)
    with pytest.raises(ValueError, match="forbidden global"):
        load_cache(tmp_path / "evil.npy")
    assert "never run" not in capsys.readouterr().out
    np.save(tmp_path / "numeric.npy", np.zeros(3))
    with pytest.raises(ValueError, match="object array"):
        load_cache(tmp_path / "numeric.npy")
    (tmp_path / "text.npy").write_text("hello")
    with pytest.raises(ValueError, match="header"):
        load_cache(tmp_path / "text.npy")
    arr[2] = [np.array(["i", "x"]), np.array([1]), np.array([1, 2])]
    np.save(tmp_path / "badtype.npy", arr, allow_pickle=True)
    with pytest.raises(ValueError, match="seq_type"):
        load_cache(tmp_path / "badtype.npy")
    with pytest.raises(FileNotFoundError):
        load_cache(tmp_path / "missing.npy")


@pytest.mark.parametrize("name,mma3", sorted(PUBLISHED_MMA3.items()))
def test_published_caches(shared_data, name, mma3):
    c = load_cache(shared_data / "hpatches-cache" / name)
    assert round(c["mma"][3], 3) == mma3
    assert (c["n_i_pairs"], c["n_v_pairs"]) == (260, 280)
    assert len(c["feats_per_image"]) == 648 and len(c["matches_per_pair"]) == 540
    assert sorted(c["mma"]) == list(range(1, 16))
    assert all(a <= b + 1e-12 for a, b in zip(list(c["mma"].values()), list(c["mma"].values())[1:]))
    if name == "delf.npy":  # D2-Net paper: 0.896 illumination, 0.112 viewpoint
        assert (round(c["mma_i"][3], 3), round(c["mma_v"][3], 3)) == (0.896, 0.112)
    if name == "disk.npy":  # ALIKE's 5-item layout also carries homography accuracy
        assert 0 < c["homography_accuracy"][3] <= 1


def test_real_v_wormhole_perfect_features(shared_data):
    from delfi.io.images import image_size

    root = shared_data / "hpatches"
    w, h = image_size(root / "v_wormhole" / "1.ppm")
    rng = np.random.default_rng(0)
    n = 500
    kp1 = rng.uniform([0, 0], [w - 1, h - 1], size=(n, 2))
    desc = rng.standard_normal((n, 64))
    desc /= np.linalg.norm(desc, axis=1, keepdims=True)
    feats = {("v_wormhole", 1): _features(kp1, desc)}
    for k in range(2, 7):
        perm = rng.permutation(n)
        kpk = _project(kp1, load_homography(root, "v_wormhole", k))
        feats[("v_wormhole", k)] = _features(kpk[perm], desc[perm])
    res = evaluate_sequences(feats, root, ["v_wormhole"])
    assert res.n_v_pairs == 5 and res.n_matches == [n] * 5 and res.n_feats == [n] * 6
    assert res.mma(1) == 1.0 and res.mma(1, "v") == 1.0
    # shifting image-k keypoints by 2 px drops MMA@1 to 0 but keeps MMA@3 at 1
    for k in range(2, 7):
        f = feats[("v_wormhole", k)]
        feats[("v_wormhole", k)] = _features(f.keypoints.numpy() + [2.0, 0.0], f.descriptors.numpy())
    res = evaluate_sequences(lambda s, k: feats[(s, k)], root, ["v_wormhole"], thresholds=[1, 3])
    assert res.mma(1) == 0.0 and res.mma(3) == 1.0
