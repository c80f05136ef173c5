"""Residual backbones, each residual block one CAP block (the stop-gradient between blocks, the skip
connection inside one).

- ``resnet20``, ``resnet32``, ``resnet56``, ``resnet110``: the CIFAR ResNets of He et al. (2016,
  section 4.2): a 3x3 stem of 16 channels, then 3 stages of ``n`` basic blocks (16, 32, 64 channels;
  n = 3, 5, 9, 18), the first block of stages 2 and 3 halving the resolution; identity shortcuts,
  zero-padded where the width doubles (their option A), hence 0.27M / 0.46M / 0.85M / 1.7M parameters.
- ``resnet18``: the CIFAR variant of the ImageNet ResNet-18 (3x3 stem of 64 channels, no max-pool;
  4 stages of 2 basic blocks, 64 to 512 channels; 1x1 convolution shortcuts; 11.2M parameters).

Block 0 is the stem. ``width_mult`` scales every width, ``dropout`` closes every block.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from capsmm.encoder import CAPEncoder, register_encoder
from capsmm.errors import ConfigError
from capsmm.layers import activation


class BasicBlock(nn.Module):
    """conv3x3-BN-act-conv3x3-BN plus the shortcut, then act and dropout."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, dropout: float, shortcut: str, nonlinearity: str) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(out_channels),
            activation(nonlinearity),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels))
        self.stride, self.pad = stride, out_channels - in_channels
        self.projection = None
        if (stride != 1 or self.pad) and shortcut == "projection":
            self.projection = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels))
        self.out = nn.Sequential(activation(nonlinearity), nn.Dropout(dropout))

    def shortcut(self, x: Tensor) -> Tensor:
        if self.projection is not None:
            return self.projection(x)
        if self.stride != 1:
            x = x[:, :, ::self.stride, ::self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2)) if self.pad else x  # option A: zero channels

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.body(x) + self.shortcut(x))


class ResNetEncoder(CAPEncoder):
    """A stem and residual stages; every residual block is a CAP block."""


def resnet_blocks(in_channels: int, widths: Sequence[int], blocks_per_stage: int, width_mult: float, dropout: float,
                  shortcut: str, nonlinearity: str) -> list[nn.Module]:
    widths = [max(1, round(w * width_mult)) for w in widths]
    blocks: list[nn.Module] = [nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False), nn.BatchNorm2d(widths[0]),
                                             activation(nonlinearity), nn.Dropout(dropout))]
    channels = widths[0]
    for stage, width in enumerate(widths):
        for index in range(blocks_per_stage):
            stride = 2 if stage > 0 and index == 0 else 1
            blocks.append(BasicBlock(channels, width, stride, dropout, shortcut, nonlinearity))
            channels = width
    return blocks


def _check(name: str, in_shape: Sequence[int], width_mult: float) -> None:
    if len(in_shape) != 3:
        raise ConfigError(f"{name} needs image inputs (C, H, W), got shape {tuple(in_shape)}")
    if width_mult <= 0:
        raise ConfigError(f"width_mult must be > 0, got {width_mult}")


def _register_cifar(depth: int) -> None:
    n = (depth - 2) // 6
    name = f"resnet{depth}"

    @register_encoder(name, modality="image")
    def build(*, in_shape: Sequence[int], width_mult: float = 1.0, dropout: float = 0.2, activation: str = "relu") -> ResNetEncoder:
        _check(name, in_shape, width_mult)
        return ResNetEncoder(resnet_blocks(in_shape[0], [16, 32, 64], n, width_mult, dropout, "zeros", activation))

    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"{name}: He et al.'s CIFAR ResNet, 3 stages of {n} basic blocks (16, 32, 64 channels x ``width_mult``)."


for _depth in (20, 32, 56, 110):
    _register_cifar(_depth)


@register_encoder("resnet18", modality="image")
def resnet18(*, in_shape: Sequence[int], width_mult: float = 1.0, dropout: float = 0.2, activation: str = "relu") -> ResNetEncoder:
    """ResNet-18 for 32x32 inputs: 3x3 stem, no max-pool, 4 stages of 2 basic blocks (64 ... 512 channels x ``width_mult``)."""
    _check("resnet18", in_shape, width_mult)
    return ResNetEncoder(resnet_blocks(in_shape[0], [64, 128, 256, 512], 2, width_mult, dropout, "projection", activation))
