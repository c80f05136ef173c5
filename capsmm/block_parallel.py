"""Block-parallel CAPs on torch.distributed: a backbone's blocks spread over ranks.

Rank r holds a contiguous run of blocks and their readouts; the last rank also holds the
prototypes. For every micro-batch, rank r runs its blocks on the activation it receives, sends
its output activation on (forward only), and sends its patterns m_i to the last rank, which
computes the global loss and returns dL/dm_i to each owner; every rank then backpropagates dL/dm_i
through its own blocks and steps its own optimiser. No activation gradient ever crosses ranks:
each block only ever needs the small message dL/dm_i (batch x pattern width).

For comparison, :class:`PipelineBP` is the same placement trained end to end (bp): it must send
activation gradients back across every boundary.

Sends are non-blocking, so with several micro-batches rank r works on micro-batch k+1 while
rank r+1 works on k (the pipeline fills, then drains).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from .distributed import DistContext, communicate
from .errors import ConfigError
from .metrics import PhaseTimer, phase_of
from .model import CAPModel
from .step import make_adam


def split_blocks(n_blocks: int, world: int) -> list[range]:
    """Contiguous runs of blocks, as even as possible, one per rank (earlier ranks take the extra)."""
    if world > n_blocks:
        raise ConfigError(f"{world} ranks but only {n_blocks} blocks: each rank needs at least one block")
    base, extra = divmod(n_blocks, world)
    starts = [sum(base + (1 if r < extra else 0) for r in range(rank)) for rank in range(world + 1)]
    return [range(starts[r], starts[r + 1]) for r in range(world)]


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


class _Stage:
    """What the placement gives this rank: its blocks, readouts, shapes, optimiser; the messaging."""

    def __init__(self, model: CAPModel, context: DistContext, in_shape: Sequence[int]) -> None:
        if len(model.encoders) != 1:
            raise ConfigError("block-parallel training takes a single-encoder model")
        self.model, self.context = model, context
        self.name = next(iter(model.encoders))
        self.encoder = model.encoders[self.name]
        self.placement = split_blocks(len(self.encoder.blocks), context.world)
        self.own = self.placement[context.rank]
        self.head_rank = context.world - 1
        with torch.no_grad():
            probe = self.encoder.forward_blocks(torch.zeros(2, *in_shape, device=model.head.weight.device), detach=True)
        self.output_shapes = [tuple(a.shape[1:]) for a in probe]
        self.traffic = Traffic()
        self.pending: list = []
        self.optimizer: torch.optim.Optimizer

    def owner(self, block: int) -> int:
        return next(r for r, blocks in enumerate(self.placement) if block in blocks)

    def send(self, tensor: Tensor, to: int, kind: str) -> None:
        tensor = tensor.detach().contiguous()
        setattr(self.traffic, kind, getattr(self.traffic, kind) + tensor.numel() * tensor.element_size())
        self.pending.append((communicate(dist.isend, tensor, to), tensor))

    def recv(self, shape: Sequence[int], source: int, device: torch.device) -> Tensor:
        buffer = torch.empty(*shape, device=device)
        communicate(dist.recv, buffer, source)
        return buffer

    def recv_input(self, batch: int, device: torch.device) -> Tensor:
        """The activation the previous rank sends into this rank's first block."""
        return self.recv((batch, *self.output_shapes[self.own.start - 1]), self.context.rank - 1, device)

    def flush(self) -> None:
        for work, _ in self.pending:
            communicate(work.wait)
        self.pending.clear()

    def backward(self, images: Tensor, labels: Tensor, micro_batches: int = 1) -> float | None:
        raise NotImplementedError

    def step(self, images: Tensor, labels: Tensor, micro_batches: int = 1, timer: PhaseTimer | None = None) -> float | None:
        """:meth:`backward` on one batch (every rank passes the same batch), then this rank's optimiser
        step on its own parameters. Returns the loss on the last rank, None elsewhere. With ``timer``
        the two are timed as phases ``backward`` (forward included: they interleave) and ``step``."""
        phase = phase_of(timer)
        self.optimizer.zero_grad(set_to_none=True)
        with phase("backward"):
            loss = self.backward(images, labels, micro_batches)
        with phase("step"):
            self.optimizer.step()
        return loss


