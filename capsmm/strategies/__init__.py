"""Training strategies: how a step turns a batch into parameter updates.

| ``train.memory`` | class | what it does |
|---|---|---|
| ``standard`` | :class:`Plain` | autograd over the whole model, one backward |
| ``lean`` | :class:`Lean` | cut modes only: one block's graph at a time, recomputed from its kept input |

| ``train.parallel`` (under torchrun) | class | what it does |
|---|---|---|
| ``data`` | :class:`DataParallel` | the local strategy on every rank's share of the global batch, gradients averaged |
| ``blocks`` | :class:`BlockParallel`, :class:`PipelineBP` | each rank trains a run of blocks; cut modes send only dL/dm_i back, bp a pipeline |

Adding one is one class in one file: subclass :class:`LocalStrategy` (a new way to compute
gradients in one process) or :class:`Strategy` (a new way to share the work across ranks),
register it with ``@MEMORY.register(name)`` or ``@PARALLEL.register(name)``, and answer
:meth:`Strategy.refusal` for the setups it can't honour; the config then accepts the name and
the trainer runs it unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

from ..distributed import DistContext
from ..errors import ConfigError
from .base import ADAM_IMPLS, OPTIMIZERS, LocalStrategy, Setup, StepOutput, Strategy, TrainSettings, make_adam, make_optimizer, prepare_inputs
from .registry import MEMORY, PARALLEL


def refusal(setup: Setup) -> str | None:
    """The first reason why the strategies ``setup`` names can't run it, or None."""
    for registry, name in ((MEMORY, setup.memory), (PARALLEL, setup.parallel)):
        reason = registry.get(name).refusal(setup)
        if reason:
            return reason
    return None


def check_setup(setup: Setup) -> None:
    """Refuse, with one line, a setup that its strategies can't honour."""
    reason = refusal(setup)
    if reason:
        raise ConfigError(reason)


def build_strategy(model: nn.Module, train: TrainSettings, device: torch.device, dist: DistContext = DistContext()) -> Strategy:
    """The strategy the ``train`` section asks for: the ``train.memory`` one in this process, wrapped
    by the ``train.parallel`` one when torchrun launched several ranks."""
    local = MEMORY.get(train.memory)(model.to(device), train, device, dist)
    return PARALLEL.get(train.parallel).wrap(local, dist) if dist.enabled else local

__all__ = ["ADAM_IMPLS", "MEMORY", "PARALLEL", "LocalStrategy", "Setup", "StepOutput", "Strategy", "TrainSettings", "build_strategy", "check_setup",
           "make_adam", "make_optimizer", "OPTIMIZERS", "prepare_inputs", "refusal"]
