"""Block-parallel training on torch.distributed: a backbone's blocks spread over ranks.

Rank r holds a contiguous run of blocks and their readouts; the last rank also holds the
prototypes. For every micro-batch, rank r runs its blocks on the activation it receives, sends
its output activation on (forward only), and sends its patterns m_i to the last rank, which
computes the loss and returns dL/dm_i to each owner; every rank then backpropagates dL/dm_i
through its own blocks and steps its own optimiser. No activation gradient ever crosses ranks:
each block only ever needs the small message dL/dm_i (batch x pattern width). This holds for
every mode that cuts the gradient between blocks (``caps``, ``local``, the layer-local peers).

For comparison, ``bp`` runs the same placement as a pipeline (:class:`PipelineBP`): it must send
activation gradients back across every boundary.

Sends are non-blocking, so with several micro-batches rank r works on micro-batch k+1 while
rank r+1 works on k (the pipeline fills, then drains). Batch norm inside a micro-batch sees that
micro-batch's statistics only, as in any micro-batched pipeline: with ``train.micro_batches`` > 1
and batch norm anywhere (VGG blocks, batch-norm readouts) the step differs from one process' step
on the whole batch (README, "Strategies and their combinations", gives the measured distance).
Tensors travel in float32 whatever the autocast dtype.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..distributed import DistContext, communicate, gather_to_main
from ..errors import ConfigError
from ..profiling import PhaseTimer, phase_of
from ..model import BlockPass, CAPModel, CAPOutput
from ..modes import DETACHED_MODES, LABELLED_INPUT_MODES
from ..objectives import training_loss
from .base import Inputs, LocalStrategy, Setup, StepOutput, Strategy, single_process_only
from .registry import PARALLEL


def split_blocks(n_blocks: int, world: int) -> list[range]:
    """Contiguous runs of blocks, as even as possible, one per rank (earlier ranks take the extra)."""
    if world > n_blocks:
        raise ConfigError(f"{world} ranks but only {n_blocks} blocks: each rank needs at least one block")
    base, extra = divmod(n_blocks, world)
    starts = [sum(base + (1 if r < extra else 0) for r in range(rank)) for rank in range(world + 1)]
    return [range(starts[r], starts[r + 1]) for r in range(world)]


def micro_batch_count(samples: int, micro_batches: int) -> int:
    """How many micro-batches a batch of ``samples`` is cut into: at most ``micro_batches``, and few
    enough that each holds at least 2 samples (one when the batch itself is a single sample)."""
    return max(1, min(micro_batches, samples // 2))


@dataclass
class Traffic:
    """Bytes this rank sent, by kind."""

    activations: int = 0
    patterns: int = 0
    pattern_grads: int = 0
    activation_grads: int = 0

    @property
    def total(self) -> int:
        return self.activations + self.patterns + self.pattern_grads + self.activation_grads


@PARALLEL.register("blocks")
class BlockParallel(Strategy):
    """One rank's share of a block-parallel model in a mode that cuts every block (module docstring).

    Build the same model (same seed) on every rank; each rank trains only its own blocks, their
    readouts and, on the last rank, the prototypes. ``BlockParallel.wrap`` picks
    :class:`PipelineBP` for ``bp`` models.
    """

    holds_model = False

    def __init__(self, local: LocalStrategy, dist_context: DistContext) -> None:
        model = local.model
        if not isinstance(model, CAPModel) or len(model.encoders) != 1:
            raise ConfigError("block-parallel training takes a single-encoder model")
        self.model, self.dist = model, dist_context
        self.name = next(iter(model.encoders))
        self.encoder = model.encoders[self.name]
        self.placement = split_blocks(len(self.encoder.blocks), dist_context.world)
        self.own = self.placement[dist_context.rank]
        self.head_rank = dist_context.world - 1
        readouts = model.block_readouts(self.name)
        self.owned: list[nn.Module] = [*(self.encoder.blocks[i] for i in self.own), *(readouts[i] for i in self.own if i in readouts)]
        if dist_context.rank == self.head_rank and model.head is not None:
            self.owned.append(model.head)
        self.output_shapes = _block_output_shapes(model, self.name)
        self.traffic = Traffic()
        self.pending: list[tuple[Any, Tensor]] = []
        super().__init__(model, local.train_config, local.device, dist_context)

    @classmethod
    def wrap(cls, local: LocalStrategy, dist_context: DistContext) -> Strategy:
        return (PipelineBP if local.model.mode == "bp" else BlockParallel)(local, dist_context)

    @classmethod
    def refusal(cls, setup: Setup) -> str | None:
        modes = set(setup.modes)
        if modes & LABELLED_INPUT_MODES:
            return single_process_only()
        if not (modes <= DETACHED_MODES or modes == {"bp"}):
            return (f"train.parallel=blocks trains a mode that cuts every block (caps, local, a layer-local peer; block-parallel) or bp "
                    f"(a pipeline); "
                    f"train.mode has {', '.join(setup.modes)}")
        if setup.encoders != 1 or setup.fusion not in ("single", "joint"):
            return "train.parallel=blocks splits the blocks of one encoder; a model with several encoders trains with train.parallel=data"
        if setup.memory != "standard":
            return "train.parallel=blocks runs with train.memory=standard (each rank already holds only its own blocks' graphs)"
        if setup.compile:
            return "train.compile is not available with train.parallel=blocks"
        if setup.sync_batchnorm:
            return "train.sync_batchnorm pools batch statistics over data-parallel replicas; block-parallel ranks hold different blocks"
        if setup.micro_batches > max(1, setup.batch_size // 2):
            return (f"train.micro_batches ({setup.micro_batches}) must be at most half train.batch_size ({setup.batch_size}): "
                    "every micro-batch needs 2 samples (batch norm can't normalise one)")
        return None

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for module in self.owned for p in module.parameters() if p.requires_grad]

    def describe(self) -> str:
        kind = "pipeline bp" if isinstance(self, PipelineBP) else "block-parallel"
        return f"{self.device} x {self.dist.world} ranks, {kind}, {self.train_config.micro_batches} micro-batches"

    # ------------------------------------------------------------------ messages

    def owner(self, block: int) -> int:
        return next(r for r, blocks in enumerate(self.placement) if block in blocks)

    def send(self, tensor: Tensor, to: int, kind: str) -> None:
        with torch.no_grad():
            payload = tensor.float().contiguous()
        setattr(self.traffic, kind, getattr(self.traffic, kind) + payload.numel() * payload.element_size())
        self.pending.append((communicate(dist.isend, payload, to), payload))

    def recv(self, shape: Sequence[int], source: int) -> Tensor:
        buffer = torch.empty(*shape, device=self.device)
        communicate(dist.recv, buffer, source)
        return buffer

    def recv_input(self, batch: int) -> Tensor:
        """The activation the previous rank sends into this rank's first block."""
        return self.recv((batch, *self.output_shapes[self.own.start - 1]), self.dist.rank - 1)

    def flush(self) -> None:
        for work, _ in self.pending:
            communicate(work.wait)
        self.pending.clear()

    # ------------------------------------------------------------------ computation

    def run_own_blocks(self, x: Tensor) -> tuple[Tensor, list[BlockPass]]:
        """This rank's blocks on ``x``: the last activation and the passes of blocks with a readout."""
        passes = list(self.model.iter_blocks({self.name: x}, start=self.own.start, stop=self.own.stop))
        return passes[-1].activation, [p for p in passes if p.pattern is not None]

    def head_output(self, own: list[BlockPass], batch: int) -> tuple[CAPOutput, list[tuple[int, Tensor]]]:
        """On the head rank: the model's output from every block's pattern (its own, and the others'
        as received, as leaves when gradients are on), and those leaves by block."""
        mine = {p.index: p.pattern for p in own}
        patterns, leaves = [], []
        for block in self.model.read_blocks[self.name]:
            if block in mine:
                patterns.append(mine[block])
            else:
                leaf = self.recv((batch, self.model.pattern_widths[self.name][block]), self.owner(block)).requires_grad_(torch.is_grad_enabled())
                leaves.append((block, leaf))
                patterns.append(leaf)
        return self.model.score(patterns, list(self.model.slices[self.name])), leaves

    def pass_on(self, out: Tensor, own: list[BlockPass]) -> None:
        """Send this rank's output activation to the next rank and, off the head rank, its patterns to the head."""
        if self.dist.rank < self.dist.world - 1:
            self.send(out, self.dist.rank + 1, "activations")
        if self.dist.rank != self.head_rank:
            for p in own:
                self.send(p.pattern, self.head_rank, "patterns")

    def chunks(self, images: Tensor, labels: Tensor) -> list[tuple[Tensor, Tensor, float]]:
        """(inputs, labels, share of the batch) per micro-batch: ``train.micro_batches`` pieces as even
        as possible, fewer when the batch is too small for every piece to hold 2 samples.

        Why: batch norm can't normalise one sample in training mode, and an epoch's last batch can be
        small (1437 samples in batches of 64 end with 29; ``chunk(8)`` would cut it 7 x 4 + 1). The
        loss of each piece is weighted by its share, so the batch's gradient does not depend on the split.
        """
        pieces = micro_batch_count(len(labels), self.train_config.micro_batches)
        return [(x, y, len(y) / len(labels)) for x, y in zip(images.tensor_split(pieces), labels.tensor_split(pieces))]

    def head_backward(self, own: list[BlockPass], labels: Tensor, share: float, reported: list[tuple[Tensor, Tensor]]) -> list[tuple[int, Tensor]]:
        """On the head rank: the micro-batch's loss (weighted by its ``share`` of the batch) and its
        backward through the head and this rank's blocks; appends (loss, logits) to ``reported`` and
        returns the received patterns' leaves, which now hold dL/dm_i."""
        output, leaves = self.head_output(own, len(labels))
        loss = training_loss(output, labels) * share
        loss.backward()
        reported.append(StepOutput.reported(loss, output.logits))
        return leaves

    @staticmethod
    def batch_report(reported: list[tuple[Tensor, Tensor]]) -> tuple[Tensor | None, Tensor | None]:
        """The whole batch's loss and logits from the micro-batches' (on the head rank; None elsewhere)."""
        if not reported:
            return None, None
        return torch.stack([loss for loss, _ in reported]).sum(), torch.cat([logits for _, logits in reported])

    def backward(self, images: Tensor, labels: Tensor) -> tuple[Tensor | None, Tensor | None]:
        """Forward and backward of one batch (every rank passes the same batch); gradients land in
        this rank's parameters. Returns the loss and logits on the head rank, (None, None) elsewhere."""
        rank = self.dist.rank
        waiting, reported = [], []
        for x, y, share in self.chunks(images, labels):
            if rank > 0:
                x = self.recv_input(len(y))
            out, own = self.run_own_blocks(x)
            self.pass_on(out, own)
            if rank == self.head_rank:
                for block, leaf in self.head_backward(own, y, share, reported):
                    self.send(leaf.grad, self.owner(block), "pattern_grads")
            else:
                waiting.append(own)
        for own in waiting:  # drain: each micro-batch's dL/dm_i as the head rank returns them
            grads = [self.recv(p.pattern.shape, self.head_rank) for p in own]
            torch.autograd.backward([p.pattern for p in own], [g.to(p.pattern.dtype) for g, p in zip(grads, own)])
        self.flush()
        return self.batch_report(reported)

    def step(self, inputs: Inputs, labels: Tensor, timer: PhaseTimer | None = None) -> StepOutput:
        """:meth:`backward` on one batch, then this rank's optimiser step on its own parameters. Timed
        as phases ``backward`` (the forward included: they interleave across ranks) and ``optimizer``."""
        phase = phase_of(timer)
        self.optimizer.zero_grad(set_to_none=True)
        with phase("backward"):
            loss, logits = self.backward(self.prepare(inputs), labels)
        with phase("optimizer"):
            self.optimizer.step()
        return StepOutput(loss, logits)

    @torch.no_grad()
    def predict(self, inputs: Inputs) -> Tensor | None:
        """Forward only, through the ranks: the logits on the head rank, None elsewhere."""
        images = self.prepare(inputs)
        x = images if self.dist.rank == 0 else self.recv_input(len(images))
        out, own = self.run_own_blocks(x)
        self.pass_on(out, own)
        logits = self.head_output(own, len(images))[0].logits if self.dist.rank == self.head_rank else None
        self.flush()
        return logits

    def own_state(self) -> dict[str, Tensor]:
        """This rank's part of the model's state dict (its blocks, readouts and, on the head rank, prototypes)."""
        owned = {id(t) for module in self.owned for t in [*module.parameters(), *module.buffers()]}
        named = dict([*self.model.named_parameters(), *self.model.named_buffers()])
        state = self.model.state_dict()
        return {name: state[name] for name, t in named.items() if id(t) in owned}

    def state_dict(self) -> dict[str, Any]:
        """The whole model, assembled from every rank's part, and every rank's optimiser state, on
        rank 0 and on the CPU (a collective; the other ranks get an empty model and no optimiser
        state: only rank 0 writes the checkpoint)."""
        gathered = gather_to_main(self.dist, (self.own_state(), self.optimizer.state_dict())) or []
        return {"model": {name: tensor for part, _ in gathered for name, tensor in part.items()},
                "optimizer": [optimizer for _, optimizer in gathered]}