class BlockParallelCAPs(_Stage):
    """One rank's share of a block-parallel ``caps`` model (see the module docstring).

    Build the same model (same seed) on every rank; each rank trains only its own blocks, their
    readouts and, on the last rank, the prototypes.
    """

    def __init__(self, model: CAPModel, context: DistContext, in_shape: Sequence[int], lr: float = 5e-4, **adam: Any) -> None:
        if model.mode != "caps":
            raise ConfigError(f"block-parallel CAPs trains a caps model, not '{model.mode}'")
        super().__init__(model, context, in_shape)
        readouts = model.readouts[self.name]
        self.owned = [*(self.encoder.blocks[i] for i in self.own), *(readouts[i] for i in self.own)]
        if context.rank == self.head_rank:
            self.owned.append(model.head)
        self.optimizer = make_adam([p for module in self.owned for p in module.parameters()], lr=lr, **adam)
        self.last_logits: list[Tensor] = []

    def own_state(self) -> dict[str, Tensor]:
        """This rank's part of the model's state dict (its blocks, readouts and, on the last rank, head)."""
        names = {id(t): name for name, t in [*self.model.named_parameters(), *self.model.named_buffers()]}
        return {names[id(t)]: t.detach().cpu() for module in self.owned for t in [*module.parameters(), *module.buffers()]}

    @torch.no_grad()
    def predict(self, images: Tensor) -> Tensor | None:
        """Forward only, through the ranks: the logits on the last rank, None elsewhere."""
        rank, device = self.context.rank, images.device
        x = images if rank == 0 else self.recv_input(len(images), device)
        out, patterns = self._forward(x)
        if rank < self.context.world - 1:
            self.send(out, rank + 1, "activations")
        logits = None
        if rank == self.head_rank:
            logits = self.model.head(self._gather_patterns(patterns, len(images), device))
        else:
            for pattern in patterns:
                self.send(pattern, self.head_rank, "patterns")
        self.flush()
        return logits

    def _forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        readouts = self.model.readouts[self.name]
        patterns = []
        for i in self.own:
            x = self.encoder.blocks[i](x.detach())  # the stop-gradient (a received input has no graph anyway)
            patterns.append(readouts[i](self.encoder.to_channels_first(x)))
        return x, patterns

    def backward(self, images: Tensor, labels: Tensor, micro_batches: int = 1) -> float | None:
        """Forward and backward of one batch (every rank passes the same batch); gradients land in
        this rank's parameters. Returns the loss on the last rank."""
        device, rank = images.device, self.context.rank
        self.last_logits = []
        chunks = list(zip(images.chunk(micro_batches), labels.chunk(micro_batches)))
        graphs, losses = [], []
        for x, y in chunks:
            if rank > 0:
                x = self.recv_input(len(y), device)
            out, patterns = self._forward(x)
            if rank < self.context.world - 1:
                self.send(out, rank + 1, "activations")
            if rank == self.head_rank:
                loss, logits = self._global_loss(patterns, y, device, len(y) / len(labels))
                losses.append(loss)
                self.last_logits.append(logits)
            else:
                for pattern in patterns:
                    self.send(pattern, self.head_rank, "patterns")
                graphs.append(patterns)
        for patterns in graphs:  # drain: each micro-batch's dL/dm_i as the head rank returns them
            grads = [self.recv(p.shape, self.head_rank, device) for p in patterns]
            torch.autograd.backward(patterns, grads)
        self.flush()
        return float(sum(losses)) if losses else None

    def _gather_patterns(self, own_patterns: list[Tensor], batch: int, device: torch.device) -> list[Tensor]:
        """On the head rank: every block's pattern, in block order (its own, and the others' as received)."""
        width = self.model.head.slice_dims[0]
        return [own_patterns[b - self.own.start] if b in self.own else self.recv((batch, width), self.owner(b), device)
                for b in range(len(self.encoder.blocks))]

    def _global_loss(self, own_patterns: list[Tensor], labels: Tensor, device: torch.device, scale: float) -> tuple[Tensor, Tensor]:
        """On the head rank: gather every block's pattern, compute the global loss (weighted by the
        micro-batch's share of the batch), send dL/dm_i home, backpropagate its own."""
        leaves = [p.detach().requires_grad_() for p in self._gather_patterns(own_patterns, len(labels), device)]
        head_params = list(self.model.head.parameters())
        logits = self.model.head(leaves)
        loss = F.cross_entropy(logits, labels) * scale
        grads = torch.autograd.grad(loss, [*leaves, *head_params])
        for block, grad in enumerate(grads[:len(leaves)]):
            if block not in self.own:
                self.send(grad, self.owner(block), "pattern_grads")
        torch.autograd.backward(own_patterns, [grads[b] for b in self.own])
        for param, grad in zip(head_params, grads[len(leaves):]):
            param.grad = grad if param.grad is None else param.grad + grad
        return loss.detach(), logits.detach()


class PipelineBP(_Stage):
    """The same placement trained end to end with ``bp``: activation gradients flow back across ranks."""

    def __init__(self, model: CAPModel, context: DistContext, in_shape: Sequence[int], lr: float = 5e-4) -> None:
        if model.mode != "bp":
            raise ConfigError(f"pipeline bp trains a bp model, not '{model.mode}'")
        super().__init__(model, context, in_shape)
        params = [p for i in self.own for p in self.encoder.blocks[i].parameters()]
        if context.rank == context.world - 1:
            params += [*model.readouts[self.name].parameters(), *model.head.parameters()]
        self.optimizer = make_adam(params, lr=lr)

    def backward(self, images: Tensor, labels: Tensor, micro_batches: int = 1) -> float | None:
        device, rank, last = images.device, self.context.rank, self.context.world - 1
        chunks = list(zip(images.chunk(micro_batches), labels.chunk(micro_batches)))
        kept, losses = [], []
        for x, y in chunks:
            if rank > 0:
                x = self.recv_input(len(y), device).requires_grad_()
            out = x
            for i in self.own:
                out = self.encoder.blocks[i](out)
            if rank == last:
                readout = self.model.readouts[self.name][0]
                loss = F.cross_entropy(self.model.head([readout(self.encoder.to_channels_first(out))]), y) * (len(y) / len(labels))
                loss.backward()
                losses.append(loss.detach())
                if rank > 0:
                    self.send(x.grad, rank - 1, "activation_grads")
            else:
                self.send(out, rank + 1, "activations")
                kept.append((x, out))
        for x, out in kept:  # drain: activation gradients come back from the next rank
            out.backward(self.recv(out.shape, rank + 1, device))
            if rank > 0:
                self.send(x.grad, rank - 1, "activation_grads")
        self.flush()
        return float(sum(losses)) if losses else None
