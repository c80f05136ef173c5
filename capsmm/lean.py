"""Memory-lean exact CAPs: the gradients of ``caps`` (or ``local``) holding one block's graph at a time.

The CAPs objective needs from each block only its small pattern m_i, and with the stop-gradient a
block's parameters receive gradient only through m_i. So the step can be split:

1. forward without autograd, keeping each block's *input* (and the RNG state its dropout used);
2. the global loss on the patterns as leaves: one backward gives the head's gradients and dL/dm_i;
3. block by block, deepest first: recompute the block with autograd from its kept input (same
   dropout mask), backpropagate dL/dm_i through it alone, free it and its input.

The parameter gradients equal plain ``caps`` gradients (same operations, same masks). Batch-norm
running statistics are updated once, in step 1: each recomputation restores them afterwards.
Peak activation memory is about the largest single block's forward-and-backward working set
(``scripts/bench.py`` prints it as the lean floor), instead of every block's graph at once.

The price is a second forward of every recomputed block. ``keep_last`` trades some memory back:
the last N blocks of each encoder run with autograd in step 1 and keep their graphs (no
recomputation). In conv backbones those deep blocks hold little activation memory (low resolution)
but much of the compute, and their graphs are freed (backpropagated first) before the large early
blocks are recomputed, so the peak hardly moves while the step gets faster.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .errors import ConfigError
from .model import CAPModel, CAPOutput
from .modes import DETACHED_MODES


def _rng_state(device: torch.device) -> Tensor:
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()


def _set_rng_state(device: torch.device, state: Tensor) -> None:
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    else:
        torch.set_rng_state(state)


@contextmanager
def batchnorm_stats_frozen(*modules: nn.Module) -> Iterator[None]:
    """Run a forward in training mode without changing any batch-norm running statistics."""
    norms = [m for module in modules for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [[b.clone() for b in norm.buffers()] for norm in norms]
    try:
        yield
    finally:
        with torch.no_grad():
            for norm, buffers in zip(norms, saved):
                for live, old in zip(norm.buffers(), buffers):
                    live.copy_(old)


@dataclass
class _KeptBlock:
    block: nn.Module
    readout: nn.Module
    encoder: nn.Module
    input: Tensor
    rng: Tensor

    def pattern(self) -> Tensor:
        return self.readout(self.encoder.to_channels_first(self.block(self.input)))


@dataclass
class LeanState:
    """What :func:`lean_forward` keeps for :func:`lean_backward`: blocks to recompute, each with the
    leaf standing for its pattern, and the (pattern, leaf) pairs of blocks that kept their graphs."""

    recompute: list[tuple[_KeptBlock, Tensor]] = field(default_factory=list)
    graphs: list[tuple[Tensor, Tensor]] = field(default_factory=list)
    device: torch.device = torch.device("cpu")


def lean_forward(model: CAPModel, inputs: Tensor | Mapping[str, Tensor], keep_last: int = 0) -> tuple[CAPOutput, LeanState]:
    """Step 1 and the head of step 2: the model's output, with patterns as autograd leaves.

    ``keep_last``: the last N blocks of each encoder keep their autograd graphs instead of being
    recomputed (0: every block is recomputed, the least memory).
    """
    if model.mode not in DETACHED_MODES:
        raise ConfigError(f"memory-lean training needs a detached mode (caps or local), not '{model.mode}'")
    if keep_last < 0:
        raise ConfigError(f"keep_last (train.lean_keep) must be >= 0, got {keep_last}")
    state = LeanState()
    leaves: list[Tensor] = []
    slices: list[int] = []
    for name, x in model.as_inputs(inputs).items():
        state.device = x.device
        readouts, encoder = model.block_readouts(name), model.encoders[name]
        first_kept = len(encoder.blocks) - keep_last
        for index, block in enumerate(encoder.blocks):
            x = x.detach()
            if index >= first_kept:
                activation = block(x)
                pattern = readouts[index](encoder.to_channels_first(activation))
                leaf = pattern.detach().requires_grad_()
                state.graphs.append((pattern, leaf))
            else:
                kept = _KeptBlock(block, readouts[index], encoder, x, _rng_state(x.device))
                with torch.no_grad():
                    activation = block(x)
                    leaf = readouts[index](encoder.to_channels_first(activation)).requires_grad_()
                state.recompute.append((kept, leaf))
            leaves.append(leaf)
            x = activation
        slices.extend(model.slices[name])
    return model.score(leaves, slices), state


def lean_backward(loss: Tensor, state: LeanState) -> None:
    """Step 2's backward (head gradients, dL/dm_i), then the blocks that kept their graphs (freeing
    them), then step 3: each recomputed block, one at a time, from the deepest to the first. The
    order changes no gradient (each block needs only its own dL/dm_i); deepest first frees each kept
    input as soon as possible, so when the first block (the largest graph, in conv backbones) is
    recomputed, no other block's input is still held."""
    loss.backward()
    while state.graphs:
        pattern, leaf = state.graphs.pop()
        pattern.backward(leaf.grad)
        del pattern, leaf
    resume_rng = _rng_state(state.device)
    try:
        while state.recompute:
            kept, leaf = state.recompute.pop()  # deepest first: each block's input is freed with it
            _set_rng_state(state.device, kept.rng)
            with batchnorm_stats_frozen(kept.block, kept.readout):  # restored after the backward that reads them
                pattern = kept.pattern()
                pattern.backward(leaf.grad)
            del kept, leaf, pattern
    finally:
        _set_rng_state(state.device, resume_rng)
