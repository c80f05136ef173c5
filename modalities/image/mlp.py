"""The paper's fully connected backbone: ``depth`` hidden layers of ``hidden`` units (3x3000)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import nn

from capsmm.encoder import CAPEncoder, register_encoder
from capsmm.errors import ConfigError
from capsmm.layers import activation


class MLPEncoder(CAPEncoder):
    """Each block is Linear [-> BatchNorm] -> activation -> Dropout; the first block flattens the image.

    The paper's blocks have no batch norm; local-loss's MLP (``block_batchnorm=True``,
    ``activation="leakyrelu"`` for its sim and predsim recipes) has.
    """

    def __init__(self, in_features: int, widths: Sequence[int], dropout: float, nonlinearity: str = "relu",
                 batchnorm: bool = False) -> None:
        blocks = []
        for index, width in enumerate(widths):
            layers: list[nn.Module] = [nn.Flatten()] if index == 0 else []
            layers.append(nn.Linear(in_features, width))
            layers += [nn.BatchNorm1d(width)] if batchnorm else []
            layers += [activation(nonlinearity), nn.Dropout(dropout)]
            blocks.append(nn.Sequential(*layers))
            in_features = width
        super().__init__(blocks)


@register_encoder("mlp", modality="image")
def mlp(*, in_shape: Sequence[int], width_mult: float = 1.0, dropout: float = 0.2, depth: int = 3, hidden: int = 3000,
        activation: str = "relu", block_batchnorm: bool = False) -> MLPEncoder:
    """MLP with ``depth`` blocks of ``round(hidden * width_mult)`` units (default 3x3000)."""
    if depth < 1 or hidden < 1 or width_mult <= 0:
        raise ConfigError(f"mlp needs depth >= 1, hidden >= 1 and width_mult > 0 (got {depth}, {hidden}, {width_mult})")
    width = max(1, round(hidden * width_mult))
    return MLPEncoder(math.prod(in_shape), [width] * depth, dropout, activation, block_batchnorm)
