"""VGG backbones built from channel lists (torchvision ``vgg.py`` style), one block per conv layer.

Channel lists at 1x (``"M"`` = 2x2 max-pool, attached to the block before it):

- ``vgg11``/``vgg16``/``vgg19``: the classic configurations A/D/E (64 ... 512 channels), whose
  conv parameters (9.2M / 14.7M / 20.0M on 3-channel input) match the paper's 1x rows
  (Table 2: 9.53M / 15.24M / 18.40M with its head). ``width_mult`` 2 and 4 give 128 ... 1024 and
  256 ... 2048 channels (the paper's 2x/4x rows, Table 3).
- ``vgg6`` (5 convs) and ``vgg8`` (6 convs): the paper gives no lists; these are the classic
  stages with the deepest layers dropped, chosen so that parameters fall near its Table 1 rows.

Every block is conv3x3 -> BatchNorm -> ReLU [-> max-pool] -> Dropout (:func:`capsmm.layers.conv_blocks`).
Pools use ``ceil_mode`` so 28x28 inputs go 28 -> 14 -> 7 -> 4 -> 2 -> 1 without padding to 32x32.

``vgg8b`` and ``vgg11b`` are local-loss's (Nøkland & Eidnes 2019) networks: its channel lists, its
fully connected block of 1,024 units, its block order (dropout and floor pooling open the next
block, so a block's output is where local-loss computes its local losses;
:func:`capsmm.layers.local_loss_blocks`).
"""

from __future__ import annotations

from collections.abc import Sequence

from capsmm.encoder import CAPEncoder, register_encoder
from capsmm.errors import ConfigError
from capsmm.layers import POOL as M
from capsmm.layers import conv_blocks, local_loss_blocks

VGG_CHANNELS: dict[str, list[int | str]] = {
    "vgg6": [64, M, 128, M, 256, M, 512, M, 512, M],
    "vgg8": [64, M, 128, M, 256, 256, M, 512, M, 512, M],
    "vgg11": [64, M, 128, M, 256, 256, M, 512, 512, M, 512, 512, M],
    "vgg16": [64, 64, M, 128, 128, M, 256, 256, 256, M, 512, 512, 512, M, 512, 512, 512, M],
    "vgg19": [64, 64, M, 128, 128, M, 256, 256, 256, 256, M, 512, 512, 512, 512, M, 512, 512, 512, 512, M],
}


#: local-loss's channel lists (its train.py ``cfg``), each followed by a fully connected block of 1,024 units
LOCAL_LOSS_CHANNELS: dict[str, list[int | str]] = {
    "vgg8b": [128, 256, M, 256, 512, M, 512, M, 512, M],
    "vgg11b": [128, 128, 128, 256, M, 256, 512, M, 512, 512, M, 512, M],
}
FC_HIDDEN = 1024


class VGGEncoder(CAPEncoder):
    """A VGG feature extractor whose blocks are its conv layers (with any following pool)."""


def _register(name: str) -> None:
    local_loss = name in LOCAL_LOSS_CHANNELS
    channels = LOCAL_LOSS_CHANNELS[name] if local_loss else VGG_CHANNELS[name]

    @register_encoder(name, modality="image")
    def build(*, in_shape: Sequence[int], width_mult: float = 1.0, dropout: float = 0.2, activation: str = "relu") -> VGGEncoder:
        if len(in_shape) != 3:
            raise ConfigError(f"{name} needs image inputs (C, H, W), got shape {tuple(in_shape)}")
        if width_mult <= 0:
            raise ConfigError(f"width_mult must be > 0, got {width_mult}")
        if local_loss:
            return VGGEncoder(local_loss_blocks(in_shape, channels, width_mult, dropout, activation, FC_HIDDEN))
        return VGGEncoder(conv_blocks(in_shape[0], channels, width_mult, dropout, activation))

    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"{name} (channel list {channels}{' + FC 1024' if local_loss else ''}) scaled by ``width_mult``."


for _name in [*VGG_CHANNELS, *LOCAL_LOSS_CHANNELS]:
    _register(_name)
