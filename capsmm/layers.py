"""Building blocks shared by encoders of different modalities."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

POOL = "M"


def conv_blocks(in_channels: int, channels: Sequence[int | str], width_mult: float, dropout: float) -> list[nn.Sequential]:
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
            nn.ReLU(inplace=True),
        ]
        if index + 1 < len(channels) and channels[index + 1] == POOL:
            layers.append(nn.MaxPool2d(2, ceil_mode=True))
        layers.append(nn.Dropout(dropout))
        blocks.append(nn.Sequential(*layers))
        in_channels = out_channels
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
