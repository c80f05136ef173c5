"""Memory-lean exact CAPs: the gradients of ``caps`` (or ``local``) holding one block's graph at a time.

The CAPs objective needs from each block only its small pattern m_i, and with the stop-gradient a
block's parameters receive gradient only through m_i. So the step can be split:

1. forward without autograd, keeping each block's *input* (and the RNG state its dropout used);
2. the global loss on the patterns as leaves: one backward gives the head's gradients and dL/dm_i;
3. block by block: recompute the block with autograd from its kept input (same dropout mask),
   backpropagate dL/dm_i through it alone, free it.

The parameter gradients equal plain ``caps`` gradients (same operations, same masks). Batch-norm
running statistics are updated once, in step 1: each recomputation restores them afterwards.
Peak activation memory is one activation per block plus one block's autograd graph, instead of
every block's graph at once.
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
    """What :func:`lean_forward` keeps for :func:`lean_backward`."""

    kept: list[_KeptBlock] = field(default_factory=list)
    leaves: list[Tensor] = field(default_factory=list)
    device: torch.device = torch.device("cpu")


def lean_forward(model: CAPModel, inputs: Tensor | Mapping[str, Tensor]) -> tuple[CAPOutput, LeanState]:
    """Step 1 and the head of step 2: the model's output, with patterns as autograd leaves."""
    if model.mode not in DETACHED_MODES:
        raise ConfigError(f"memory-lean training needs a detached mode (caps or local), not '{model.mode}'")
    state = LeanState()
    slices: list[int] = []
    with torch.no_grad():
        for name, x in model.as_inputs(inputs).items():
            state.device = x.device
            readouts, encoder = model.block_readouts(name), model.encoders[name]
            for index, block in enumerate(encoder.blocks):
                kept = _KeptBlock(block, readouts[index], encoder, x, _rng_state(x.device))
                activation = block(x)
                state.kept.append(kept)
                state.leaves.append(readouts[index](encoder.to_channels_first(activation)).requires_grad_())
                x = activation
            slices.extend(model.slices[name])
    return model.score(state.leaves, slices), state


def lean_backward(loss: Tensor, state: LeanState) -> None:
    """Step 2's backward (head gradients, dL/dm_i) and step 3 (each block, one at a time)."""
    loss.backward()
    resume_rng = _rng_state(state.device)
    try:
        while state.kept:
            kept, leaf = state.kept.pop(0), state.leaves.pop(0)
            _set_rng_state(state.device, kept.rng)
            with batchnorm_stats_frozen(kept.block, kept.readout):  # restored after the backward that reads them
                pattern = kept.pattern()
                pattern.backward(leaf.grad)
            del kept, leaf, pattern
    finally:
        _set_rng_state(state.device, resume_rng)
