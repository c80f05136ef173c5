"""Building blocks shared by encoders of different modalities."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from .errors import ConfigError

POOL = "M"
ACTIVATIONS = ("relu", "leakyrelu", "relu-full-grad")


class _ReLUPassingGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        return grad


class ReLUFullGrad(nn.Module):
    """ReLU forward, identity backward: the gradient passes where the unit is off too, so a silent unit
    can come back. The activation of the Forward-Forward reference (loeweX/Forward-Forward's
    ``ReLU_full_grad``), whose goodness loss would otherwise leave units dead for good."""

    def forward(self, x: Tensor) -> Tensor:
        return _ReLUPassingGradient.apply(x)


def activation(name: str) -> nn.Module:
    """``relu``, ``leakyrelu`` (slope 0.01, as local-loss uses it), or ``relu-full-grad`` (:class:`ReLUFullGrad`)."""
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "leakyrelu":
        return nn.LeakyReLU(0.01, inplace=True)
    if name == "relu-full-grad":
        return ReLUFullGrad()
    raise ConfigError(f"unknown activation '{name}'; valid: {', '.join(ACTIVATIONS)}")


def conv_blocks(in_channels: int, channels: Sequence[int | str], width_mult: float, dropout: float,
                nonlinearity: str = "relu") -> list[nn.Sequential]:
    """VGG-style CAP blocks from a channel list (torchvision ``vgg.py`` style; ``"M"`` = 2x2 max-pool).

    One block per conv layer: conv3x3 (no bias: BatchNorm follows) -> BatchNorm -> ReLU [-> the
    max-pool that follows it in the list] -> Dropout. Pools use ``ceil_mode``, so odd sizes
    (28 -> 14 -> 7 -> 4 -> 2 -> 1) need no padding.
    """
    blocks = []
    for index, item in enumerate(channels):
        if item == POOL:
            continue
        out_channels = max(1, round(int(item) * width_mult))
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            activation(nonlinearity),
        ]
        if index + 1 < len(channels) and channels[index + 1] == POOL:
            layers.append(nn.MaxPool2d(2, ceil_mode=True))
        layers.append(nn.Dropout(dropout))
        blocks.append(nn.Sequential(*layers))
        in_channels = out_channels
    return blocks


def local_loss_blocks(in_shape: Sequence[int], channels: Sequence[int | str], width_mult: float, dropout: float,
                      nonlinearity: str, fc_hidden: int) -> list[nn.Sequential]:
    """VGG blocks in local-loss's order (its ``vgg8b``/``vgg11b``), then its fully connected block.

    A block's output is its conv -> BatchNorm -> activation, before dropout and pooling, which open
    the next block (local-loss computes its local losses there): block i = [Dropout2d] [2x2
    max-pool, floor] conv3x3 -> BatchNorm -> activation; the last block = [Dropout2d] [pool]
    flatten -> linear (``fc_hidden`` units, not scaled by ``width_mult``) -> BatchNorm -> activation.
    """
    c, h, w = in_shape
    blocks: list[nn.Sequential] = []
    opening: list[nn.Module] = []
    for item in channels:
        if item == POOL:
            opening.append(nn.MaxPool2d(2))
            h, w = h // 2, w // 2
            continue
        out_channels = max(1, round(int(item) * width_mult))
        blocks.append(nn.Sequential(*opening, nn.Conv2d(c, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels),
                                    activation(nonlinearity)))
        opening = [nn.Dropout2d(dropout)]
        c = out_channels
    if h < 1 or w < 1:
        raise ConfigError(f"input {tuple(in_shape)} is too small for {len([x for x in channels if x == POOL])} poolings")
    blocks.append(nn.Sequential(*opening, nn.Flatten(), nn.Linear(c * h * w, fc_hidden, bias=False), nn.BatchNorm1d(fc_hidden),
                                activation(nonlinearity)))
    return blocks


@contextmanager
def batchnorm_stats_frozen(*modules: nn.Module) -> Iterator[None]:
    """Run a forward in training mode without changing any batch-norm running statistics.

    Recomputing a block (memory-lean training) or taking a second gradient on the same batch
    (diagnostics) must not count the batch twice in the running statistics.
    """
    norms = [m for module in modules for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [[b.clone() for b in norm.buffers()] for norm in norms]
    try:
        yield
    finally:
        with torch.no_grad():
            for norm, buffers in zip(norms, saved):
                for live, old in zip(norm.buffers(), buffers):
                    live.copy_(old)
