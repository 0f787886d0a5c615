"""The networks train (gradients through ``forward``), and extractors built on them follow their
weights and leave their mode alone; capabilities are declared."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import delfi
from delfi.models.capabilities import ATTENTION_MAPS, GLOBAL, LOCAL, QUERY_BOXES, SCALES, supports
from delfi.models.delf import DELF, DELFConfig
from delfi.models.delg import DELG, DELGConfig
from delfi.models.l2net import R2D2Net
from delfi.models.networks import DELFNet, DELGNet, build_network
from delfi.models.r2d2 import R2D2, R2D2Config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL_R2D2 = dict(mchan=1, min_size=24, max_size=64, reliability_threshold=0.0, repeatability_threshold=0.0, top_k=0)
OPEN_DELF = dict(score_threshold=0.0, max_image_size=0, scales=[1.0], top_k=0)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def image(width=64, height=48, seed=1):
    return torch.rand(3, height, width, generator=torch.Generator().manual_seed(seed))


def grads_of(module):
    return {name: p.grad for name, p in module.named_parameters()}


def assert_all_have_gradients(module, skip=()):
    missing = [n for n, g in grads_of(module).items() if (g is None or not bool(g.abs().sum() > 0)) and not n.startswith(skip)]
    assert not missing, missing


def optimiser_step(network, images, key):
    network.train()
    optimiser = torch.optim.SGD(network.parameters(), lr=0.5)
    optimiser.zero_grad()
    network(images)[key].square().mean().backward()
    optimiser.step()


# ------------------------------------------------------------------------------------- networks


def test_r2d2net_trains_through_forward():
    net = R2D2Net(mchan=1).train()
    out = net(torch.randn(2, 3, 32, 32))
    assert set(out) == set(R2D2Net.outputs)
    assert out["descriptors"].shape == (2, 128, 32, 32) and out["reliability"].shape == (2, 1, 32, 32)
    (out["descriptors"][:, :, 1:].mean() + out["reliability"].mean() + out["repeatability"].mean()).backward()
    assert_all_have_gradients(net)


def test_delfnet_outputs_and_gradients():
    net = DELFNet(50).train()
    out = net(torch.randn(2, 3, 64, 64))
    assert set(out) == set(DELFNet.outputs)
    assert out["features"].shape == (2, 1024, 4, 4)
    assert out["attention"].shape == out["attention_logits"].shape == (2, 1, 4, 4)
    assert out["attended"].shape == (2, 1024)
    assert torch.equal(out["attention"], F.softplus(out["attention_logits"]))
    expected = (F.normalize(out["features"], dim=1) * out["attention"]).mean(dim=(2, 3))
    torch.testing.assert_close(out["attended"], expected)
    classifier = torch.nn.Linear(1024, 5)
    F.cross_entropy(classifier(out["attended"]), torch.tensor([0, 3])).backward()
    assert_all_have_gradients(net.attention)
    assert net.backbone.conv1.weight.grad is not None  # the whole network trains (stage 1: finetune)
    assert "layer4" not in out  # a DELF network stops at layer3


def test_delgnet_outputs_and_the_stop_gradient_of_the_local_branch():
    net = DELGNet(50, global_dim=64).train()
    out = net(torch.randn(2, 3, 64, 64))
    assert set(out) == set(DELGNet.outputs)
    assert out["features"].shape == out["reconstruction"].shape == (2, 1024, 4, 4)
    assert out["local"].shape == (2, 128, 4, 4) and out["attended"].shape == (2, 1024)
    assert out["global"].shape == (2, 64)
    torch.testing.assert_close(out["global"].norm(dim=1), torch.ones(2))
    # local losses (attention CE + reconstruction MSE) train the local heads, never the backbone
    classifier = torch.nn.Linear(1024, 5)
    local = F.cross_entropy(classifier(out["attended"]), torch.tensor([1, 2]))
    local = local + 10 * F.mse_loss(out["reconstruction"], out["features"].detach())
    local.backward(retain_graph=True)
    assert all(p.grad is None for p in net.backbone.parameters())
    assert_all_have_gradients(net.autoencoder)
    assert_all_have_gradients(net.attention)
    # the global loss (ArcFace on "global") trains the backbone and the whitening
    from delfi.models.heads import ArcFaceHead

    ArcFaceHead(64, 7)(out["global"], torch.tensor([0, 6])).logsumexp(1).mean().backward()
    assert net.backbone.layer4[0].conv1.weight.grad is not None and net.whitening.fc.weight.grad is not None
    assert net.gem.p.grad is None  # fixed p by default: a buffer


def test_delgnet_without_autoencoder_attends_layer3():
    net = DELGNet(50, autoencoder=False, local_dim=32, global_dim=16, gem_learnable=True)
    out = net(torch.randn(1, 3, 64, 64))
    assert "reconstruction" not in out and out["local"].shape == (1, 32, 4, 4)
    out["global"].sum().backward()
    assert net.gem.p.grad is not None


def test_networks_declare_their_architecture():
    assert R2D2Net("fast_quad_l2net", 2, 64).architecture() == {"arch": "fast_quad_l2net", "mchan": 2, "dim": 64}
    delg = build_network("delg", {"depth": 50, "stride_in": "torchvision", "extra_pool": False, "attention_batch_norm": False,
                                  "autoencoder": False, "local_dim": 8, "global_dim": 16, "gem_learnable": True})  # fmt: skip
    assert delg.architecture() == {"depth": 50, "stride_in": "3x3", "extra_pool": False, "attention_batch_norm": False,
                                   "autoencoder": False, "local_dim": 8, "global_dim": 16, "gem_learnable": True}  # fmt: skip
    assert build_network("r2d2", R2D2Config(mchan=1)).mchan == 1


def test_network_construction_does_not_force_eval():
    assert R2D2Net().training and DELFNet().training


# ------------------------------------------------------------------------------------ extractors


def test_extractor_exposes_its_network_and_keeps_its_mode():
    net = R2D2Net(mchan=1).train()
    net.ops[1].eval()  # a frozen batch norm inside a training network stays frozen
    model = R2D2(R2D2Config(**SMALL_R2D2), network=net)
    assert model.network is net and model.net is net
    found = model.extract(image())
    assert len(found) > 0
    assert net.training and not net.ops[1].training and net.ops[4].training
    assert all(p.requires_grad for p in net.parameters())
    out = net(torch.randn(1, 3, 16, 16))  # still trains after extraction (not inference tensors)
    out["descriptors"].sum().backward()


def test_extractor_built_alone_is_for_inference_but_not_locked():
    model = R2D2(R2D2Config(**SMALL_R2D2))
    assert not model.network.training
    model.network.train()
    model.extract(image())
    assert model.network.training


@pytest.mark.parametrize("fuse", [True, False])
def test_r2d2_extractor_follows_optimiser_steps(fuse):
    config = R2D2Config(**SMALL_R2D2, fuse_batchnorm=fuse)
    net = R2D2Net(mchan=1)
    model = R2D2(config, network=net)
    before = model.extract(image())
    optimiser_step(net, torch.randn(2, 3, 24, 24), "descriptors")  # weights and BN statistics change
    after = model.extract(image())
    fresh = R2D2(config, network=copy.deepcopy(net)).extract(image())
    assert not torch.equal(before.descriptors[:10], after.descriptors[:10]) or len(before) != len(after)
    assert torch.equal(after.keypoints, fresh.keypoints) and torch.equal(after.descriptors, fresh.descriptors)
    assert torch.equal(after.scores, fresh.scores)


def test_r2d2_runner_is_reused_while_the_weights_do_not_change():
    model = R2D2(R2D2Config(**SMALL_R2D2))
    runner = model.runner()
    model.extract(image())
    assert model.runner() is runner
    with torch.no_grad():
        model.network.clf.bias.add_(0.1)
    assert model.runner() is not runner
    model.network.load_state_dict(R2D2Net(mchan=1).state_dict())
    assert model.runner() is not runner


def test_delf_extractor_follows_its_network_and_keeps_its_mode():
    net = DELFNet(50)
    model = DELF(DELFConfig(**OPEN_DELF), network=net)
    assert model.network is net and model.attention is net.attention
    before = model.extract(image())
    optimiser_step(net, torch.randn(2, 3, 64, 64), "attention")
    assert net.training
    after = model.extract(image())
    assert net.training  # extract ran it in eval mode and gave the mode back
    assert not torch.equal(before.scores, after.scores)
    reference = copy.deepcopy(net).eval()
    with torch.no_grad():
        level = delfi.models.resnet.NORMALISATION["imagenet"](image()[None]).contiguous(memory_format=torch.channels_last)
        expected = reference(level)["attention"][0, 0]
    maps = model.attention_maps(image())
    assert net.training
    torch.testing.assert_close(maps[0][1], expected, rtol=1e-5, atol=1e-5)


def test_channels_last_is_set_once_and_nothing_changes_between_calls():
    model = DELF(DELFConfig(**OPEN_DELF))
    conv = model.network.backbone.conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last)
    strides = {n: p.stride() for n, p in model.network.named_parameters()}
    model.extract(image())
    model.attention_maps(image())
    assert {n: p.stride() for n, p in model.network.named_parameters()} == strides
    plain = DELF(DELFConfig(**OPEN_DELF, channels_last=False))
    plain.extract(image())
    assert plain.network.backbone.conv1.weight.is_contiguous()
    assert torch.equal(plain.network.backbone.conv1.weight, plain.network.backbone.conv1.weight.contiguous())


def test_delg_extractor_global_descriptor_is_the_network_output():
    net = DELGNet(50, global_dim=32)
    model = DELG(DELGConfig(**OPEN_DELF, global_scales=[1.0], global_dim=32), network=net)
    found = model.extract(image())
    with torch.no_grad():
        level = delfi.models.resnet.NORMALISATION["imagenet"](image()[None]).contiguous(memory_format=torch.channels_last)
        out = net.eval()(level)
    torch.testing.assert_close(found.global_descriptor, F.normalize(out["global"][0], dim=0), rtol=1e-5, atol=1e-5)
    assert found.descriptors.shape[1] == 128


def test_an_extractor_refuses_a_network_of_another_architecture():
    with pytest.raises(ValueError, match="does not match"):
        R2D2(R2D2Config(mchan=4), network=R2D2Net(mchan=1))
    with pytest.raises(ValueError, match="does not match"):
        DELG(DELGConfig(global_dim=2048), network=DELGNet(global_dim=32))
    with pytest.raises(TypeError):
        DELF(DELFConfig(), network=R2D2Net())


# ---------------------------------------------------------------------------------- capabilities


def test_capabilities_are_declared():
    r2d2 = delfi.models.create("r2d2", load=False)
    delf = delfi.models.create("delf", load=False)
    delg = delfi.models.create("delg", load=False)
    assert r2d2.capabilities == {LOCAL, SCALES}
    assert supports(delf, ATTENTION_MAPS) and supports(delf, QUERY_BOXES) and not supports(delf, GLOBAL)
    assert supports(delg, GLOBAL) and supports(delg, LOCAL)
    assert not supports(r2d2, QUERY_BOXES) and not supports(r2d2, ATTENTION_MAPS)
    local_only = delfi.models.create("delg", load=False, extract_global=False)
    assert not supports(local_only, GLOBAL) and supports(DELG, GLOBAL)
    assert not supports(object(), LOCAL)
    with pytest.raises(ValueError, match="unknown capability"):
        supports(delf, "attention-maps")
