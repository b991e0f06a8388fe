import math

import pytest
import torch

from selfsup import config, methods, models
from selfsup.methods import REGISTRY


@pytest.mark.parametrize("stem, spatial", [("imagenet", 2), ("cifar_pool", 4), ("cifar", 8)])
def test_resnet_stems(stem, spatial):
    net, dim = models.resnet("resnet18", stem)
    assert dim == 512
    trunk = torch.nn.Sequential(*list(net.children())[:-2])  # up to layer4
    out = trunk(torch.zeros(2, 3, 64, 64))
    assert out.shape == (2, 512, spatial, spatial)  # layer4 resolution at 64x64 input
    assert net(torch.zeros(2, 3, 64, 64)).shape == (2, 512)


def test_flops_scale_with_stem_and_width():
    r18 = models.count_flops(models.resnet("resnet18", "imagenet")[0])
    r18_cifar = models.count_flops(models.resnet("resnet18", "cifar")[0])
    # Same network; the cifar stem keeps 4x the resolution, so ~16x the FLOPs after the stem.
    assert 12 < r18_cifar / r18 < 17
    assert r18 == pytest.approx(2 * 1.82e9 * (64 / 224) ** 2, rel=0.1)  # torchvision's 1.82 GMACs at 224
    small = models.count_flops(models.convnet(32)[0])
    assert models.count_flops(models.convnet(16)[0]) < small / 3
    assert models.convnet(8)[0](torch.zeros(1, 3, 64, 64)).shape == (1, 64)


def test_mlp_shapes_and_last_bn():
    head = models.mlp([16, 32, 32, 8], last_bn=True)
    out = head.train()(torch.randn(5, 16))
    assert out.shape == (5, 8)
    assert torch.allclose(out.mean(0), torch.zeros(8), atol=1e-5)


def tiny(method):
    return config.load(
        None, dict(method=method, backbone="convnet", width=4, proj_hidden=16, proj_dim=8, pred_hidden=16)
    )


@pytest.mark.parametrize("method", sorted(REGISTRY))
def test_methods_give_scalar_losses_and_encoder_gradients(method):
    torch.manual_seed(0)
    m = methods.build_method(tiny(method))
    v1, v2 = torch.randn(6, 3, 32, 32), torch.randn(6, 3, 32, 32)
    loss = m.loss(v1, v2)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in m.encoder.parameters())
    assert m.encoder(v1).shape == (6, m.feature_dim)


def test_byol_target_is_an_ema_with_cosine_momentum():
    torch.manual_seed(0)
    m = methods.build_method(tiny("byol"))
    assert all(not p.requires_grad for p in m.target_encoder.parameters())
    online0 = [p.detach().clone() for p in m.encoder.parameters()]
    target0 = [p.detach().clone() for p in m.target_encoder.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(online0, target0))  # starts as a copy
    with torch.no_grad():
        for p in m.encoder.parameters():
            p.add_(1.0)
    m.step_target(progress=0.0)  # momentum = base = 0.99 at the start
    assert m.momentum == pytest.approx(0.99)
    for t, t0 in zip(m.target_encoder.parameters(), target0):
        assert torch.allclose(t, t0 + 0.01, atol=1e-6)
    m.step_target(progress=0.5)
    assert m.momentum == pytest.approx(1 - 0.01 * (math.cos(math.pi * 0.5) + 1) / 2)
    m.step_target(progress=1.0)
    assert m.momentum == pytest.approx(1.0)


def test_simclr_one_bn_pass_over_both_views():
    # SimCLR concatenates the views: the BN statistics are those of all 2B images.
    torch.manual_seed(0)
    m = methods.build_method(tiny("simclr"))
    seen = []
    bn = m.encoder[0][1]
    bn.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape[0]))
    m.loss(torch.randn(3, 3, 32, 32), torch.randn(3, 3, 32, 32))
    assert seen == [6]
    m2 = methods.build_method(tiny("barlow"))
    seen.clear()
    m2.encoder[0][1].register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape[0]))
    m2.loss(torch.randn(3, 3, 32, 32), torch.randn(3, 3, 32, 32))
    assert seen == [3, 3]  # Barlow Twins: one pass per view
