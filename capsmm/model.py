"""CAPModel: encoders -> per-block readouts -> one pattern m -> class prototypes.

Data flows one way: inputs -> ``encoders`` (blocks) -> ``readouts`` -> patterns -> ``head`` ->
logits. The model never calls backward; strategies compute the loss and the gradients, the
trainer picks the mode (:mod:`capsmm.modes`). For a layer-local peer's mode (``local-pred``,
``dgl``...) the readouts are the peer's auxiliary heads (:mod:`capsmm.peers`) and there is no
prototype head: the prediction comes from the last block's readout.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from .encoder import CAPEncoder, build_encoder
from .errors import ConfigError
from .ff import ForwardForward, LengthNorm, init_ff_layers
from .gate import CONSTANT_INPUT, ModalityGate, constant_samples, gated_cosine, modality_terms
from .modes import CAP_FAMILIES, DETACHED_MODES, check_mode, mode_spec, same_family
from .peers import PeerReadout
from .prototypes import PrototypeHead
from .readout import CAPReadout


class CAPOutput(NamedTuple):
    """What a :class:`CAPModel` returns for a batch."""

    logits: Tensor
    """(B, C) class scores; for ``bp``, ``caps`` and ``caps-full`` the loss is ``cross_entropy(logits, y)``."""
    patterns: list[Tensor]
    """Per-block CAP vectors (B, d_i) that feed the head, in block order (modalities sorted by name)."""
    block_logits: list[Tensor] | None = None
    """``local``: each block's scores against its own prototype slice (the loss sums their CEs);
    a peer: each block's own class scores, where it has them"""
    parts: list[dict[str, Tensor]] | None = None
    """a layer-local peer only: each block's pattern taken apart (``pred``, ``sim``, ``output``)"""
    peer: tuple[str, int, float] | None = None
    """a layer-local peer only: (family, number of classes, beta), what its loss needs"""
    modalities: tuple[str, ...] | None = None
    """with several modalities present (cosine head): their names, the rows of ``typicality``"""
    typicality: Tensor | None = None
    """(M, B): how typical each modality's pattern is of the clean training pairs (:mod:`capsmm.gate`)"""
    modality_logits: dict[str, Tensor] | None = None
    """training with :attr:`CAPModel.score_modalities` and several modalities present: each one's own
    slices scored alone (what the model predicts from that modality), which the slice losses and
    gradient modulation read (:mod:`capsmm.balance`)"""
    slice_loss_weight: float = 0.0
    """the weight of the per-modality slice losses in the training loss (:func:`capsmm.objectives.training_loss`)"""


class BlockPass(NamedTuple):
    """One block's work in a pass of :meth:`CAPModel.iter_blocks`."""

    modality: str
    index: int
    """the block's index within its encoder"""
    input: Tensor
    """what the block read (through the stop-gradient in the cut modes)"""
    activation: Tensor
    pattern: Tensor | None
    """its CAP vector (B, width), or None for a block without readout (``bp``'s inner blocks) or a pass without readouts"""
    slice: int | None
    """the prototype slice the pattern fills"""


