"""The paper's fully connected backbone: ``depth`` hidden layers of ``hidden`` units (3x3000)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import nn

from capsmm.encoder import CAPEncoder, register_encoder
from capsmm.errors import ConfigError


class MLPEncoder(CAPEncoder):
    """Each block is Linear -> ReLU -> Dropout; the first block flattens the image."""

    def __init__(self, in_features: int, widths: Sequence[int], dropout: float) -> None:
        blocks = []
        for index, width in enumerate(widths):
            layers: list[nn.Module] = [nn.Flatten()] if index == 0 else []
            layers += [nn.Linear(in_features, width), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            blocks.append(nn.Sequential(*layers))
            in_features = width
        super().__init__(blocks)


@register_encoder("mlp", modality="image")
def mlp(*, in_shape: Sequence[int], width_mult: float = 1.0, dropout: float = 0.2, depth: int = 3, hidden: int = 3000) -> MLPEncoder:
    """MLP with ``depth`` blocks of ``round(hidden * width_mult)`` units (default 3x3000)."""
    if depth < 1 or hidden < 1 or width_mult <= 0:
        raise ConfigError(f"mlp needs depth >= 1, hidden >= 1 and width_mult > 0 (got {depth}, {hidden}, {width_mult})")
    width = max(1, round(hidden * width_mult))
    return MLPEncoder(math.prod(in_shape), [width] * depth, dropout)
