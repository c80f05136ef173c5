"""Memory-lean exact CAPs: the gradients of a cut mode holding one block's graph at a time.

The CAPs objective needs from each block only its small pattern m_i, and with the stop-gradient a
block's parameters receive gradient only through m_i. So the step can be split:

1. forward without autograd, keeping each block's *input* (and the RNG state its dropout used);
2. the loss on the patterns as autograd leaves: one backward gives the head's gradients and dL/dm_i;
3. block by block, deepest first: recompute the block from its kept input (same dropout mask, same
   autocast: both come from the model's block iterator), backpropagate dL/dm_i through it alone,
   free it and its input.

The parameter gradients equal plain gradients of the same mode (same operations, same masks).
Batch-norm running statistics are updated once, in step 1: each recomputation restores them
afterwards. Blocks without trainable parameters (a frozen modality) are not recomputed. Peak
activation memory is about the largest single block's forward-and-backward working set
(``scripts/bench.py`` prints it as the lean floor), instead of every block's graph at once.

The price is a second forward of every recomputed block. ``train.lean_keep`` trades some memory
back: the last N blocks of each encoder run with autograd in step 1 and keep their graphs (no
recomputation). In conv backbones those deep blocks hold little activation memory (low resolution)
but much of the compute, and their graphs are freed by the loss' backward, before the large early
blocks are recomputed, so the peak hardly moves while the step gets faster.

**Below one block: ``train.lean_segments``.** A wide block is recomputed and backpropagated over
micro-batches (:mod:`capsmm.strategies.segments`); ``N`` splits the largest block into N and any
other block whose recomputation would exceed that share, ``auto`` splits a block only when its
whole recomputation would need more than step 1 and the loss' backward do anyway, and only as far
as that (both measured per sample when the strategy is built).
Why micro-batches and not activation checkpointing inside the block (``torch.utils.checkpoint``,
non-reentrant, over the block's layers; exact too: the same operations on the same batch, its RNG
state restored, the statistics frozen around the recomputation as here): checkpointing still runs
each layer on the whole batch, so it can't go below one layer's backward, and capsmm's conv blocks
*are* one layer: VGG11's first block is one conv at 32x32 with 64 channels, and its batch norm's
backward alone holds its input, its output gradient and its input gradient, 3 x 32 MiB at batch
128, 0.40x bp's activations for the whole network. Micro-batches divide the whole working set.
What they must keep exact, and how (float32, within the combination matrix's 1e-4):

- batch norm normalises each micro-batch with the whole batch's statistics, recorded in step 1,
  and its backward adds the whole batch's gradient through them, whose two per-channel sums take
  one pass over the micro-batches per batch norm of the block;
- dropout masks are drawn once for the whole batch from the block's RNG state, as in step 1, and
  each micro-batch reads its rows (a random operation that can't be replayed is an error);
- running statistics: updated once, in step 1, as without segments;
- the readout is not split: it runs on the block's whole-batch activation kept from step 1 (its
  input is small next to the block's working set, and layer-local peers' batch norms live in it),
  and the gradient of that activation is what the micro-batches backpropagate.

So a segmented block costs, per batch norm in it (VGG: one; a residual block: two or three), one
more forward and a backward as far as that batch norm, and the peak can go down to step 1's: the
largest forward without autograd of one block, whose batch statistics need the whole batch
(VGG11: its first conv's and batch norm's outputs, 2 x 32 MiB).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..distributed import DistContext
from ..layers import batchnorm_stats_frozen
from ..model import CAPModel, CAPOutput
from ..modes import DETACHED_MODES, LABELLED_INPUT_MODES
from ..objectives import training_loss
from ..profiling import TensorMemoryMeter
from .base import Inputs, LocalStrategy, Setup, TrainSettings
from .registry import MEMORY
from .segments import BatchStatistics, BlockMemory, Statistics, backward_in_segments, peak_bytes, segment_counts


def _rng_state(device: torch.device) -> Tensor:
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()


def _set_rng_state(device: torch.device, state: Tensor) -> None:
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    else:
        torch.set_rng_state(state)


@dataclass
class KeptBlock:
    """A block to recompute: where it is, what it read, the RNG state it ran with, its pattern leaf;
    when it is recomputed in ``segments`` micro-batches, also its ``activation`` and the whole-batch
    ``statistics`` of its batch norms, from step 1."""

    modality: str
    index: int
    input: Tensor
    rng: Tensor
    leaf: Tensor
    segments: int = 1
    activation: Tensor | None = None
    statistics: list[Statistics] = field(default_factory=list)


@MEMORY.register("lean")
class Lean(LocalStrategy):
    """Exact gradients of ``caps`` / ``local`` with one block's graph alive at a time (module docstring)."""

    @classmethod
    def refusal(cls, setup: Setup) -> str | None:
        if set(setup.modes) & LABELLED_INPUT_MODES:
            return ("train.memory=lean recomputes blocks from kept inputs, but mode ff builds its inputs from the labels in the "
                    "forward; use train.memory=standard")
        if not set(setup.modes) <= DETACHED_MODES:
            return (f"train.memory=lean needs caps, local or a layer-local peer throughout (a mode that cuts every block); "
                    f"train.mode has {', '.join(setup.modes)}")
        if setup.compile:
            return "train.compile applies to train.memory=standard only (lean recomputes blocks outside the compiled forward)"
        if setup.fusion == "late":
            return "train.memory=lean is for joint and single models, not late fusion"
        return None

    def __init__(self, model: CAPModel, train: TrainSettings, device: torch.device, dist: DistContext = DistContext()) -> None:
        super().__init__(model, train, device, dist)
        #: (modality, block index) -> micro-batches the block's recomputation is split into (absent: 1)
        self.segments: dict[tuple[str, int], int] = {} if train.lean_segments == 1 else self._segment_counts(train.lean_segments)

    def _segment_counts(self, setting: int | str) -> dict[tuple[str, int], int]:
        """Micro-batches per recomputed block (:func:`~capsmm.strategies.segments.segment_counts` says
        how), from what the blocks and the rest of a step need per sample: the difference between two
        probe batches (each encoder's :meth:`~capsmm.encoder.CAPEncoder.probe_input` 4 and 8 times
        over, large enough that what grows with the batch sets the peaks), so that the rest cancels."""
        model: CAPModel = self.model
        was_training = model.training
        devices = [self.device] if self.device.type == "cuda" else []
        self.segments = {}
        model.train()
        try:
            with batchnorm_stats_frozen(model), torch.random.fork_rng(devices=devices):
                probes = [{name: torch.cat([encoder.probe_input(model.in_shapes[name], self.device)] * copies)
                           for name, encoder in model.encoders.items()} for copies in (4, 8)]
                (small_floor, small), (large_floor, large) = (self._memory(probe) for probe in probes)
        finally:
            model.train(was_training)
            self.optimizer.zero_grad(set_to_none=True)
        samples = len(next(iter(probes[1].values()))) - len(next(iter(probes[0].values())))
        blocks = [(key, a.per_sample(b, samples)) for (key, a), (_, b) in zip(small, large)]
        return segment_counts(setting, blocks, (large_floor - small_floor) / samples)

    def _memory(self, probe: dict[str, Tensor]) -> tuple[int, list[tuple[tuple[str, int], BlockMemory]]]:
        """Bytes on the batch ``probe``: the peak of step 1 and the loss' backward (what a step needs
        whatever the split), and each block's input, output and whole recomputation (beyond its
        input), in the order step 1 runs the blocks. Parameters' gradients (the same for any batch)
        are left out."""
        model: CAPModel = self.model
        labels = torch.zeros(len(next(iter(probe.values()))), dtype=torch.long, device=self.device)
        self.optimizer.zero_grad(set_to_none=True)  # allocated within the measurement, so that they can be left out
        with TensorMemoryMeter() as meter:
            _, loss, kept = self.forward_loss(probe, labels)
            loss.backward()
            del kept
        blocks = []
        for name, inputs in probe.items():
            encoder = model.encoders[name]
            with torch.no_grad():
                passes = [(block.input, block.activation) for block in model.iter_blocks({name: inputs}, read=False)]
            for index, (x, activation) in enumerate(passes):
                def run(x: Tensor = x, index: int = index) -> Tensor:
                    return next(model.iter_blocks({name: x}, start=index, stop=index + 1, read=False)).activation

                params = [p for p in encoder.blocks[index].parameters() if p.requires_grad]
                recomputed = index < len(encoder.blocks) - self.keep_last and params
                blocks.append(((name, index), BlockMemory(x.nbytes, activation.nbytes, peak_bytes(run, params) if recomputed else None)))
        return meter.peak_without(p.grad for p in model.parameters() if p.grad is not None), blocks

    @property
    def keep_last(self) -> int:
        return self.train_config.lean_keep

    def _trainable(self, modality: str, index: int) -> bool:
        modules = [self.model.encoders[modality].blocks[index], self.model.block_readouts(modality)[index]]
        return any(p.requires_grad for module in modules for p in module.parameters())

    def forward_loss(self, inputs: Inputs, labels: Tensor) -> tuple[CAPOutput, Tensor, list[KeptBlock]]:
        """Step 1 and the head of step 2: the loss, with recomputed blocks' patterns as leaves."""
        model: CAPModel = self.model
        kept: list[KeptBlock] = []
        patterns: list[Tensor] = []
        slices: list[int] = []
        for name, x in model.as_inputs(inputs).items():
            first_kept = max(0, len(model.encoders[name].blocks) - self.keep_last)
            rng = _rng_state(x.device)
            segments = [self.segments.get((name, index), 1) for index in range(first_kept + 1)]
            statistics = BatchStatistics()  # of the blocks (not the readouts) recomputed in segments
            statistics.enabled = segments[0] > 1
            with torch.no_grad(), statistics if self.segments else contextlib.nullcontext():
                for block in model.iter_blocks({name: x}, stop=first_kept, read=False):
                    norms, statistics.enabled = statistics.take(), False
                    leaf = model.read(name, block.index, block.activation)
                    statistics.enabled = segments[block.index + 1] > 1
                    if self._trainable(name, block.index):
                        split = segments[block.index]
                        kept.append(KeptBlock(name, block.index, block.input, rng, leaf.requires_grad_(), split,
                                              block.activation if split > 1 else None, norms))
                    patterns.append(leaf)
                    slices.append(block.slice)
                    rng = _rng_state(x.device)  # blocks draw their dropout masks in the block, readouts draw none
                    x = block.activation
            for block in model.iter_blocks({name: x}, start=first_kept):  # kept graphs: the loss' backward frees them
                patterns.append(block.pattern)
                slices.append(block.slice)
        output = model.score(patterns, slices)
        return output, training_loss(output, labels), kept

    def recompute(self, kept: KeptBlock, rows: slice = slice(None), read: bool = True) -> Tensor:
        """Block ``kept`` again, with autograd, from (``rows`` of) its kept input and its RNG state: its
        pattern, or with ``read=False`` its activation."""
        _set_rng_state(kept.input.device, kept.rng)
        block = next(self.model.iter_blocks({kept.modality: kept.input[rows]}, start=kept.index, stop=kept.index + 1, read=read))
        return block.pattern if read else block.activation

    def backpropagate(self, kept: KeptBlock) -> None:
        """dL/dm of block ``kept`` into its parameters: through the recomputed block and readout, or,
        in segments, through the readout on step 1's whole-batch activation, then through the block
        recomputed by micro-batch (:func:`~capsmm.strategies.segments.backward_in_segments`)."""
        if kept.activation is None:
            self.recompute(kept).backward(kept.leaf.grad)
            return
        activation, kept.activation = kept.activation.requires_grad_(), None
        self.model.read(kept.modality, kept.index, activation).backward(kept.leaf.grad)
        grad = activation.grad
        del activation  # only its gradient is read from here on
        backward_in_segments(lambda rows: self.recompute(kept, rows, read=False), grad, kept.statistics, kept.segments)

    def backward(self, loss: Tensor, kept: list[KeptBlock]) -> None:
        """Step 2's backward (head gradients, dL/dm_i, kept graphs), then step 3: each recomputed block,
        one at a time, from the deepest to the first. The order changes no gradient (each block needs
        only its own dL/dm_i); deepest first frees each kept input as soon as possible, so when the
        first block (the largest graph, in conv backbones) is recomputed no other input is held."""
        loss.backward()
        resume_rng = _rng_state(loss.device)
        try:
            while kept:
                block = kept.pop()
                modules = (self.model.encoders[block.modality].blocks[block.index], self.model.block_readouts(block.modality)[block.index])
                with batchnorm_stats_frozen(*modules):  # restored after the backward that reads them
                    self.backpropagate(block)
                del block
        finally:
            _set_rng_state(loss.device, resume_rng)
