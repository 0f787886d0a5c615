"""The R2D2 networks (official layer layout) and their fast inference runner, with random weights."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from delfi.extract.detect import r2d2_keypoint_mask
from delfi.models.l2net import (
    R2D2Net,
    layer_specs,
    receptive_radius,
    reliability_activation,
    repeatability_activation,
)
from delfi.models.l2net_inference import L2NetInference


def random_net(arch: str = "quad_l2net", mchan: int = 4, dim: int = 128, seed: int = 0) -> R2D2Net:
    """A network with random weights AND random batch-norm running statistics, in eval mode."""
    torch.manual_seed(seed)
    net = R2D2Net(arch, mchan, dim)
    g = torch.Generator().manual_seed(seed + 1)
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=g) * 0.3)
            module.running_var.copy_(torch.rand(module.num_features, generator=g) * 1.5 + 0.5)
    with torch.no_grad():  # sharper heads: confidences spread over (0, 1) so thresholds matter
        net.clf.weight.mul_(100)
        net.sal.weight.mul_(100)
    return net.eval()


def random_image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------------------------------
# layer specs
# --------------------------------------------------------------------------------------------------

QUAD_TABLE = [(3, 1, 1), (3, 1, 1), (3, 1, 1), (3, 2, 2), (3, 2, 2), (3, 4, 4), (2, 4, 2), (2, 8, 4), (2, 16, 8)]
FAST_TABLE = [(3, 1, 1), (3, 1, 1), (3, 1, 1), (3, 1, 1), (3, 1, 1), (3, 2, 2), (2, 2, 1), (2, 4, 2), (2, 8, 4)]


def test_quad_l2net_specs_match_the_official_table():
    specs = layer_specs("quad_l2net", mchan=4, dim=128)
    assert [(s.kernel, s.dilation, s.padding) for s in specs] == QUAD_TABLE
    assert [s.out_channels for s in specs] == [32, 32, 64, 64, 128, 128, 128, 128, 128]
    assert [s.in_channels for s in specs] == [3, 32, 32, 64, 64, 128, 128, 128, 128]
    assert [s.batch_norm for s in specs] == [True] * 8 + [False]
    assert [s.relu for s in specs] == [True] * 6 + [False] * 3
    assert all(s.pool_after == 1 for s in specs)


def test_quad_l2net_mchan6_channels():
    specs = layer_specs("quad_l2net", mchan=6, dim=128)
    assert [s.out_channels for s in specs] == [48, 48, 96, 96, 192, 192, 192, 192, 128]
    assert [(s.kernel, s.dilation, s.padding) for s in specs] == QUAD_TABLE


def test_fast_quad_l2net_specs_match_the_official_table():
    specs = layer_specs("fast_quad_l2net", mchan=4, dim=128)
    assert [(s.kernel, s.dilation, s.padding) for s in specs] == FAST_TABLE
    assert [s.pool_after for s in specs] == [1, 1, 2, 1, 1, 1, 1, 1, 1]  # pool after the 3rd conv
    assert [s.out_channels for s in specs] == [32, 32, 64, 64, 128, 128, 128, 128, 128]


def test_layer_specs_custom_dim_and_unknown_arch():
    assert layer_specs("quad_l2net", dim=64)[-1].out_channels == 64
    with pytest.raises(ValueError, match="quad_l2net"):
        layer_specs("l2net")


def test_receptive_radius():
    assert receptive_radius(layer_specs("quad_l2net")) == 25
    assert receptive_radius(layer_specs("quad_l2net", mchan=6)) == 25
    with pytest.raises(ValueError):
        receptive_radius(layer_specs("fast_quad_l2net"))


# --------------------------------------------------------------------------------------------------
# state dict layout (official checkpoint key names)
# --------------------------------------------------------------------------------------------------


def expected_keys(conv_indices, bn_indices):
    keys = {"clf.weight", "clf.bias", "sal.weight", "sal.bias"}
    for i in conv_indices:
        keys |= {f"ops.{i}.weight", f"ops.{i}.bias"}
    for i in bn_indices:  # affine=False: running statistics only
        keys |= {f"ops.{i}.running_mean", f"ops.{i}.running_var", f"ops.{i}.num_batches_tracked"}
    return keys


def test_quad_state_dict_keys_are_official():
    state = R2D2Net("quad_l2net").state_dict()
    assert set(state) == expected_keys([0, 3, 6, 9, 12, 15, 18, 20, 22], [1, 4, 7, 10, 13, 16, 19, 21])
    assert state["ops.0.weight"].shape == (32, 3, 3, 3)
    assert state["ops.3.weight"].shape == (32, 32, 3, 3)
    assert state["ops.1.running_mean"].shape == (32,)
    assert state["ops.18.weight"].shape == (128, 128, 2, 2)
    assert state["ops.22.weight"].shape == (128, 128, 2, 2)
    assert state["clf.weight"].shape == (2, 128, 1, 1)
    assert state["sal.weight"].shape == (1, 128, 1, 1)


def test_fast_state_dict_keys_are_official():
    net = R2D2Net("fast_quad_l2net")
    state = net.state_dict()
    assert set(state) == expected_keys([0, 3, 6, 10, 13, 16, 19, 21, 23], [1, 4, 7, 11, 14, 17, 20, 22])
    assert isinstance(net.ops[9], torch.nn.MaxPool2d)
    assert state["ops.10.weight"].shape == (64, 64, 3, 3)  # 4th conv, after the pool at index 9
    assert state["ops.23.weight"].shape == (128, 128, 2, 2)
    assert isinstance(net.ops[24], torch.nn.Upsample)
    assert len(net.ops) == 25


def test_mchan6_state_dict_shapes():
    state = R2D2Net("quad_l2net", mchan=6).state_dict()
    assert state["ops.0.weight"].shape == (48, 3, 3, 3)
    assert state["ops.12.weight"].shape == (192, 96, 3, 3)
    assert state["ops.22.weight"].shape == (128, 192, 2, 2)


def test_batch_norm_is_not_affine():
    net = R2D2Net("quad_l2net")
    norms = [m for m in net.ops if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(norms) == 8 and not any(m.affine for m in norms)


# --------------------------------------------------------------------------------------------------
# forward
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch, size", [("quad_l2net", (2, 37, 29)), ("fast_quad_l2net", (1, 40, 52))])
def test_output_shapes_and_ranges(arch, size):
    batch, height, width = size
    net = random_net(arch)
    with torch.no_grad():
        out = net(torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(2)))
    assert set(out) == {"descriptors", "reliability", "repeatability"}
    assert out["descriptors"].shape == (batch, 128, height, width)
    assert out["reliability"].shape == (batch, 1, height, width)
    assert out["repeatability"].shape == (batch, 1, height, width)
    torch.testing.assert_close(out["descriptors"].norm(dim=1), torch.ones(batch, height, width))
    for name in ("reliability", "repeatability"):
        assert (out[name] > 0).all() and (out[name] < 1).all()
        assert out[name].std() > 0


def test_activations():
    x = torch.tensor([-2.0, 0.0, 3.0])
    sp = F.softplus(x)
    torch.testing.assert_close(repeatability_activation(x), sp / (1 + sp))
    assert repeatability_activation(torch.tensor(0.0)).item() == pytest.approx(0.4093, abs=1e-4)  # ln2/(1+ln2)
    two = torch.tensor([[[[0.0]], [[0.0]]], [[[1.0]], [[3.0]]]])  # (2, 2, 1, 1)
    rel = reliability_activation(two)
    assert rel.shape == (2, 1, 1, 1)
    torch.testing.assert_close(rel.flatten(), torch.tensor([0.5, torch.sigmoid(torch.tensor(2.0)).item()]))


def test_heads_use_squared_features():
    net = random_net()
    raw = torch.randn(1, 128, 5, 6, generator=torch.Generator().manual_seed(4))
    reliability, repeatability = net.confidences(raw)
    torch.testing.assert_close(reliability, F.softmax(net.clf(raw**2), dim=1)[:, 1:2])
    torch.testing.assert_close(repeatability, repeatability_activation(net.sal(raw**2)))
    # the sign of the raw map does not change the confidences
    torch.testing.assert_close(net.confidences(-raw)[0], reliability)


def test_receptive_radius_truly_bounds_the_receptive_field():
    net = random_net("quad_l2net", seed=5).double()
    size, centre = 71, 35
    image = random_image(size, size, seed=6).double()
    perturbed = image.clone()
    perturbed[0, :, centre, centre] += 1.0
    with torch.no_grad():
        diff = (net.features(image) - net.features(perturbed)).abs().amax(dim=1)[0]
    changed = diff > 1e-9
    ys, xs = changed.nonzero(as_tuple=True)
    radius = receptive_radius(net.specs)
    assert radius == 25
    assert (ys - centre).abs().max() <= radius and (xs - centre).abs().max() <= radius
    # and the bound is tight: the change reaches exactly 25 pixels in both directions
    assert (ys - centre).abs().max() == radius and (xs - centre).abs().max() == radius


# --------------------------------------------------------------------------------------------------
# L2NetInference: fused / channels-last / tiled paths equal the plain one
# --------------------------------------------------------------------------------------------------

REL_THR, REP_THR = 0.3, 0.1  # low: many detections (both thresholds still filter some)


def reference_detections(net, image, rel_thr=REL_THR, rep_thr=REP_THR):
    """Straight from the module: forward, mask, gather (row-major)."""
    with torch.no_grad():
        out = net(image)
    mask = r2d2_keypoint_mask(out["reliability"], out["repeatability"], rel_thr, rep_thr)[0, 0]
    y, x = mask.nonzero(as_tuple=True)
    return x, y, out["reliability"][0, 0, y, x], out["repeatability"][0, 0, y, x], out["descriptors"][0, :, y, x].t()


def assert_same_detections(found, expected):
    x, y, rel, rep, desc = expected
    assert torch.equal(found.x, x) and torch.equal(found.y, y)
    assert found.x.dtype == torch.int64 and found.y.dtype == torch.int64
    torch.testing.assert_close(found.reliability, rel, rtol=0, atol=1e-5)
    torch.testing.assert_close(found.repeatability, rep, rtol=0, atol=1e-5)
    torch.testing.assert_close(found.descriptors, desc, rtol=0, atol=1e-5)
    assert found.descriptors.dtype == torch.float32


CASES = {
    # arch, (height, width), tile_pixels values giving several strips (rows = max(8, tile // width))
    "quad": ("quad_l2net", (67, 24), [1, 16 * 24, 24 * 24 - 1]),  # 9, 5 and 3 strips, odd height
    "fast": ("fast_quad_l2net", (160, 24), [40 * 24, 56 * 24 + 5, 1]),  # 4, 3 and 20 strips
}


@pytest.fixture(scope="module", params=list(CASES))
def case(request):
    arch, (height, width), tiles = CASES[request.param]
    net = random_net(arch, seed=11)
    image = random_image(height, width, seed=12)
    expected = reference_detections(net, image)
    assert len(expected[0]) >= 20  # low thresholds: many detections
    return net, image, tiles, expected


def test_strip_counts_are_as_intended():
    # guards the CASES: the tile budgets really split the images into several strips
    def strips(height, width, tile_pixels):
        rows = max(8, tile_pixels // width)
        return len(range(0, height, rows))

    assert [strips(67, 24, t) for t in CASES["quad"][2]] == [9, 5, 3]
    assert [strips(160, 24, t) for t in CASES["fast"][2]] == [4, 3, 20]


def test_plain_path_equals_the_module(case):
    net, image, _, expected = case
    runner = L2NetInference(net, fuse_batchnorm=False, channels_last=False, tile_pixels=0)
    assert_same_detections(runner.detect(image, REL_THR, REP_THR), expected)


@pytest.mark.parametrize("fuse", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
def test_fused_and_channels_last_paths_equal_plain(case, fuse, channels_last):
    net, image, tiles, expected = case
    for tile_pixels in (0, tiles[1]):  # whole image and one tiling, for every combination
        runner = L2NetInference(net, fuse_batchnorm=fuse, channels_last=channels_last, tile_pixels=tile_pixels)
        assert_same_detections(runner.detect(image, REL_THR, REP_THR), expected)


def test_all_tilings_equal_plain(case):
    net, image, tiles, expected = case
    for tile_pixels in tiles:  # the default fast path (fused, channels-last) with every tiling
        runner = L2NetInference(net, fuse_batchnorm=True, channels_last=True, tile_pixels=tile_pixels)
        assert_same_detections(runner.detect(image, REL_THR, REP_THR), expected)
    # and the unfused, contiguous body strip by strip
    runner = L2NetInference(net, fuse_batchnorm=False, channels_last=False, tile_pixels=tiles[0])
    assert_same_detections(runner.detect(image, REL_THR, REP_THR), expected)


def test_fused_body_equals_module_features(case):
    net, image, _, _ = case
    runner = L2NetInference(net, fuse_batchnorm=True, channels_last=True)
    with torch.no_grad():
        torch.testing.assert_close(runner.body(image), net.features(image), rtol=1e-4, atol=1e-4)


def test_fusing_leaves_the_network_untouched():
    net = random_net(seed=21)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    L2NetInference(net, fuse_batchnorm=True, channels_last=True, precision="bfloat16")
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_thresholds_are_applied():
    net = random_net(seed=31)
    image = random_image(40, 48, seed=32)
    runner = L2NetInference(net, tile_pixels=16 * 48)
    loose = runner.detect(image, 0.0, 0.0)
    strict = runner.detect(image, 0.5, 0.35)
    assert len(strict.x) < len(loose.x)
    assert (strict.reliability >= 0.5).all() and (strict.repeatability >= 0.35).all()
    assert_same_detections(strict, reference_detections(net, image, 0.5, 0.35))
    nothing = runner.detect(image, 1.0, 1.0)
    assert len(nothing.x) == 0 and nothing.descriptors.shape == (0, 128)


@pytest.mark.parametrize("arch", ["quad_l2net", "fast_quad_l2net"])
def test_bfloat16_close_to_float32(arch):
    net = random_net(arch, seed=41)
    image = random_image(48, 64, seed=42)
    full = L2NetInference(net, precision="float32")
    half = L2NetInference(net, precision="bfloat16", tile_pixels=16 * 64)
    with torch.no_grad():
        raw32, raw16 = full.body(image), half.body(image)
    assert raw16.dtype == torch.float32 and raw16.shape == raw32.shape
    assert not torch.equal(raw16, raw32)  # really ran in lower precision
    cosine = F.cosine_similarity(raw16, raw32, dim=1)
    assert cosine.mean() > 0.99
    found = half.detect(image, REL_THR, REP_THR)
    assert len(found.x) > 0
    torch.testing.assert_close(found.descriptors.norm(dim=1), torch.ones(len(found.x)))
    # descriptors at the keypoints both precisions find agree
    ref = full.detect(image, REL_THR, REP_THR)
    ref_index = {(int(x), int(y)): i for i, (x, y) in enumerate(zip(ref.x, ref.y))}
    common = [(i, ref_index[(int(x), int(y))]) for i, (x, y) in enumerate(zip(found.x, found.y)) if (int(x), int(y)) in ref_index]
    assert len(common) >= 5  # (maxima of nearly flat regions move with bfloat16 rounding)
    a = found.descriptors[[i for i, _ in common]]
    b = ref.descriptors[[j for _, j in common]]
    assert (a * b).sum(dim=1).mean() > 0.99


def test_invalid_precision():
    with pytest.raises(ValueError, match="precision"):
        L2NetInference(random_net(), precision="float16")
