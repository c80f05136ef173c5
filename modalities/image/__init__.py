"""Image backbones (registered on import): the paper's 3x3000 MLP and VGG family, local-loss's VGG8b /
VGG11b, the CIFAR ResNets and ResNet-18, and a ViT; and the image sections of multimodal run configs."""

from capsmm.config import DataConfig, EncoderConfig, register_modality

from .mlp import MLPEncoder, mlp
from .resnet import ResNetEncoder, resnet18
from .vgg import VGG_CHANNELS, VGGEncoder
from .vit import ViTEncoder, vit_tiny

__all__ = ["MLPEncoder", "ResNetEncoder", "VGGEncoder", "VGG_CHANNELS", "ViTEncoder", "mlp", "resnet18", "vit_tiny"]

# a multimodal run's image sections: the vision run's data keys, and every encoder key
register_modality("image", data=DataConfig, encoder=EncoderConfig, data_defaults={"name": "fashion-mnist"})
