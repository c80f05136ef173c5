"""Image backbones of the paper: the 3x3000 MLP and the VGG family (registered on import)."""

from .mlp import MLPEncoder, mlp
from .vgg import VGG_CHANNELS, VGGEncoder

__all__ = ["MLPEncoder", "VGGEncoder", "VGG_CHANNELS", "mlp"]
