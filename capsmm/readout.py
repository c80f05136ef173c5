"""The CAP readout of one block: average-pool to a fixed width, normalise, flatten.

Pooling (paper, appendix B.3: "kernel sizes adjusted ... so that the resulting feature dimension
was fixed at 1024"): a block's activation of shape (C, *spatial) is average-pooled over space to
a grid of ``max(1, width // C)`` cells, so that C x cells = width whenever C divides ``width``
(64 channels -> 4x4 grid, 128 -> 2x4, 512 -> 1x2, 1024 -> 1x1). When it does not (C > width,
an MLP layer of 3000 units, or C not a divisor of ``width``), the flat vector is then
adaptive-average-pooled along its length to exactly ``width``: neighbouring channels are averaged
when there are too many and repeated when there are too few. Every block thus contributes the
same number of dimensions and, after normalisation, about the same share of ||m||^2.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from .errors import ConfigError

READOUT_NORMS: tuple[str, ...] = ("batchnorm", "layernorm", "none")


def pooling_grid(channels: int, spatial: Sequence[int], width: int) -> tuple[int, ...]:
    """Spatial output size of the pooling stage for an activation of shape (channels, *spatial)."""
    cells = max(1, width // channels)
    if len(spatial) == 0:
        return ()
    if len(spatial) == 1:
        return (cells,)
    if len(spatial) == 2:
        short = max(d for d in range(1, math.isqrt(cells) + 1) if cells % d == 0)
        long = cells // short
        return (short, long) if spatial[0] <= spatial[1] else (long, short)
    raise ConfigError(f"CAP readout supports activations with 0, 1 or 2 spatial dims; got shape {tuple(spatial)}")


def _make_norm(norm: str, width: int) -> nn.Module:
    if norm == "batchnorm":
        return nn.BatchNorm1d(width)
    if norm == "layernorm":
        return nn.LayerNorm(width)
    if norm == "none":
        return nn.Identity()
    raise ConfigError(f"unknown readout_norm '{norm}'; valid: {', '.join(READOUT_NORMS)}")


class CAPReadout(nn.Module):
    """(B, C, *spatial) activation -> (B, width) CAP vector: pool, flatten, then normalise.

    The order follows Algorithm 1 (``BN(P(x_b))``): pooling first, so the norm layer holds one
    scale per pattern dimension (the gamma_i the paper relies on to keep ||m|| stable).
    """

    def __init__(self, in_shape: Sequence[int], width: int = 1024, norm: str = "batchnorm") -> None:
        super().__init__()
        if width < 1:
            raise ConfigError(f"pattern_width must be positive, got {width}")
        self.in_shape = tuple(in_shape)
        self.width = width
        channels, spatial = self.in_shape[0], self.in_shape[1:]
        self.grid = pooling_grid(channels, spatial, width)
        self.pooled_features = channels * math.prod(self.grid)
        self.norm = _make_norm(norm, width)

    def pool(self, activation: Tensor) -> Tensor:
        """(B, C, *spatial) -> (B, width), before normalisation."""
        if len(self.grid) == 1:
            activation = F.adaptive_avg_pool1d(activation, self.grid)
        elif len(self.grid) == 2:
            activation = F.adaptive_avg_pool2d(activation, self.grid)
        flat = rearrange(activation, "b c ... -> b (c ...)")  # (B, C * cells)
        if flat.shape[1] != self.width:
            flat = F.adaptive_avg_pool1d(flat.unsqueeze(1), self.width).squeeze(1)
        return flat

    def forward(self, activation: Tensor) -> Tensor:
        return self.norm(self.pool(activation))

    def extra_repr(self) -> str:
        return f"in_shape={self.in_shape}, grid={self.grid}, width={self.width}"
