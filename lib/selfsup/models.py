"""Backbones (images -> features) and the MLP heads the methods put on top."""

from __future__ import annotations

import torch
import torchvision
from torch import nn


def resnet(name: str = "resnet18", stem: str = "imagenet") -> tuple[nn.Module, int]:
    """A randomly initialised torchvision ResNet without its classifier -> (module, feature_dim).

    stem: "imagenet" keeps conv 7x7/2 + maxpool (64x64 -> 16x16 before layer1, as the course ran it);
    "cifar" uses conv 3x3/1 and no maxpool (64x64 stays 64x64: 16x the FLOPs);
    "cifar_pool" uses conv 3x3/1 + maxpool (32x32 before layer1).
    """
    net = getattr(torchvision.models, name)(weights=None)
    if stem != "imagenet":
        net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        if stem == "cifar":
            net.maxpool = nn.Identity()
    dim = net.fc.in_features
    net.fc = nn.Identity()
    return net, dim


def conv_bn(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


def convnet(width: int = 32) -> tuple[nn.Module, int]:
    """Small CPU backbone: 4 conv-BN-ReLU stages, each halving the resolution, then global pooling.

    (B, 3, 64, 64) -> (B, 8 * width). About 0.1 GFLOP per 64x64 image at width 32, ~20x less
    than ResNet18 with the imagenet stem, so demos and tests train in minutes on a laptop CPU.
    """
    w = width
    net = nn.Sequential(
        conv_bn(3, w, stride=2),  # 32x32
        conv_bn(w, 2 * w, stride=2),  # 16x16
        conv_bn(2 * w, 4 * w, stride=2),  # 8x8
        conv_bn(4 * w, 8 * w, stride=2),  # 4x4
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )
    return net, 8 * w


def backbone(name: str, stem: str = "imagenet", width: int = 32) -> tuple[nn.Module, int]:
    if name == "convnet":
        return convnet(width)
    return resnet(name, stem)


def mlp(dims: list[int], last_bn: bool = False) -> nn.Sequential:
    """Linear-BN-ReLU blocks through dims, a plain Linear at the end (optionally followed by BN).

    mlp([512, 2048, 128]) is SimCLR's projector; mlp([512, 8192, 8192, 8192]) Barlow Twins'.
    """
    layers: list[nn.Module] = []
    for d_in, d_out in zip(dims[:-2], dims[1:-1]):
        layers += [nn.Linear(d_in, d_out, bias=False), nn.BatchNorm1d(d_out), nn.ReLU(inplace=True)]
    layers.append(nn.Linear(dims[-2], dims[-1], bias=not last_bn))
    if last_bn:
        layers.append(nn.BatchNorm1d(dims[-1], affine=False))
    return nn.Sequential(*layers)


def count_flops(module: nn.Module, image_size: int = 64) -> int:
    """Multiply-accumulates x 2 of one forward pass of a single image (convs and linears only)."""
    flops = 0

    def hook(m, inp, out):
        nonlocal flops
        if isinstance(m, nn.Conv2d):
            k = m.kernel_size[0] * m.kernel_size[1] * m.in_channels // m.groups
            flops += 2 * k * out.numel()
        elif isinstance(m, nn.Linear):
            flops += 2 * m.in_features * out.numel()

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = module.training
    module.eval()
    with torch.no_grad():
        module(torch.zeros(1, 3, image_size, image_size))
    module.train(was_training)
    for h in handles:
        h.remove()
    return flops
