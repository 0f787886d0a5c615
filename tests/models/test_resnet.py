"""delfi's ResNet: torchvision parameter names, loading, feature shapes, early stop, frozen BN."""

from __future__ import annotations

import io
import math
import re

import pytest
import torch
from torch import nn

from delfi.models.resnet import (
    BLOCKS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    IMAGENET_WEIGHTS,
    NORMALISATION,
    STAGE_CHANNELS,
    STAGE_STRIDES,
    STAGES,
    ResNet,
    freeze_batchnorm,
    load_imagenet_state_dict,
)

BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def torchvision_keys(depth: int, with_fc: bool = True) -> list[str]:
    """torchvision's resnet{depth}().state_dict() keys, in order, from the architecture's rules."""
    keys = ["conv1.weight"] + [f"bn1.{k}" for k in BN_KEYS]
    for stage, blocks in enumerate(BLOCKS[depth], start=1):
        for b in range(blocks):
            prefix = f"layer{stage}.{b}."
            for i in (1, 2, 3):
                keys.append(f"{prefix}conv{i}.weight")
                keys += [f"{prefix}bn{i}.{k}" for k in BN_KEYS]
            if b == 0:  # every stage's first block changes channels (and stride): a projection shortcut
                keys.append(f"{prefix}downsample.0.weight")
                keys += [f"{prefix}downsample.1.{k}" for k in BN_KEYS]
    if with_fc:
        keys += ["fc.weight", "fc.bias"]
    return keys


@pytest.fixture(scope="module")
def resnet50() -> ResNet:
    torch.manual_seed(0)
    return ResNet(50).eval()


@pytest.fixture(scope="module")
def resnet101() -> ResNet:
    return ResNet(101).eval()


# --------------------------------------------------------------------------------------------------
# Parameter names
# --------------------------------------------------------------------------------------------------


def test_resnet50_state_dict_keys_match_torchvision(resnet50: ResNet) -> None:
    keys = list(resnet50.state_dict())
    assert keys == torchvision_keys(50)
    assert len(keys) == 320
    assert len(list(resnet50.parameters())) == 161
    # torchvision's published parameter count of resnet50
    assert sum(p.numel() for p in resnet50.parameters()) == 25_557_032


def test_resnet101_state_dict_keys_match_torchvision(resnet101: ResNet) -> None:
    keys = list(resnet101.state_dict())
    assert keys == torchvision_keys(101)
    assert len(keys) == 626
    assert sum(p.numel() for p in resnet101.parameters()) == 44_549_160


def test_shapes_of_key_tensors(resnet50: ResNet) -> None:
    sd = resnet50.state_dict()
    assert sd["conv1.weight"].shape == (64, 3, 7, 7)
    assert sd["layer1.0.conv1.weight"].shape == (64, 64, 1, 1)
    assert sd["layer1.0.downsample.0.weight"].shape == (256, 64, 1, 1)
    assert sd["layer3.5.conv2.weight"].shape == (256, 256, 3, 3)
    assert sd["layer4.0.downsample.0.weight"].shape == (2048, 1024, 1, 1)
    assert sd["fc.weight"].shape == (1000, 2048)


def test_backbone_without_fc() -> None:
    net = ResNet(50, num_classes=None).eval()
    assert net.fc is None
    assert list(net.state_dict()) == torchvision_keys(50, with_fc=False)
    with torch.no_grad():
        pooled = net(torch.rand(2, 3, 64, 64))
    assert pooled.shape == (2, 2048)


def test_stride_position() -> None:
    v15, v1 = ResNet(50, "3x3", num_classes=None), ResNet(50, "1x1", num_classes=None)
    for name in ("layer2", "layer3", "layer4"):
        first15, first1 = getattr(v15, name)[0], getattr(v1, name)[0]
        assert (first15.conv1.stride, first15.conv2.stride) == ((1, 1), (2, 2))
        assert (first1.conv1.stride, first1.conv2.stride) == ((2, 2), (1, 1))
        assert first15.downsample[0].stride == first1.downsample[0].stride == (2, 2)
    assert v1.layer1[0].conv1.stride == v1.layer1[0].conv2.stride == (1, 1)
    assert list(v15.state_dict()) == list(v1.state_dict())


