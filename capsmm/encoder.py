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

    @torch.no_grad()
    def block_shapes(self, in_shape: Sequence[int]) -> list[tuple[int, ...]]:
        """Per-sample output shape of every block (like timm's ``feature_info``), by a dry run."""
        was_training = self.training
        self.eval()
        try:
            device = next((p.device for p in self.parameters()), torch.device("cpu"))
            probe = torch.zeros(2, *in_shape, device=device)
            return [tuple(a.shape[1:]) for a in self.forward_blocks(probe, detach=True)]
        finally:
            self.train(was_training)


EncoderBuilder = Callable[..., CAPEncoder]

#: backbone name -> keyword-only builder ``(*, in_shape, **options) -> CAPEncoder``
ENCODERS: Registry[EncoderBuilder] = Registry("backbone", builtin_modules=("modalities.image",))


def build_encoder(name: str, *, in_shape: Sequence[int], **options: object) -> CAPEncoder:
    """Build a registered encoder; an option the builder does not take is a :class:`ConfigError`."""
    builder = ENCODERS.get(name)
    accepted = [
        p.name for p in inspect.signature(builder).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name != "in_shape"
    ]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(
            f"backbone '{name}' does not take option(s) {', '.join(unknown)}; it takes: {', '.join(accepted) or 'none'}"
        )
    return builder(in_shape=tuple(in_shape), **options)
