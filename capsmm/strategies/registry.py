"""The two registries of strategies: how one process computes gradients (``train.memory``) and how
ranks share the work under torchrun (``train.parallel``)."""

from __future__ import annotations

from typing import Any

from ..registry import Registry

#: ``train.memory`` value -> a :class:`~capsmm.strategies.base.LocalStrategy` class
MEMORY: Registry[Any] = Registry("train.memory strategy", builtin_modules=("capsmm.strategies.plain", "capsmm.strategies.lean"))
#: ``train.parallel`` value -> a strategy class wrapping the local one across ranks
PARALLEL: Registry[Any] = Registry("train.parallel strategy",
                                   builtin_modules=("capsmm.strategies.data_parallel", "capsmm.strategies.block_parallel"))
