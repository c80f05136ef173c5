"""CAP encoders: a modality's backbone as an explicit chain of blocks.

A *block* is the unit between two stop-gradients. :meth:`CAPEncoder.forward_blocks` returns every
block's activation, and in the detached modes feeds each block the previous activation through
``detach()``: that one line is where CAPs cuts the gradient (timm's ``forward_intermediates``
shape, no hooks).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor, nn

from .errors import ConfigError
from .registry import Registry


class CAPEncoder(nn.Module):
    """A backbone cut into ``blocks``; every block's output feeds one CAP readout.

    Subclasses only build the blocks. ``modality`` names the input the encoder reads (the key of
    the batch dict in multimodal models).
    """

    modality: str = "image"

    def __init__(self, blocks: Iterable[nn.Module]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    def forward_blocks(self, x: Tensor, *, detach: bool) -> list[Tensor]:
        """All blocks' activations, in order. With ``detach`` no gradient crosses a block boundary."""
        activations = []
        for block in self.blocks:
            x = block(x)
            activations.append(x)
            if detach:
                x = x.detach()  # the stop-gradient of CAPs
        return activations

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_blocks(x, detach=False)[-1]

    def to_channels_first(self, activation: Tensor) -> Tensor:
        """A block's activation as (B, C, *spatial) for its readout.

        Identity for conv and MLP blocks; token encoders, whose blocks pass (B, T, D) on, return
        (B, D, T) here so that the readout pools over tokens per feature.
        """
        return activation

    def probe_input(self, in_shape: Sequence[int], device: torch.device) -> Tensor:
        """A batch of two dummy inputs, for the dry run of :meth:`block_shapes`."""
        return torch.zeros(2, *in_shape, device=device)

    @torch.no_grad()
    def block_shapes(self, in_shape: Sequence[int]) -> list[tuple[int, ...]]:
        """Per-sample shape that every block's readout receives (like timm's ``feature_info``), by a dry run."""
        was_training = self.training
        self.eval()
        try:
            device = next((p.device for p in self.parameters()), torch.device("cpu"))
            probe = self.probe_input(in_shape, device)
            return [tuple(self.to_channels_first(a).shape[1:]) for a in self.forward_blocks(probe, detach=True)]
        finally:
            self.train(was_training)


EncoderBuilder = Callable[..., CAPEncoder]

#: backbone name -> keyword-only builder ``(*, in_shape, **options) -> CAPEncoder``
ENCODERS: Registry[EncoderBuilder] = Registry("backbone", builtin_modules=("modalities.image", "modalities.audio", "modalities.hf.encoder"))


def register_encoder(name: str, modality: str) -> Callable[[EncoderBuilder], EncoderBuilder]:
    """Decorator registering a keyword-only encoder builder for ``modality`` under ``name``.

    ``@register_encoder("tiny-cnn", modality="image")`` on ``def build(*, in_shape, width_mult=1.0,
    dropout=0.2) -> CAPEncoder``; the builder's keyword options become config keys' values.
    """

    def add(builder: EncoderBuilder) -> EncoderBuilder:
        builder.modality = modality  # type: ignore[attr-defined]
        return ENCODERS.register(name)(builder)

    return add


def encoder_modality(name: str) -> str:
    """The modality a registered encoder reads (``image`` unless its registration says otherwise)."""
    return getattr(ENCODERS.get(name), "modality", "image")


def encoder_options(name: str) -> list[str]:
    """The keyword options the builder of encoder ``name`` takes (besides ``in_shape``)."""
    return [
        p.name for p in inspect.signature(ENCODERS.get(name)).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name != "in_shape"
    ]


def build_encoder(name: str, *, in_shape: Sequence[int], **options: object) -> CAPEncoder:
    """Build a registered encoder; an option the builder does not take is a :class:`ConfigError`."""
    builder = ENCODERS.get(name)
    accepted = encoder_options(name)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(
            f"backbone '{name}' does not take option(s) {', '.join(unknown)}; it takes: {', '.join(accepted) or 'none'}"
        )
    return builder(in_shape=tuple(in_shape), **options)
