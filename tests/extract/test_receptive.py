"""Receptive fields: composition rule, published ResNet values, tracing, and an empirical check."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from delfi.extract.receptive import (
    IDENTITY,
    TF_SUBSAMPLE_POOL,
    LayerGeometry,
    ReceptiveField,
    compose,
    layer_geometry,
    receptive_field,
    rf_boxes,
    rf_centres,
    trace_layers,
    with_extra_pool,
)
from delfi.models.resnet import STAGES, ResNet


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def nets() -> dict[str, ResNet]:
    return {s: ResNet(50, s, num_classes=None) for s in ("3x3", "1x1")}


# --------------------------------------------------------------------------------------------------
# Composition rule
# --------------------------------------------------------------------------------------------------


def test_composition_rule_by_hand() -> None:
    assert compose([]) == IDENTITY
    assert compose([LayerGeometry(3, 1, 1), LayerGeometry(3, 1, 1)]) == ReceptiveField(5, 1, 2)
    # k 3 s 2 p 1 then k 3 s 1 p 1: r = 3 + 2 * 2, s = 2, p = 1 + 1 * 2
    assert compose([LayerGeometry(3, 2, 1), LayerGeometry(3, 1, 1)]) == ReceptiveField(7, 2, 3)
    # dilation 2: effective kernel 5
    assert IDENTITY.then(LayerGeometry(3, 1, 2, dilation=2)) == ReceptiveField(5, 1, 2)
    # a 1x1 stride-2 layer only subsamples
    assert ReceptiveField(11, 4, 5).then(LayerGeometry(1, 2)) == ReceptiveField(11, 8, 5)


def test_layer_geometry_of_modules() -> None:
    assert layer_geometry(nn.Conv2d(3, 4, 7, stride=2, padding=3)) == LayerGeometry(7, 2, 3)
    assert layer_geometry(nn.Conv2d(3, 4, 3, padding="same", dilation=4)) == LayerGeometry(3, 1, 4, 4)
    assert layer_geometry(nn.Conv2d(3, 4, 3, padding="valid")) == LayerGeometry(3, 1, 0)
    assert layer_geometry(nn.MaxPool2d(2)) == LayerGeometry(2, 2, 0)
    assert layer_geometry(nn.AvgPool2d(3, 1, 1)) == LayerGeometry(3, 1, 1)
    with pytest.raises(ValueError, match="square"):
        layer_geometry(nn.Conv2d(3, 4, (1, 3)))
    with pytest.raises(TypeError, match="Upsample"):
        layer_geometry(nn.Upsample(scale_factor=2))


# --------------------------------------------------------------------------------------------------
# Published ResNet values
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stride_in", "layer", "expected"),
    [
        ("3x3", "conv1", (7, 2, 3)),
        ("3x3", "layer1", (35, 4, 17)),
        ("3x3", "layer2", (91, 8, 45)),
        ("3x3", "layer3", (267, 16, 133)),
        ("3x3", "layer4", (427, 32, 213)),
        ("1x1", "layer2", (99, 8, 49)),
        ("1x1", "layer3", (291, 16, 145)),
        ("1x1", "layer4", (483, 32, 241)),
    ],
)
def test_resnet50_receptive_fields(nets, stride_in: str, layer: str, expected: tuple) -> None:
    assert receptive_field(nets[stride_in], layer) == ReceptiveField(*expected)


def test_tf_block3_needs_the_extra_subsampling_pool(nets) -> None:
    layer3 = receptive_field(nets["1x1"], "layer3")
    assert with_extra_pool(layer3) == ReceptiveField(291, 32, 145)  # TF DELF's published block3
    tf_block3 = receptive_field(nets["1x1"], "layer3", extra_pool=TF_SUBSAMPLE_POOL)
    assert tf_block3 == ReceptiveField(291, 32, 145)
    # a real 2x2 / 3x3 pool would widen the field: only a 1x1 (subsampling) pool gives 291
    assert with_extra_pool(layer3, kernel=2) == ReceptiveField(307, 32, 145)
    assert with_extra_pool(layer3, kernel=3, padding=1) == ReceptiveField(323, 32, 161)
    # the wrong value both PyTorch ports use on a torchvision layer3 is not what the network has
    assert receptive_field(nets["3x3"], "layer3") != ReceptiveField(291, 16, 145)


def test_slim_layout_gives_the_same_block3_triple() -> None:
    """slim's resnet_v1 strides the 3x3 conv of a stage's LAST unit (block1..block3), none in block4."""
    layers = [LayerGeometry(7, 2, 3), LayerGeometry(3, 2, 1)]
    for units in (3, 4, 6):
        for u in range(units):
            stride = 2 if u == units - 1 else 1
            layers += [LayerGeometry(1), LayerGeometry(3, stride, 1), LayerGeometry(1)]
    assert receptive_field(layers) == ReceptiveField(291, 32, 145)


def test_resnet101_layer3() -> None:
    net = ResNet(101, num_classes=None)
    # 17 more 3x3 blocks at stride 16 than ResNet-50: +17 * 32 to the size, +17 * 16 to the padding
    assert receptive_field(net, "layer3") == ReceptiveField(267 + 17 * 32, 16, 133 + 17 * 16)
    assert receptive_field(net, "layer3") == compose(g for _, g in trace_layers(net, "layer3"))


# --------------------------------------------------------------------------------------------------
# Tracing (any module) agrees with the explicit walk
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stride_in", ["3x3", "1x1"])
def test_trace_matches_explicit_walk(nets, stride_in: str) -> None:
    net = nets[stride_in].train()
    for stage in STAGES:
        traced = trace_layers(net, stage)
        assert all("downsample" not in name for name, _ in traced)
        assert compose(g for _, g in traced) == receptive_field(net, stage)
        assert compose(traced_geom for _, traced_geom in traced) == compose(net.receptive_layers(stage))
    assert net.training  # mode restored
    assert not any(m._forward_hooks for m in net.modules())  # hooks removed
    names = [name for name, _ in trace_layers(net, "layer1")]
    assert names[:2] == ["conv1", "maxpool"] and names[-1] == "layer1.2.conv3" and len(names) == 11


def test_trace_of_a_generic_module() -> None:
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=2, dilation=2), nn.BatchNorm2d(8),
        nn.AvgPool2d(3, stride=2, padding=1),
        nn.Conv2d(8, 8, 1),
    )
    # conv 3: 3/1/1; pool 2/2: 4/2/1; conv d2: 4 + 4*2 = 12, p 1 + 2*2 = 5; avg 3/2/1: 16/4/7
    assert receptive_field(net, "5") == ReceptiveField(16, 4, 7)
    assert receptive_field(net, "6") == ReceptiveField(16, 4, 7)
    assert receptive_field(list(net)[:1]) == ReceptiveField(3, 1, 1)
    with pytest.raises(ValueError, match="no submodule"):
        receptive_field(net, "layer9")
    with pytest.raises(ValueError, match="upto"):
        receptive_field(net)


def test_r2d2_network_matches_its_receptive_radius() -> None:
    from delfi.models.l2net import R2D2Net, receptive_radius

    net = R2D2Net()
    last = max(i for i, op in enumerate(net.ops) if isinstance(op, nn.Conv2d))
    rf = receptive_field(net, f"ops.{last}")
    radius = receptive_radius(net.specs)
    assert rf == ReceptiveField(2 * radius + 1, 1, radius)


# --------------------------------------------------------------------------------------------------
# Boxes and centres
# --------------------------------------------------------------------------------------------------


def test_rf_boxes_and_centres_by_hand() -> None:
    rf = ReceptiveField(size=5, stride=2, padding=1)
    boxes = rf_boxes(rf, 2, 3)
    expected = torch.tensor(
        [
            [-1, -1, 3, 3], [1, -1, 5, 3], [3, -1, 7, 3],  # row i = 0, columns j = 0, 1, 2
            [-1, 1, 3, 5], [1, 1, 5, 5], [3, 1, 7, 5],
        ],
        dtype=torch.float32,
    )
    assert torch.equal(boxes, expected)
    centres = rf_centres(rf, 2, 3)
    assert torch.equal(centres, (boxes[:, :2] + boxes[:, 2:]) / 2)
    assert centres[4].tolist() == [3.0, 3.0] and rf.centre(1, 1) == (3.0, 3.0)
    assert rf.box(1, 2) == (3, 1, 7, 5)
    assert rf_boxes(rf, 0, 4).shape == (0, 4)


def test_centres_of_even_sizes_and_resnet_layer3() -> None:
    assert rf_centres(ReceptiveField(4, 2, 0), 1, 2).tolist() == [[1.5, 1.5], [3.5, 1.5]]
    rf = ReceptiveField(267, 16, 133)
    centres = rf_centres(rf, 14, 14, dtype=torch.float64)
    # s * j - p + (r - 1) / 2 = 16 * j: a torchvision layer3 cell (i, j) is centred on pixel (16 j, 16 i)
    assert torch.equal(centres[15], torch.tensor([16.0, 16.0], dtype=torch.float64))
    assert torch.equal(centres[14 * 3 + 5], torch.tensor([80.0, 48.0], dtype=torch.float64))
    assert rf_boxes(rf, 14, 14)[0].tolist() == [-133, -133, 133, 133]


# --------------------------------------------------------------------------------------------------
# Empirical check: the gradient support of one output cell
# --------------------------------------------------------------------------------------------------


def _measurable(stride_in: str) -> ResNet:
    """A float64 ResNet-50 whose gradients reach every input pixel of the receptive field.

    All conv weights positive and no ReLU, so no path cancels or dies; the max-pool becomes an
    average pool of the same geometry (a max-pool routes the gradient to one pixel per window).
    """
    torch.manual_seed(0)
    net = ResNet(50, stride_in, num_classes=None).double().eval()
    net.maxpool = nn.AvgPool2d(3, stride=2, padding=1)
    for module in net.modules():
        if hasattr(module, "relu"):
            module.relu = nn.Identity()
        if isinstance(module, nn.Conv2d):
            with torch.no_grad():
                module.weight.uniform_(0.5, 1.5).div_(module.weight[0].numel())
    return net.requires_grad_(False)


def _support(net: ResNet, layer: str, height: int, width: int, cells: list[tuple[int, int]]):
    """Bounding box (x0, y0, x1, y1) of the input pixels each cell's gradient reaches, and the grid."""
    x = torch.ones(1, 3, height, width, dtype=torch.float64, requires_grad=True)
    features = net.forward_features(x, layer)[layer]
    boxes = []
    for i, j in cells:
        (grad,) = torch.autograd.grad(features[0, :, i, j].sum(), x, retain_graph=True)
        ys, xs = torch.nonzero(grad[0].abs().sum(0) > 0, as_tuple=True)
        support = torch.zeros(height, width, dtype=torch.bool)
        support[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1] = True
        assert (grad[0].abs().sum(0) > 0).equal(support)  # a full rectangle, no holes
        boxes.append((xs.min().item(), ys.min().item(), xs.max().item(), ys.max().item()))
    return boxes, features.shape[-2:]


