"""CAPModel: encoders -> per-block readouts -> one pattern m -> class prototypes.

Data flows one way: inputs -> ``encoders`` (blocks) -> ``readouts`` -> patterns -> ``head`` ->
logits. The model never calls backward; the trainer owns the loss and the optimiser, and picks
the mode (:mod:`capsmm.modes`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

from torch import Tensor, nn

from .encoder import CAPEncoder, build_encoder
from .errors import ConfigError
from .modes import DETACHED_MODES, check_mode, reads_all_blocks, same_family
from .prototypes import PrototypeHead
from .readout import CAPReadout


class CAPOutput(NamedTuple):
    """What a :class:`CAPModel` returns for a batch."""

    logits: Tensor
    """(B, C) class scores; for ``bp``, ``caps`` and ``caps-full`` the loss is ``cross_entropy(logits, y)``."""
    patterns: list[Tensor]
    """Per-block CAP vectors (B, d_i) that feed the head, in block order (modalities sorted by name)."""
    block_logits: list[Tensor] | None = None
    """``local`` mode only: each block's scores against its own prototype slice; the loss sums their CEs."""


class CAPModel(nn.Module):
    """One or more CAP encoders sharing one prototype space.

    Args:
        encoders: modality name -> encoder. Stored key-sorted; encoders share no parameter.
        in_shapes: modality name -> per-sample input shape, used to size the readouts.
        num_classes: number of classes (prototypes).
        mode: ``bp``, ``caps``, ``caps-full`` or ``local``; fixes which blocks have readouts
            (``bp``: the last block of each encoder; otherwise every block).
        pattern_width: width of every block's CAP vector (the paper's 1024).
        readout_norm: ``batchnorm`` | ``layernorm`` | ``none``.
        head: ``cosine`` (eq. 7) | ``template`` (Algorithm 1).
        temperature: tau of the cosine head.
    """

    def __init__(
        self,
        encoders: Mapping[str, CAPEncoder],
        in_shapes: Mapping[str, Sequence[int]],
        *,
        num_classes: int,
        mode: str,
        pattern_width: int = 1024,
        readout_norm: str = "batchnorm",
        head: str = "cosine",
        temperature: float = 0.1,
    ) -> None:
        super().__init__()
        if not encoders:
            raise ConfigError("a CAPModel needs at least one encoder")
        self._mode = check_mode(mode)
        self.encoders = nn.ModuleDict({name: encoders[name] for name in sorted(encoders)})
        self.in_shapes = {name: tuple(in_shapes[name]) for name in self.encoders}
        self.readouts = nn.ModuleDict()
        #: modality -> indices of the blocks that have a readout
        self.read_blocks: dict[str, tuple[int, ...]] = {}
        #: modality -> indices of its slices in the prototype head
        self.slices: dict[str, tuple[int, ...]] = {}
        slice_dims: list[int] = []
        for name, encoder in self.encoders.items():
            shapes = encoder.block_shapes(self.in_shapes[name])
            read = tuple(range(len(shapes))) if reads_all_blocks(mode) else (len(shapes) - 1,)
            self.read_blocks[name] = read
            self.readouts[name] = nn.ModuleList(CAPReadout(shapes[i], pattern_width, readout_norm) for i in read)
            self.slices[name] = tuple(range(len(slice_dims), len(slice_dims) + len(read)))
            slice_dims.extend(pattern_width for _ in read)
        self.head = PrototypeHead(num_classes, slice_dims, head, temperature)

    @property
    def mode(self) -> str:
        return self._mode

    def set_mode(self, mode: str) -> None:
        """Switch the training mode (e.g. ``caps`` -> ``caps-full``); only within one head family."""
        if not same_family(self._mode, mode):
            raise ConfigError(f"cannot switch a '{self._mode}' model to '{mode}': they need different heads")
        self._mode = mode

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.encoders)

    @property
    def blocks(self) -> nn.ModuleList:
        """All encoders' blocks in pattern order (for one encoder: its ``blocks``, in order)."""
        if len(self.encoders) == 1:
            return next(iter(self.encoders.values())).blocks
        return nn.ModuleList(block for encoder in self.encoders.values() for block in encoder.blocks)

    def as_inputs(self, inputs: Tensor | Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The inputs as ``{modality: tensor}`` (a bare tensor is the single encoder's input)."""
        if isinstance(inputs, Mapping):
            unknown = sorted(set(inputs) - set(self.encoders))
            if unknown:
                raise KeyError(f"inputs for unknown modalities {unknown}; model has {list(self.encoders)}")
            present = {name: inputs[name] for name in self.encoders if name in inputs}
            if not present:
                raise ValueError(f"no input for any modality of this model ({list(self.encoders)})")
            return present
        if len(self.encoders) != 1:
            raise ValueError(f"a multimodal model takes a dict of inputs keyed by {list(self.encoders)}")
        return {next(iter(self.encoders)): inputs}

    def block_readouts(self, modality: str) -> dict[int, CAPReadout]:
        """Block index -> its readout, for the blocks of ``modality`` that have one."""
        return dict(zip(self.read_blocks[modality], self.readouts[modality]))

    def score(self, patterns: Sequence[Tensor], slices: Sequence[int]) -> CAPOutput:
        """Head scores of ``patterns`` filling prototype ``slices``: global, or per block in ``local``."""
        if self._mode == "local":
            block_logits = [self.head([p], [s]) for p, s in zip(patterns, slices)]
            return CAPOutput(block_logits[-1], list(patterns), block_logits)
        return CAPOutput(self.head(patterns, slices), list(patterns))

    def forward(self, inputs: Tensor | Mapping[str, Tensor]) -> CAPOutput:
        detach = self._mode in DETACHED_MODES
        patterns: list[Tensor] = []
        slices: list[int] = []
        for name, x in self.as_inputs(inputs).items():
            activations = self.encoders[name].forward_blocks(x, detach=detach)
            for readout, block in zip(self.readouts[name], self.read_blocks[name]):
                patterns.append(readout(activations[block]))
            slices.extend(self.slices[name])
        return self.score(patterns, slices)


def build_model(
    backbone: str,
    *,
    num_classes: int,
    in_shape: Sequence[int],
    mode: str,
    pattern_width: int = 1024,
    readout_norm: str = "batchnorm",
    head: str = "cosine",
    temperature: float = 0.1,
    **encoder_options: object,
) -> CAPModel:
    """Build a single-encoder CAP model.

    Args:
        backbone: a registered encoder name (``mlp``, ``vgg6`` ... ``vgg19``, or your own).
        num_classes: number of classes.
        in_shape: per-sample input shape, e.g. ``(1, 28, 28)``.
        mode: ``bp``, ``caps``, ``caps-full`` or ``local`` (or the first mode of a schedule).
        pattern_width, readout_norm, head, temperature: see :class:`CAPModel`.
        **encoder_options: passed to the backbone builder (e.g. ``width_mult=2``, ``dropout=0.2``;
            the MLP also takes ``depth`` and ``hidden``).

    Returns:
        A :class:`CAPModel`; ``model(x)`` gives a :class:`CAPOutput` with ``.logits`` and ``.patterns``.
    """
    encoder = build_encoder(backbone, in_shape=in_shape, **encoder_options)
    return CAPModel(
        {encoder.modality: encoder},
        {encoder.modality: in_shape},
        num_classes=num_classes,
        mode=mode,
        pattern_width=pattern_width,
        readout_norm=readout_norm,
        head=head,
        temperature=temperature,
    )
