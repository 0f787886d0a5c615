"""Features, Matches and the one coordinate convention (rescale_keypoints)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from delfi.types import GEOMETRY_KINDS, Features, Matches, rescale_keypoints

# --------------------------------------------------------------------------------------------------
# rescale_keypoints
# --------------------------------------------------------------------------------------------------


def test_rescale_formula_hand_values_numpy():
    kp = np.array([[0.0, 0.0], [1.0, 2.0], [-0.5, 9.5]], dtype=np.float32)
    out = rescale_keypoints(kp, 2.0)
    # (x + 0.5) * 2 - 0.5
    expected = np.array([[0.5, 0.5], [2.5, 4.5], [-0.5, 19.5]], dtype=np.float32)
    assert isinstance(out, np.ndarray)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-6)


def test_rescale_formula_hand_values_torch():
    kp = torch.tensor([[0.0, 0.0], [1.0, 2.0], [3.0, 7.0]], dtype=torch.float64)
    out = rescale_keypoints(kp, 0.5)
    # (x + 0.5) * 0.5 - 0.5
    expected = torch.tensor([[-0.25, -0.25], [0.25, 0.75], [1.25, 3.25]], dtype=torch.float64)
    assert isinstance(out, torch.Tensor)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)


def test_rescale_is_not_plain_multiplication():
    # the official R2D2 mapping x * s would give 2.0 here; delfi's pixel-centre mapping gives 2.5
    out = rescale_keypoints(np.array([[1.0, 1.0]]), 2.0)
    np.testing.assert_allclose(out, [[2.5, 2.5]])


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_rescale_per_axis_scales(backend):
    kp = [[1.0, 1.0], [0.0, 3.0]]
    expected = np.array([[(1.5 * 2.0) - 0.5, (1.5 * 3.0) - 0.5], [(0.5 * 2.0) - 0.5, (3.5 * 3.0) - 0.5]])
    if backend == "numpy":
        out = rescale_keypoints(np.array(kp), (2.0, 3.0))
    else:
        out = rescale_keypoints(torch.tensor(kp), (2.0, 3.0)).numpy()
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_rescale_per_point_scales():
    kp = np.array([[0.0, 0.0], [1.0, 1.0]])
    scales = np.array([[2.0, 4.0], [1.0, 0.5]])
    np.testing.assert_allclose(rescale_keypoints(kp, scales), [[0.5, 1.5], [1.0, 0.25]])


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("scale", [2.0, 0.37, (1.7, 0.6)])
def test_rescale_round_trip_is_identity(backend, scale):
    rng = np.random.default_rng(0)
    kp = rng.uniform(-0.5, 100.0, size=(50, 2))
    inverse = tuple(1.0 / np.asarray(scale, dtype=np.float64)) if isinstance(scale, tuple) else 1.0 / scale
    if backend == "torch":
        kp = torch.from_numpy(kp)
        back = rescale_keypoints(rescale_keypoints(kp, scale), inverse)
        torch.testing.assert_close(back, kp, rtol=0, atol=1e-9)
    else:
        back = rescale_keypoints(rescale_keypoints(kp, scale), inverse)
        np.testing.assert_allclose(back, kp, rtol=0, atol=1e-9)


def test_rescale_pixel_centres_of_images():
    # centre of a 2x2 image is (0.5, 0.5); the centre of the 4x4 image is (1.5, 1.5)
    np.testing.assert_allclose(rescale_keypoints(np.array([[0.5, 0.5]]), 2.0), [[1.5, 1.5]])
    torch.testing.assert_close(rescale_keypoints(torch.tensor([[0.5, 0.5]]), 2.0), torch.tensor([[1.5, 1.5]]))
    # and the outer corner -0.5 (edge of the image) stays on the edge
    np.testing.assert_allclose(rescale_keypoints(np.array([[-0.5, 1.5]]), 2.0), [[-0.5, 3.5]])


def test_rescale_integer_keypoints_use_the_float_scale():
    # level pixel indices are int64; the scale must not be truncated to an integer
    out_np = rescale_keypoints(np.array([[0, 1]], dtype=np.int64), 2.5)
    np.testing.assert_allclose(out_np, [[0.75, 3.25]])
    out_t = rescale_keypoints(torch.tensor([[0, 1]]), 2.5)
    assert out_t.is_floating_point()
    torch.testing.assert_close(out_t, torch.tensor([[0.75, 3.25]]))


def test_rescale_empty():
    assert rescale_keypoints(np.zeros((0, 2), np.float32), 2.0).shape == (0, 2)
    assert rescale_keypoints(torch.zeros(0, 2), (2.0, 3.0)).shape == (0, 2)


# --------------------------------------------------------------------------------------------------
# Features
# --------------------------------------------------------------------------------------------------


def make_features(n: int = 5, dim: int = 4, *, scales: bool = True, global_dim: int | None = 3) -> Features:
    g = torch.Generator().manual_seed(n * 10 + dim)
    return Features(
        keypoints=torch.arange(2 * n, dtype=torch.float32).view(n, 2),
        scores=torch.rand(n, generator=g),
        descriptors=torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=1),
        scales=torch.arange(n, dtype=torch.float32) + 1 if scales else None,
        global_descriptor=torch.ones(global_dim) / global_dim**0.5 if global_dim else None,
        image_size=(640, 480),
        meta={"level": 1},
    )


def test_features_basic_properties():
    f = make_features(5, 4)
    assert len(f) == 5
    assert f.descriptor_dim == 4
    assert f.image_size == (640, 480)


def test_features_image_size_coerced_to_int_tuple():
    f = Features(torch.zeros(0, 2), torch.zeros(0), torch.zeros(0, 8), image_size=[np.int64(3), 4.0])
    assert f.image_size == (3, 4)
    assert all(type(v) is int for v in f.image_size)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(keypoints=torch.zeros(3, 3)), "keypoints"),
        (dict(keypoints=torch.zeros(6)), "keypoints"),
        (dict(scores=torch.zeros(4)), "scores"),
        (dict(scores=torch.zeros(3, 1)), "scores"),
        (dict(descriptors=torch.zeros(4, 8)), "descriptors"),
        (dict(descriptors=torch.zeros(3)), "descriptors"),
        (dict(scales=torch.zeros(2)), "scales"),
        (dict(global_descriptor=torch.zeros(1, 8)), "global_descriptor"),
        (dict(image_size=(-1, 10)), "image_size"),
    ],
)
def test_features_validation_errors(kwargs, message):
    base = dict(keypoints=torch.zeros(3, 2), scores=torch.zeros(3), descriptors=torch.zeros(3, 8))
    base.update(kwargs)
    with pytest.raises(ValueError, match=message):
        Features(**base)


def test_features_zero_keypoints():
    f = Features(torch.zeros(0, 2), torch.zeros(0), torch.zeros(0, 128), torch.zeros(0), None, (10, 20))
    assert len(f) == 0
    assert f.descriptor_dim == 128
    assert len(f.top_k(5)) == 0
    assert len(f.select(torch.zeros(0, dtype=torch.bool))) == 0
    arrays = f.numpy()
    back = Features.from_numpy(arrays)
    assert len(back) == 0 and back.descriptor_dim == 128 and back.image_size == (10, 20)


def test_features_select_bool_mask_tensor_and_numpy():
    f = make_features(5)
    mask = [True, False, True, False, True]
    for index in (torch.tensor(mask), np.array(mask)):
        sub = f.select(index)
        assert len(sub) == 3
        torch.testing.assert_close(sub.keypoints, f.keypoints[[0, 2, 4]])
        torch.testing.assert_close(sub.scores, f.scores[[0, 2, 4]])
        torch.testing.assert_close(sub.descriptors, f.descriptors[[0, 2, 4]])
        torch.testing.assert_close(sub.scales, f.scales[[0, 2, 4]])
        # global descriptor, size and meta are kept; the original is untouched
        assert sub.global_descriptor is f.global_descriptor
        assert sub.image_size == f.image_size and sub.meta == {"level": 1}
        assert len(f) == 5


def test_features_select_indices_keep_order_and_repeat():
    f = make_features(5)
    for index in (torch.tensor([4, 0, 0]), np.array([4, 0, 0])):
        sub = f.select(index)
        torch.testing.assert_close(sub.keypoints, torch.tensor([[8.0, 9.0], [0.0, 1.0], [0.0, 1.0]]))
        torch.testing.assert_close(sub.scales, torch.tensor([5.0, 1.0, 1.0]))


def test_features_select_slice_and_no_scales():
    f = make_features(5, scales=False)
    sub = f.select(slice(1, 3))
    assert len(sub) == 2
    assert sub.scales is None
    torch.testing.assert_close(sub.keypoints, torch.tensor([[2.0, 3.0], [4.0, 5.0]]))


def test_features_top_k_ordering():
    f = Features(
        keypoints=torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [3.0, 0.0]]),
        scores=torch.tensor([0.1, 0.9, 0.5, 0.7]),
        descriptors=torch.eye(4),
        scales=torch.tensor([1.0, 2.0, 3.0, 4.0]),
    )
    top = f.top_k(2)
    torch.testing.assert_close(top.scores, torch.tensor([0.9, 0.7]))
    torch.testing.assert_close(top.keypoints[:, 0], torch.tensor([1.0, 3.0]))
    torch.testing.assert_close(top.descriptors, torch.eye(4)[[1, 3]])
    torch.testing.assert_close(top.scales, torch.tensor([2.0, 4.0]))
    # k <= 0 or k >= N: all of them, sorted
    for k in (0, -1, 4, 100):
        torch.testing.assert_close(f.top_k(k).scores, torch.tensor([0.9, 0.7, 0.5, 0.1]))


def test_features_top_k_ties_are_stable():
    scores = torch.tensor([0.5, 1.0, 0.5, 1.0, 0.5, 0.2])
    f = Features(torch.arange(12, dtype=torch.float32).view(6, 2), scores, torch.zeros(6, 2))
    order = f.top_k(4).keypoints[:, 0] / 2
    torch.testing.assert_close(order, torch.tensor([1.0, 3.0, 0.0, 2.0]))
    order_all = f.top_k(0).keypoints[:, 0] / 2
    torch.testing.assert_close(order_all, torch.tensor([1.0, 3.0, 0.0, 2.0, 4.0, 5.0]))


@pytest.mark.parametrize("optional", [True, False])
def test_features_numpy_round_trip(optional):
    f = make_features(6, 5, scales=optional, global_dim=7 if optional else None)
    arrays = f.numpy()
    assert all(isinstance(v, np.ndarray) for k, v in arrays.items() if k != "image_size")
    assert arrays["image_size"] == (640, 480)
    assert ("scales" in arrays) is optional and ("global_descriptor" in arrays) is optional
    np.testing.assert_array_equal(arrays["keypoints"], f.keypoints.numpy())
    back = Features.from_numpy(arrays)
    assert back.image_size == f.image_size
    for name in ("keypoints", "scores", "descriptors", "scales", "global_descriptor"):
        a, b = getattr(f, name), getattr(back, name)
        if a is None:
            assert b is None
        else:
            assert isinstance(b, torch.Tensor)
            torch.testing.assert_close(b, a, rtol=0, atol=0)
    # image_size can be given explicitly (e.g. when stored elsewhere)
    arrays.pop("image_size")
    assert Features.from_numpy(arrays, image_size=(3, 2)).image_size == (3, 2)


def test_features_to_device():
    f = make_features(3)
    on_meta = f.to("meta")
    for name in ("keypoints", "scores", "descriptors", "scales", "global_descriptor"):
        assert getattr(on_meta, name).device.type == "meta"
        assert getattr(f, name).device.type == "cpu"  # the original is not moved
    back = f.to(torch.device("cpu"))
    torch.testing.assert_close(back.descriptors, f.descriptors)
    assert back.meta == f.meta and back.image_size == f.image_size
    assert f.select(torch.tensor([True, False, True])).to("cpu").scales.tolist() == [1.0, 3.0]


# --------------------------------------------------------------------------------------------------
# Matches
# --------------------------------------------------------------------------------------------------


def make_matches(**kwargs) -> Matches:
    base = dict(
        indices=torch.tensor([[0, 3], [1, 1], [2, 0], [4, 2]]),
        scores=torch.tensor([0.9, 0.8, 0.7, 0.6]),
        inliers=torch.tensor([True, False, True, True]),
        model=torch.eye(3, dtype=torch.float64),
        kind="homography",
    )
    base.update(kwargs)
    return Matches(**base)


def test_matches_basic():
    m = make_matches()
    assert len(m) == 4
    assert m.num_inliers == 3
    assert make_matches(inliers=None).num_inliers == 0
    assert make_matches(inliers=torch.zeros(4, dtype=torch.bool)).num_inliers == 0
    assert len(Matches(torch.zeros(0, 2, dtype=torch.int64), torch.zeros(0))) == 0
    for kind in GEOMETRY_KINDS:
        assert make_matches(kind=kind).kind == kind


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(indices=torch.zeros(4, 3, dtype=torch.int64)), "indices"),
        (dict(indices=torch.zeros(8, dtype=torch.int64)), "indices"),
        (dict(scores=torch.zeros(3)), "scores"),
        (dict(inliers=torch.ones(5, dtype=torch.bool)), "inliers"),
        (dict(model=torch.eye(2)), "model"),
        (dict(kind="projective"), "kind"),
        (dict(kind="Homography"), "kind"),
    ],
)
def test_matches_validation_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_matches(**kwargs)


def test_matches_select():
    m = make_matches()
    for index in (torch.tensor([True, False, False, True]), np.array([True, False, False, True]), torch.tensor([0, 3])):
        sub = m.select(index)
        assert len(sub) == 2
        assert sub.indices.tolist() == [[0, 3], [4, 2]]
        torch.testing.assert_close(sub.scores, torch.tensor([0.9, 0.6]))
        assert sub.inliers.tolist() == [True, True]
        assert sub.num_inliers == 2
        assert sub.kind == "homography"
        torch.testing.assert_close(sub.model, m.model)
    assert make_matches(inliers=None).select(np.array([2])).inliers is None


def test_matches_numpy_and_to():
    m = make_matches()
    arrays = m.numpy()
    assert arrays["kind"] == "homography"
    np.testing.assert_array_equal(arrays["indices"], m.indices.numpy())
    assert arrays["inliers"].dtype == np.bool_
    plain = make_matches(inliers=None, model=None, kind=None).numpy()
    assert set(plain) == {"indices", "scores"}
    moved = m.to("meta")
    assert moved.indices.device.type == "meta" and moved.model.device.type == "meta"
    assert moved.kind == "homography"
    assert m.to("cpu").indices.tolist() == m.indices.tolist()


def test_ranking_with_mismatched_shapes_names_the_array():
    import numpy as np
    import pytest

    from delfi.types import Ranking

    with pytest.raises(ValueError, match=r"indices must be \(queries, K\) = \(2, K\)"):
        Ranking(queries=["a", "b"], database=["x", "y", "z"], indices=np.zeros((3, 2)), scores=np.zeros((3, 2)))
    with pytest.raises(ValueError, match="scores must have the shape of the indices"):
        Ranking(queries=["a", "b"], database=["x", "y", "z"], indices=[[0, 1], [1, 2]], scores=np.zeros(3))
    ranking = Ranking(queries=["a"], database=["x", "y"], indices=[1, 0], scores=[0.9, 0.1])
    assert ranking.indices.shape == (1, 2)
