"""A ``transformers`` encoder model as a :class:`~capsmm.encoder.CAPEncoder` whose blocks are its layers.

Block 0 is the embeddings (plus an optional front end) and the first layer; block i is layer i.
The stop-gradient of CAPs thus falls between transformer layers, each layer's (B, T, D) hidden
states feed one CAP readout (pooled over tokens per feature), and nothing is downloaded: build the
model from a config, or load it from a local directory.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from capsmm.encoder import CAPEncoder, register_encoder
from capsmm.errors import ConfigError
from capsmm.optional import require

LAYER_PATHS = ("layers", "encoder.layer", "encoder.layers", "layer")


def _find(module: nn.Module, path: str) -> Any:
    for part in path.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module


class _LayerBlock(nn.Module):
    """[front end ->] [embeddings ->] one transformer layer; returns the layer's hidden states."""

    def __init__(self, layer: nn.Module, embeddings: nn.Module | None = None, front_end: nn.Module | None = None) -> None:
        super().__init__()
        self.front_end, self.embeddings, self.layer = front_end, embeddings, layer

    def forward(self, x: Tensor) -> Tensor:
        if self.front_end is not None:
            x = self.front_end(x)
        if self.embeddings is not None:
            x = self.embeddings(x)
        out = self.layer(x)
        return out[0] if isinstance(out, tuple) else out


class HFEncoder(CAPEncoder):
    """Wrap a ``transformers`` encoder (ViT, BERT, DeiT, AST... anything with ``embeddings`` and a
    list of layers at one of :data:`LAYER_PATHS`) for ``modality``.

    Args:
        model: the ``PreTrainedModel``; its pooler and final norm are not used.
        modality: the batch key it reads (``image``, ``audio``, ``text``...).
        front_end: optional module applied before the embeddings (e.g. a log-mel for waveforms).
        layers_path: where the layer list is, if not at one of :data:`LAYER_PATHS`.
    """

    def __init__(self, model: nn.Module, modality: str = "image", front_end: nn.Module | None = None,
                 layers_path: str | None = None) -> None:
        embeddings = getattr(model, "embeddings", None)
        layers = _find(model, layers_path) if layers_path else next((_find(model, p) for p in LAYER_PATHS if _find(model, p) is not None), None)
        if embeddings is None or not isinstance(layers, nn.ModuleList) or len(layers) == 0:
            raise ConfigError(f"{type(model).__name__} has no 'embeddings' and layer list at {', '.join(LAYER_PATHS)}; "
                              "pass layers_path to HFEncoder")
        blocks = [_LayerBlock(layers[0], embeddings, front_end)] + [_LayerBlock(layer) for layer in layers[1:]]
        super().__init__(blocks)
        self.modality = modality
        word_embeddings = getattr(embeddings, "word_embeddings", None)
        self.input_dtype = torch.long if isinstance(word_embeddings, nn.Embedding) and front_end is None else torch.float32

    def to_channels_first(self, activation: Tensor) -> Tensor:
        return activation.transpose(1, 2)  # (B, T, D) -> (B, D, T): pool over tokens, per feature

    def probe_input(self, in_shape: Sequence[int], device: torch.device) -> Tensor:
        return torch.zeros(2, *in_shape, device=device, dtype=self.input_dtype)

    @classmethod
    def from_pretrained(cls, directory: str | Path, modality: str = "image", **kwargs: Any) -> "HFEncoder":
        """Load a model saved with ``save_pretrained`` from a local directory (never downloads)."""
        transformers = require("transformers", "the transformers adapter")
        if not Path(directory).is_dir():
            raise ConfigError(f"no transformers model directory at {directory} (capsmm loads local models only)")
        return cls(transformers.AutoModel.from_pretrained(str(directory), local_files_only=True), modality, **kwargs)

    @classmethod
    def from_config(cls, config: Any, modality: str = "image", **kwargs: Any) -> "HFEncoder":
        """A freshly initialised model built from a ``transformers`` config object."""
        transformers = require("transformers", "the transformers adapter")
        return cls(transformers.AutoModel.from_config(config), modality, **kwargs)


@register_encoder("hf-image", modality="image")
def hf_image(*, in_shape: Sequence[int], source: str | None = None) -> HFEncoder:
    """A ``transformers`` vision encoder loaded from the local directory ``source`` (``image_model.source``)."""
    if not source:
        raise ConfigError("backbone hf-image needs model.source: a local directory written by save_pretrained")
    return HFEncoder.from_pretrained(source, "image")