@pytest.mark.parametrize("kwargs", [{"depth": 34}, {"stride_in": "2x2"}])
def test_invalid_arguments(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        ResNet(**kwargs)


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


def test_state_dict_round_trip(resnet50: ResNet) -> None:
    buffer = io.BytesIO()
    torch.save(resnet50.state_dict(), buffer)
    buffer.seek(0)
    other = ResNet(50).eval()
    other.load_state_dict(torch.load(buffer, weights_only=True), strict=True)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(other(x), resnet50(x), rtol=0, atol=0)


def test_load_imagenet_into_backbone_ignores_fc(resnet50: ResNet) -> None:
    backbone = ResNet(50, num_classes=None).eval()
    report = load_imagenet_state_dict(backbone, resnet50.state_dict())
    assert sorted(report.ignored) == ["fc.bias", "fc.weight"]
    assert len(report.loaded) == 318 and report.kept == []
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        expected = resnet50.forward_features(x, "layer4")["layer4"]
        torch.testing.assert_close(backbone.forward_features(x, "layer4")["layer4"], expected)


def test_load_imagenet_other_class_count_keeps_fresh_fc(resnet50: ResNet) -> None:
    net = ResNet(50, num_classes=10)
    fc_before = net.fc.weight.detach().clone()
    report = load_imagenet_state_dict(net, resnet50.state_dict())
    assert sorted(report.ignored) == ["fc.bias", "fc.weight"]
    assert sorted(report.kept) == ["fc.bias", "fc.weight"]
    assert torch.equal(net.fc.weight, fc_before)
    assert torch.equal(net.layer2[1].conv2.weight, resnet50.layer2[1].conv2.weight)


def test_load_imagenet_tolerates_wrappers_and_old_files(resnet50: ResNet) -> None:
    # DataParallel prefix, {"state_dict": ...} wrapper, no num_batches_tracked (old torchvision files)
    sd = {
        f"module.{k}": v for k, v in resnet50.state_dict().items() if not k.endswith("num_batches_tracked")
    }
    net = ResNet(50)
    report = load_imagenet_state_dict(net, {"state_dict": sd})
    assert len(report.kept) == 53  # one BN per conv: 1 + 16 * 3 + 4
    assert all(k.endswith("num_batches_tracked") for k in report.kept)
    assert torch.equal(net.fc.weight, resnet50.fc.weight)


def test_load_imagenet_wrong_depth_is_a_clear_error(resnet101: ResNet) -> None:
    with pytest.raises(KeyError, match=r"ResNet-50 .*depth.*Unexpected keys: layer3\.6\."):
        load_imagenet_state_dict(ResNet(50), resnet101.state_dict())
    small = {k: v for k, v in ResNet(50).state_dict().items() if not k.startswith("layer4.2.")}
    with pytest.raises(KeyError, match=r"Missing keys: layer4\.2\.conv1\.weight"):
        load_imagenet_state_dict(ResNet(50), small)


def test_load_imagenet_shape_mismatch_is_an_error(resnet50: ResNet) -> None:
    sd = dict(resnet50.state_dict())
    sd["layer1.0.conv1.weight"] = torch.zeros(32, 64, 1, 1)
    with pytest.raises(ValueError, match=r"layer1\.0\.conv1\.weight \(32, 64, 1, 1\)"):
        load_imagenet_state_dict(ResNet(50), sd)


# --------------------------------------------------------------------------------------------------
# forward_features
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stride_in", ["3x3", "1x1"])
def test_forward_features_shapes_224(stride_in: str) -> None:
    net = ResNet(50, stride_in, num_classes=None).eval()
    with torch.no_grad():
        out = net.forward_features(torch.rand(1, 3, 224, 224), STAGES)
    assert list(out) == list(STAGES)
    assert out["layer3"].shape == (1, 1024, 14, 14)
    for name, tensor in out.items():
        side = 224 // STAGE_STRIDES[name]
        assert tensor.shape == (1, STAGE_CHANNELS[name], side, side)


@pytest.mark.parametrize("stride_in", ["3x3", "1x1"])
@pytest.mark.parametrize("size", [(33, 47), (17, 80), (1, 1)])
def test_forward_features_odd_sizes(resnet50: ResNet, stride_in: str, size: tuple[int, int]) -> None:
    net = resnet50 if stride_in == "3x3" else ResNet(50, stride_in).eval()
    h, w = size
    with torch.no_grad():
        out = net.forward_features(torch.rand(2, 3, h, w), ("layer4", "conv1", "layer2"))
    assert list(out) == ["conv1", "layer2", "layer4"]  # execution order, whatever the request order
    for name, tensor in out.items():
        s = STAGE_STRIDES[name]
        assert tensor.shape == (2, STAGE_CHANNELS[name], math.ceil(h / s), math.ceil(w / s))


def test_forward_features_stops_after_last_requested_layer() -> None:
    net = ResNet(50, num_classes=None)
    calls: dict[str, int] = {}

    def counter(name: str):
        def hook(module, args, output) -> None:
            calls[name] = calls.get(name, 0) + 1
        return hook

    for name, module in net.named_modules():
        if isinstance(module, nn.Conv2d):
            module.register_forward_hook(counter(name))
    out = net.forward_features(torch.rand(1, 3, 64, 64), "layer3")
    assert list(out) == ["layer3"]
    assert not any(name.startswith("layer4") for name in calls)
    assert calls["layer3.5.conv3"] == 1
    out["layer3"].sum().backward()
    assert all(p.grad is None for p in net.layer4.parameters())
    assert net.layer3[0].conv1.weight.grad is not None

    calls.clear()
    net.forward_features(torch.rand(1, 3, 64, 64), ["conv1"])
    assert list(calls) == ["conv1"]


def test_forward_features_rejects_unknown_names(resnet50: ResNet) -> None:
    with pytest.raises(ValueError, match="layer5"):
        resnet50.forward_features(torch.rand(1, 3, 32, 32), ("layer3", "layer5"))
    with pytest.raises(ValueError):
        resnet50.forward_features(torch.rand(1, 3, 32, 32), ())


def test_forward_logits(resnet50: ResNet) -> None:
    with torch.no_grad():
        assert resnet50(torch.rand(2, 3, 64, 64)).shape == (2, 1000)


# --------------------------------------------------------------------------------------------------
# Frozen batch norm
# --------------------------------------------------------------------------------------------------


def _batchnorms(module: nn.Module) -> list[nn.BatchNorm2d]:
    return [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]


def test_freeze_bn_survives_train_and_keeps_statistics() -> None:
    net = ResNet(50, num_classes=None).freeze_bn()
    net.train()
    assert net.training and all(not bn.training for bn in _batchnorms(net))
    before = net.layer1[0].bn1.running_mean.clone()
    out = net.forward_features(torch.rand(2, 3, 64, 64) * 5, "layer1")["layer1"]
    assert torch.equal(net.layer1[0].bn1.running_mean, before)
    out.sum().backward()
    assert net.layer1[0].bn1.weight.grad is None and not net.bn1.weight.requires_grad
    assert net.conv1.weight.grad is not None  # gradients still flow through the frozen BNs

    net.freeze_bn(False)
    assert all(bn.training and bn.weight.requires_grad for bn in _batchnorms(net))


def test_freeze_batchnorm_on_any_module() -> None:
    block = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).train()
    freeze_batchnorm(block)
    assert not block[1].training and not block[1].weight.requires_grad and block[0].training
    freeze_batchnorm(block, frozen=False)
    assert block[1].weight.requires_grad


