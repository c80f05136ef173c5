"""A Vision Transformer whose layers are CAP blocks: ``vit-tiny`` (Dosovitskiy et al. 2021; the
DeiT-Ti size of Touvron et al. 2021: width 192, 3 heads, MLP 768) for small images.

Patches of ``patch`` x ``patch`` pixels become tokens (a strided convolution) with learnt position
embeddings and no class token; block 0 is the patch embedding and the first layer, block i the
i-th pre-norm transformer layer (``torch.nn.TransformerEncoderLayer``, GELU). A block passes its
(B, tokens, width) hidden states on; its CAP readout pools over tokens, feature by feature. The
stop-gradient falls between layers, the residual connections stay inside them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from capsmm.encoder import CAPEncoder, register_encoder
from capsmm.errors import ConfigError


class PatchEmbedding(nn.Module):
    """(B, C, H, W) -> (B, tokens, width): non-overlapping patches, linearly embedded, plus position embeddings."""

    def __init__(self, in_shape: Sequence[int], patch: int, width: int) -> None:
        super().__init__()
        c, h, w = in_shape
        self.project = nn.Conv2d(c, width, patch, stride=patch)
        self.position = nn.Parameter(torch.zeros(1, (h // patch) * (w // patch), width))
        nn.init.trunc_normal_(self.position, std=0.02)

    def forward(self, images: Tensor) -> Tensor:
        return self.project(images).flatten(2).transpose(1, 2) + self.position


class ViTEncoder(CAPEncoder):
    """Transformer layers as CAP blocks; readouts pool over tokens."""

    def __init__(self, in_shape: Sequence[int], patch: int, width: int, depth: int, heads: int, dropout: float) -> None:
        def layer() -> nn.Module:
            return nn.TransformerEncoderLayer(width, heads, 4 * width, dropout, activation="gelu", batch_first=True, norm_first=True)

        super().__init__([nn.Sequential(PatchEmbedding(in_shape, patch, width), layer()), *(layer() for _ in range(depth - 1))])

    def to_channels_first(self, activation: Tensor) -> Tensor:
        return activation.transpose(1, 2)  # (B, T, D) -> (B, D, T): pool over tokens, per feature


@register_encoder("vit-tiny", modality="image")
def vit_tiny(*, in_shape: Sequence[int], width_mult: float = 1.0, dropout: float = 0.2, depth: int = 12, patch: int = 4) -> ViTEncoder:
    """ViT at DeiT-Ti size (width 192 x ``width_mult``, 3 heads, ``depth`` layers), ``patch`` x ``patch`` patches."""
    if len(in_shape) != 3:
        raise ConfigError(f"vit-tiny needs image inputs (C, H, W), got shape {tuple(in_shape)}")
    if in_shape[1] % patch or in_shape[2] % patch:
        raise ConfigError(f"vit-tiny: patches of {patch} px must tile the {in_shape[1]}x{in_shape[2]} image (set model.patch)")
    width = 3 * max(1, round(64 * width_mult))  # 3 heads of 64 at 1x
    return ViTEncoder(in_shape, patch, width, depth, heads=3, dropout=dropout)