class PipelineBP(BlockParallel):
    """The same placement trained end to end with ``bp``: activation gradients flow back across ranks."""

    def backward(self, images: Tensor, labels: Tensor) -> tuple[Tensor | None, Tensor | None]:
        rank, last = self.dist.rank, self.dist.world - 1
        kept, reported = [], []
        for x, y, share in self.chunks(images, labels):
            if rank > 0:
                x = self.recv_input(len(y)).requires_grad_()
            out, own = self.run_own_blocks(x)
            if rank == last:
                self.head_backward(own, y, share, reported)
                if rank > 0:
                    self.send(x.grad, rank - 1, "activation_grads")
            else:
                self.send(out, rank + 1, "activations")
                kept.append((x, out))
        for x, out in kept:  # drain: activation gradients come back from the next rank
            out.backward(self.recv(out.shape, rank + 1).to(out.dtype))
            if rank > 0:
                self.send(x.grad, rank - 1, "activation_grads")
        self.flush()
        return self.batch_report(reported)


@torch.no_grad()
def _block_output_shapes(model: CAPModel, name: str) -> list[tuple[int, ...]]:
    """Per-sample shape of every block's output activation (what travels between ranks), by a dry run."""
    encoder = model.encoders[name]
    was_training = model.training
    model.eval()
    try:
        probe = encoder.probe_input(model.in_shapes[name], next(model.parameters()).device)
        return [tuple(p.activation.shape[1:]) for p in model.iter_blocks({name: probe})]
    finally:
        model.train(was_training)