# --------------------------------------------------------------------------------------------------
# Metadata
# --------------------------------------------------------------------------------------------------


def test_imagenet_weights_metadata() -> None:
    assert set(IMAGENET_WEIGHTS) == {"resnet50-imagenet", "resnet101-imagenet"}
    for info in IMAGENET_WEIGHTS.values():
        assert info.url.startswith("https://download.pytorch.org/models/")
        assert re.fullmatch(r"resnet(50|101)-[0-9a-f]{8}\.pth", info.filename)
        assert info.filename == f"resnet{info.depth}-{info.sha256_prefix}.pth"  # torch hub's rule
        assert info.stride_in == "3x3" and info.normalisation in NORMALISATION
    assert IMAGENET_WEIGHTS["resnet50-imagenet"].filename == "resnet50-0676ba61.pth"
    assert IMAGENET_WEIGHTS["resnet101-imagenet"].filename == "resnet101-63fe2227.pth"


def test_normalisations() -> None:
    img = torch.tensor(IMAGENET_MEAN).view(3, 1, 1).expand(3, 2, 2)
    assert torch.allclose(NORMALISATION["imagenet"](img), torch.zeros(3, 2, 2))
    assert NORMALISATION["imagenet"].std == IMAGENET_STD
    uint8 = torch.tensor([0.0, 128.0, 255.0]).view(1, 3, 1, 1).expand(1, 3, 1, 3)
    tf = NORMALISATION["tf-delf"](uint8 / 255)
    torch.testing.assert_close(tf, (uint8 - 128) / 128)
    assert torch.equal(NORMALISATION["unit"](uint8 / 255), uint8 / 255)