def _clipped(box: tuple[int, int, int, int], height: int, width: int) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = box
    return max(x0, 0), max(y0, 0), min(x1, width - 1), min(y1, height - 1)


@pytest.mark.parametrize("stride_in", ["3x3", "1x1"])
def test_layer3_receptive_field_matches_gradient_support(stride_in: str) -> None:
    net = _measurable(stride_in)
    rf = receptive_field(net, "layer3")
    height = width = 320
    cells = [(10, 10), (0, 0)]  # one well inside the image, one clipped by the top-left corner
    measured, grid = _support(net, "layer3", height, width, cells)
    centres = rf_centres(rf, *grid, dtype=torch.float64)
    boxes = rf_boxes(rf, *grid, dtype=torch.float64)
    for (i, j), box in zip(cells, measured):
        assert box == _clipped(rf.box(i, j), height, width)
        assert tuple(boxes[i * grid[1] + j].tolist()) == rf.box(i, j)
    (x0, y0, x1, y1) = measured[0]
    assert x1 - x0 + 1 == y1 - y0 + 1 == rf.size
    assert ((x0 + x1) / 2, (y0 + y1) / 2) == tuple(centres[10 * grid[1] + 10].tolist())


def test_layer4_receptive_field_matches_gradient_support() -> None:
    net = _measurable("3x3")
    rf = receptive_field(net, "layer4")
    height, width = 96, 448  # wide enough for a whole 427-pixel field in x; y is clipped both ways
    measured, grid = _support(net, "layer4", height, width, [(1, 7)])
    assert measured[0] == _clipped(rf.box(1, 7), height, width)
    x0, _, x1, _ = measured[0]
    assert x1 - x0 + 1 == rf.size and (x0 + x1) / 2 == rf_centres(rf, *grid)[grid[1] + 7, 0].item()