#: ``train.amp`` value -> autocast dtype (``none``: full precision)
AMP_DTYPES: dict[str, torch.dtype | None] = {"none": None, "bf16": torch.bfloat16}
#: every ``train.amp`` value: the dtypes, and ``auto`` (:func:`resolve_amp`)
AMP_CHOICES = (*AMP_DTYPES, "auto")


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 in hardware: a CPU with AVX512-BF16 or AMX-BF16 (read
    from the CPU's flags, not assumed), a CUDA GPU that supports bf16 without emulation."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type != "cpu":
        return False
    if hasattr(torch.cpu, "get_capabilities"):  # torch >= 2.10
        capabilities = torch.cpu.get_capabilities()
        return bool(capabilities.get("avx512_bf16") or capabilities.get("amx_bf16"))
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()  # older torch: the same flags


def resolve_amp(amp: str, device: torch.device) -> str:
    """``train.amp`` as run on ``device``: ``auto`` is ``bf16`` where the device computes bfloat16
    natively (:func:`native_bf16`), ``none`` elsewhere, where emulated bf16 is slower than float32.
    The measurements behind it (time per epoch and test error, bf16 against float32) are in
    docs/performance.md."""
    if amp not in AMP_CHOICES:
        raise ConfigError(f"unknown train.amp '{amp}'; valid: {', '.join(AMP_CHOICES)}")
    return ("bf16" if native_bf16(device) else "none") if amp == "auto" else amp


class CAPModel(nn.Module):
    """One or more CAP encoders sharing one prototype space.

    Args:
        encoders: modality name -> encoder. Stored key-sorted; encoders share no parameter.
        in_shapes: modality name -> per-sample input shape, used to size the readouts.
        num_classes: number of classes (prototypes).
        mode: a mode of :data:`capsmm.modes.MODES`; fixes which blocks have readouts (``bp``: the
            last block of each encoder; otherwise every block) and what they are (CAP readouts
            and prototypes, or a layer-local peer's auxiliary heads).
        pattern_width: width of every block's CAP vector (the paper's 1024).
        readout_norm: ``batchnorm`` | ``layernorm`` | ``none``.
        head: ``cosine`` (eq. 7) | ``template`` (Algorithm 1).
        temperature: tau of the cosine head.
        peer_options: options of a layer-local peer's readouts (``dim_in_decoder``, ``aux_convs``,
            ``aux_mlp_layers``, ``aux_width``) and ``beta`` (predsim's weight of sim).
        ff_options: options of Forward-Forward (mode ``ff``; :class:`capsmm.ff.ForwardForward`).
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
        peer_options: Mapping[str, Any] | None = None,
        ff_options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if not encoders:
            raise ConfigError("a CAPModel needs at least one encoder")
        self._mode = check_mode(mode)
        self.family = mode_spec(mode).family
        if self.family not in CAP_FAMILIES and len(encoders) > 1:
            raise ConfigError(f"mode {mode} (a layer-local peer) trains single-encoder models")
        self.num_classes = num_classes
        self.peer_options = dict(peer_options or {})
        self.beta = float(self.peer_options.pop("beta", 0.99))
        self.encoders = nn.ModuleDict({name: encoders[name] for name in sorted(encoders)})
        self.in_shapes = {name: tuple(in_shapes[name]) for name in self.encoders}
        #: Forward-Forward's classifier and statistics (mode ``ff``), else None
        self.ff = self._forward_forward(dict(ff_options or {})) if self.family == "ff" else None
        self.pattern_width, self.readout_norm = pattern_width, readout_norm
        self.readouts = nn.ModuleDict()
        #: modality -> indices of the blocks that have a readout
        self.read_blocks: dict[str, tuple[int, ...]] = {}
        #: modality -> block -> width of its pattern
        self.pattern_widths: dict[str, dict[int, int]] = {}
        #: modality -> indices of its slices in the prototype head
        self.slices: dict[str, tuple[int, ...]] = {}
        #: modalities whose parameters and statistics are frozen (see :meth:`freeze`)
        self.frozen: set[str] = set()
        #: single blocks frozen the same way, as (modality, index) (class-incremental training)
        self.frozen_blocks: set[tuple[str, int]] = set()
        #: the classes that take part in the softmax (None: all); see :meth:`set_class_mask`
        self.class_mask: Tensor | None = None
        #: autocast dtype of blocks, readouts and head (``train.amp``); see :meth:`set_precision`
        self.amp = "none"
        slice_dims = [self._add_readouts(name) for name in self.encoders]
        cap = self.family in CAP_FAMILIES
        self.head = PrototypeHead(num_classes, [d for dims in slice_dims for d in dims], head, temperature) if cap else None
        offset = 0
        for name, dims in zip(self.encoders, slice_dims):
            self.slices[name] = tuple(range(offset, offset + len(dims)))
            offset += len(dims)
        #: per-modality typicality thresholds of the gated joint score (:mod:`capsmm.gate`); used in
        #: eval mode when ``gated`` is on and several modalities are present (cosine head only)
        several = cap and head == "cosine" and len(self.encoders) > 1
        self.gate = ModalityGate({name: sum(self.pattern_widths[name].values()) for name in self.encoders}, num_classes) if several else None
        self.gated = False
        #: in training, also score each present modality's slices alone (:attr:`CAPOutput.modality_logits`);
        #: set by :func:`capsmm.balance.attach_balance`
        self.score_modalities = False
        #: weight of the per-modality slice losses (``multimodal.slice_loss_weight``; 0: off)
        self.slice_loss_weight = 0.0

    def _forward_forward(self, options: dict[str, Any]) -> ForwardForward:
        """Turn the encoder's blocks into FF layers (the reference's initialisation, each block's input
        length-normalised) and build FF's other parts (:mod:`capsmm.ff`)."""
        (name, encoder), = self.encoders.items()
        shapes = encoder.block_shapes(self.in_shapes[name])
        if any(len(shape) != 1 for shape in shapes):
            raise ConfigError(f"mode ff trains backbones of vector blocks (mlp): the label is written over the first input values, "
                              f"which a convolution would read as image; this backbone's blocks give {shapes}")
        init_ff_layers(encoder.blocks)
        encoder.blocks = nn.ModuleList(nn.Sequential(LengthNorm(), block) for block in encoder.blocks)
        return ForwardForward([shape[0] for shape in shapes], self.num_classes, **options)

    def _add_readouts(self, name: str) -> list[int]:
        """Build the readouts of encoder ``name``; returns the widths of its patterns."""
        shapes = self.encoders[name].block_shapes(self.in_shapes[name])
        read = tuple(range(len(shapes))) if mode_spec(self._mode).reads_all else (len(shapes) - 1,)
        self.read_blocks[name] = read
        if self.family in CAP_FAMILIES:
            readouts = [CAPReadout(shapes[i], self.pattern_width, self.readout_norm) for i in read]
            widths = [readout.width for readout in readouts]
        elif self.family == "ff":  # an FF layer's pattern: its activity, length-normalised
            readouts, widths = [LengthNorm() for _ in read], [shapes[i][0] for i in read]
        else:
            readouts = [PeerReadout(self.family, shapes[i], self.num_classes, last=i == len(shapes) - 1, **self.peer_options) for i in read]
            widths = [readout.width for readout in readouts]
        self.readouts[name] = nn.ModuleList(readouts)
        self.pattern_widths[name] = dict(zip(read, widths))
        return list(self.pattern_widths[name].values())

    def add_modality(self, name: str, encoder: CAPEncoder, in_shape: Sequence[int]) -> None:
        """Append an encoder, its readouts and its prototype slice to a (trained) model.

        Together with :meth:`freeze` this adds a modality without touching what exists: the old
        modalities' scores read only their own slices, so their predictions stay bit-identical.
        """
        if name in self.encoders:
            raise ConfigError(f"the model already has a '{name}' encoder")
        if self.head is None:
            raise ConfigError(f"a {self._mode} model (a layer-local peer) has one encoder; modalities are added to CAP models")
        device = next(self.parameters()).device
        self.encoders[name] = encoder.to(device)
        self.in_shapes[name] = tuple(in_shape)
        dims = self._add_readouts(name)
        self.readouts[name].to(device)
        self.slices[name] = tuple(self.head.add_slices(dims))
        self.head.chunks[-1].data = self.head.chunks[-1].data.to(device)
        if self.head.kind == "cosine":
            if self.gate is None:
                old = [n for n in self.encoders if n != name]
                self.gate = ModalityGate({n: sum(self.pattern_widths[n].values()) for n in old}, self.num_classes).to(device)
            self.gate.add(name, sum(self.pattern_widths[name].values()))

    def freeze(self, modalities: Sequence[str] | None = None) -> None:
        """Stop training these modalities (default: all present): no gradient, and their batch-norm
        statistics stay fixed (their modules stay in eval mode), prototypes included."""
        names = list(self.encoders) if modalities is None else list(modalities)
        for name in names:
            for module in (self.encoders[name], self.readouts[name]):
                module.requires_grad_(False)
            for index in self.slices[name] if self.head is not None else ():
                self._chunk_of(index).requires_grad_(False)
        self.frozen |= set(names)
        self.train(self.training)

    def _chunk_of(self, slice_index: int) -> nn.Parameter:
        start = 0
        for chunk in self.head.chunks:
            width = chunk.shape[1]
            if self.head.offsets[slice_index] < start + width:
                if self.head.offsets[slice_index] + self.head.slice_dims[slice_index] > start + width:
                    raise ConfigError("a modality's slices must lie in one prototype chunk to be frozen")
                return chunk
            start += width
        raise IndexError(slice_index)

    def train(self, mode: bool = True) -> "CAPModel":
        super().train(mode)
        for name in self.frozen:
            self.encoders[name].eval()
            self.readouts[name].eval()
        for name, index in self.frozen_blocks:
            self.encoders[name].blocks[index].eval()
        return self

    def set_class_mask(self, classes: Sequence[int] | None) -> None:
        """Score only these classes (the others' logits are -inf: out of the softmax, their prototypes
        untouched); None scores every class. Class-incremental training grows it task by task."""
        if classes is None:
            self.class_mask = None
            return
        mask = torch.zeros(self.num_classes, dtype=torch.bool)
        mask[list(classes)] = True
        self.class_mask = mask

    @property
    def mode(self) -> str:
        return self._mode

    def set_mode(self, mode: str) -> None:
        """Switch the training mode (e.g. ``caps`` -> ``caps-full``); only within one head family."""
        if not same_family(self._mode, mode):
            raise ConfigError(f"cannot switch a '{self._mode}' model to '{mode}': they need different heads")
        self._mode = mode

    def set_precision(self, amp: str) -> None:
        """Run blocks, readouts and the head under autocast to ``amp`` (``none`` or ``bf16``)."""
        if amp not in AMP_DTYPES:
            raise ConfigError(f"unknown train.amp '{amp}'; valid: {', '.join(AMP_DTYPES)}")
        self.amp = amp

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager[Any]:
        """The autocast context every block, readout and head computation runs in."""
        dtype = AMP_DTYPES[self.amp]
        return contextlib.nullcontext() if dtype is None else torch.autocast(device_type=device.type, dtype=dtype)

    @property
    def cuts(self) -> bool:
        """Whether the current mode cuts the gradient between blocks."""
        return self._mode in DETACHED_MODES

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

    def read(self, modality: str, index: int, activation: Tensor) -> Tensor | None:
        """Block ``index``'s pattern from its activation: its readout under the model's autocast (None
        for a block without readout)."""
        readouts = self.block_readouts(modality)
        if index not in readouts:
            return None
        with self.autocast(activation.device):
            return readouts[index](self.encoders[modality].to_channels_first(activation))

    def iter_blocks(self, inputs: Tensor | Mapping[str, Tensor], *, start: int = 0, stop: int | None = None,
                    cut: bool | None = None, read: bool = True) -> Iterator[BlockPass]:
        """The one way capsmm runs a model's blocks: each modality's blocks ``start`` .. ``stop - 1``
        (``inputs`` holds what enters block ``start``), in pattern order, each block and its readout
        (:meth:`read`; not with ``read=False``: lean recomputation runs a readout apart from its
        block) under the model's autocast, its input cut off from earlier blocks when the mode cuts
        (``cut`` overrides the mode: the diagnostics compare both)."""
        cut = self.cuts if cut is None else cut
        for name, x in self.as_inputs(inputs).items():
            encoder = self.encoders[name]
            slices = dict(zip(self.read_blocks[name], self.slices[name]))
            device = x.device
            context = lambda: self.autocast(device)  # noqa: E731
            for index, block_input, activation in encoder.iter_blocks(x, cut=cut, start=start, stop=stop, context=context):
                pattern = self.read(name, index, activation) if read else None
                yield BlockPass(name, index, block_input, activation, pattern, slices.get(index))

    def score(self, patterns: Sequence[Tensor], slices: Sequence[int], constant: Mapping[str, Tensor] | None = None) -> CAPOutput:
        """Head scores of ``patterns`` filling prototype ``slices``: global, or per block in ``local``;
        for a layer-local peer, the patterns taken apart and the last block's prediction. Classes
        outside :attr:`class_mask` score -inf.

        The head runs under the model's autocast; logits of a lower-precision autocast come back in
        float32, so the loss is computed in full precision whatever the autocast dtype. ``constant``:
        per modality, (B,) True where the sample's input is constant (:func:`capsmm.gate.constant_samples`).
        """
        output = self._score(patterns, slices, constant or {})
        if self.class_mask is None:
            return output
        hidden = ~self.class_mask.to(output.logits.device)
        mask = lambda logits: logits.masked_fill(hidden, float("-inf"))  # noqa: E731
        return output._replace(logits=mask(output.logits),
                               block_logits=None if output.block_logits is None else [mask(b) for b in output.block_logits],
                               modality_logits=None if output.modality_logits is None else
                               {name: mask(logits) for name, logits in output.modality_logits.items()})

    def _score(self, patterns: Sequence[Tensor], slices: Sequence[int], constant: Mapping[str, Tensor]) -> CAPOutput:
        upcast = (lambda t: t.float()) if self.amp != "none" else (lambda t: t)
        if self.head is None:
            readouts = [r for name in self.encoders for r in self.readouts[name]]
            parts = [readouts[s].split(upcast(p)) for p, s in zip(patterns, slices)]
            logits = parts[-1].get("output", parts[-1].get("pred"))
            return CAPOutput(logits, list(patterns), [part["pred"] for part in parts if "pred" in part], parts,
                             (self.family, self.num_classes, self.beta))
        with self.autocast(patterns[0].device):
            if self._mode == "local":
                block_logits = [upcast(self.head([p], [s])) for p, s in zip(patterns, slices)]
                return CAPOutput(block_logits[-1], list(patterns), block_logits)
            logits = upcast(self.head(patterns, slices))
        owner = {s: name for name, owned in self.slices.items() for s in owned}
        names = tuple(dict.fromkeys(owner[s] for s in slices))
        groups = [[i for i, s in enumerate(slices) if owner[s] == n] for n in names]
        balance: dict[str, Any] = {}
        if self.score_modalities and self.training and len(names) > 1:
            with self.autocast(patterns[0].device):
                own = {n: upcast(self.head([patterns[i] for i in g], [slices[i] for i in g])) for n, g in zip(names, groups)}
            balance = {"modality_logits": own, "slice_loss_weight": self.slice_loss_weight}
        if self.head.kind != "cosine" or len(names) < 2 or self.gate is None:
            return CAPOutput(logits, list(patterns), **balance)
        typical = torch.stack([self.gate.typicality(n, torch.cat([patterns[i] for i in g], dim=1)) for n, g in zip(names, groups)])
        for row, name in enumerate(names):
            if name in constant:
                typical[row] = typical[row].masked_fill(constant[name].to(typical.device), CONSTANT_INPUT)
        if self.gated and not self.training:
            terms = modality_terms(self.head, patterns, slices, groups)
            logits = gated_cosine(*terms, self.gate.gates(names, typical), self.head.temperature)
        return CAPOutput(logits, list(patterns), modalities=names, typicality=typical, **balance)

    def forward(self, inputs: Tensor | Mapping[str, Tensor], labels: Tensor | None = None) -> CAPOutput:
        """The scores of ``inputs``. ``labels``, the batch's classes, are read only by a mode whose
        training input carries the label (``ff``), and only in training mode."""
        if self.ff is not None:
            return self._ff_output(next(iter(self.as_inputs(inputs).values())), labels)
        read = [(p.pattern, p.slice) for p in self.iter_blocks(inputs) if p.pattern is not None]
        return self.score([p for p, _ in read], [s for _, s in read], constant_samples(inputs))

    def parameter_groups(self, params: Sequence[nn.Parameter]) -> list[dict[str, Any]]:
        """The optimiser's parameter groups over ``params`` (the trainable ones): one, but Forward-Forward's
        classifier has its own learning rate and weight decay (the reference's)."""
        if self.ff is None:
            return [{"params": list(params)}]
        own = {id(p) for p in self.ff.classifier.parameters()}
        groups = [{"params": [p for p in params if id(p) not in own]},
                  {"params": [p for p in params if id(p) in own], "lr": self.ff.classifier_lr, "weight_decay": self.ff.classifier_weight_decay}]
        return [group for group in groups if group["params"]]

    def _ff_output(self, x: Tensor, labels: Tensor | None) -> CAPOutput:
        """Forward-Forward: in training (with the gradient on) the classifier's logits and each layer's
        goodness and peer loss (what :func:`capsmm.ff.ff_loss` needs); else the model's predictor's scores."""
        if self.training and torch.is_grad_enabled():
            if labels is None:
                raise ConfigError("a Forward-Forward model trains on its batch's labels (written into its input): call model(x, labels)")
            logits, parts = self.ff.train_outputs(self._passes, x, labels)
            return CAPOutput(logits, [], parts=parts, peer=("ff", self.num_classes, self.ff.peer_norm))
        logits, patterns = self.ff.scores(self._passes, x)
        return CAPOutput(logits, patterns)

    def _passes(self, x: Tensor, read: bool = True) -> list[BlockPass]:
        return list(self.iter_blocks(x, read=read))

    def ff_scores(self, inputs: Tensor | Mapping[str, Tensor], predictor: str) -> Tensor:
        """Forward-Forward's (B, C) scores by ``predictor`` (``linear`` or ``goodness``), whichever the model predicts with."""
        if self.ff is None:
            raise ConfigError(f"a {self._mode} model has no Forward-Forward predictors")
        return self.ff.scores(self._passes, next(iter(self.as_inputs(inputs).values())), predictor)[0]


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
    peer_options: Mapping[str, Any] | None = None,
    ff_options: Mapping[str, Any] | None = None,
    **encoder_options: object,
) -> CAPModel:
    """Build a single-encoder CAP model.

    Args:
        backbone: a registered encoder name (``mlp``, ``vgg6`` ... ``vgg19``, or your own).
        num_classes: number of classes.
        in_shape: per-sample input shape, e.g. ``(1, 28, 28)``.
        mode: a mode (``bp``, ``caps``, ``caps-full``, ``local``, a layer-local peer's), or the first of a schedule.
        pattern_width, readout_norm, head, temperature, peer_options, ff_options: see :class:`CAPModel`.
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
        peer_options=peer_options,
        ff_options=ff_options,
    )
