"""CAP encoders: a modality's backbone as an explicit chain of blocks.

A *block* is the unit between two stop-gradients. :meth:`CAPEncoder.iter_blocks` is the one loop
over a chain of blocks in capsmm, and in the cut modes it feeds each block the previous activation
through :func:`stop_gradient`: that one ``detach()`` is where CAPs cuts the gradient (timm's
``forward_intermediates`` shape, no hooks). The model's forward, memory-lean recomputation,
block-parallel stages and the diagnostics all run blocks through it
(:meth:`capsmm.model.CAPModel.iter_blocks` adds the readouts and the autocast context).
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .errors import ConfigError
from .registry import Registry

_GRADIENT_KEPT = contextvars.ContextVar("gradient_kept", default=False)


def without_graph(x: Tensor) -> Tensor:
    """``x`` as a plain value, with no path back to what computed it: the one ``detach()`` in capsmm.
    :func:`stop_gradient`, the method's cut, is built on it; the other callers keep a value rather
    than cut the method's gradient (a step's reported loss and logits, Forward-Forward's running
    means, a segmented block's probe leaves), so :func:`gradient_kept` leaves them as they are."""
    return x.detach()


def stop_gradient(x: Tensor) -> Tensor:
    """The stop-gradient of CAPs: ``x`` as a value, with no path back to what computed it. Every cut
    in capsmm goes through here (between blocks; and into a layer-local peer's output layer), so
    :func:`gradient_kept` can lift all of them at once."""
    return x if _GRADIENT_KEPT.get() else without_graph(x)


@contextlib.contextmanager
def gradient_kept() -> Iterator[None]:
    """Within it, :func:`stop_gradient` cuts nothing: the same values, with a gradient through every
    block. An attack needs the gradient of the whole eval-time function input -> logits; through the
    cuts it would see the last block's readout alone (gradient masking)."""
    token = _GRADIENT_KEPT.set(True)
    try:
        yield
    finally:
        _GRADIENT_KEPT.reset(token)


class CAPEncoder(nn.Module):
    """A backbone cut into ``blocks``; every block's output feeds one CAP readout.

    Subclasses only build the blocks. ``modality`` names the input the encoder reads (the key of
    the batch dict in multimodal models).
    """

    modality: str = "image"

    def __init__(self, blocks: Iterable[nn.Module]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    def iter_blocks(
        self, x: Tensor, *, cut: bool, start: int = 0, stop: int | None = None,
        context: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
    ) -> Iterator[tuple[int, Tensor, Tensor]]:
        """Run blocks ``start`` .. ``stop - 1`` on ``x`` (the input of block ``start``), yielding
        ``(index, block input, activation)`` for each, in order.

        With ``cut`` no gradient crosses a block boundary: each block reads its input through the
        stop-gradient below. Each block runs inside ``context()`` (the model's autocast).
        """
        stop = len(self.blocks) if stop is None else stop
        for index in range(start, stop):
            if cut:
                x = stop_gradient(x)  # no gradient from block `index` reaches an earlier block
            with context():
                activation = self.blocks[index](x)
            yield index, x, activation
            x = activation

    def forward(self, x: Tensor) -> Tensor:
        for _, _, x in self.iter_blocks(x, cut=False):
            pass
        return x

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
            return [tuple(self.to_channels_first(a).shape[1:]) for _, _, a in self.iter_blocks(probe, cut=True)]
        finally:
            self.train(was_training)


EncoderBuilder = Callable[..., CAPEncoder]

#: backbone name -> keyword-only builder ``(*, in_shape, **options) -> CAPEncoder``
ENCODERS: Registry[EncoderBuilder] = Registry("backbone")


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
