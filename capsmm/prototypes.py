"""Trainable class prototypes over the concatenated pattern m, and their scores.

``cosine`` (eq. 7): s_c = cos(m, mu_c) / tau.  ``template`` (Algorithm 1): s_c = m . T_c.
Scores can be taken over any subset of the pattern's blocks: the matching slices of m and of
every prototype are concatenated, so a missing block (or modality) simply drops its slice.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import ConfigError

HEADS: tuple[str, ...] = ("cosine", "template")


class PrototypeHead(nn.Module):
    """Class prototypes ``weight`` (C, D) over D = sum of the blocks' pattern widths.

    The prototypes are stored in ``chunks`` (one per group of slices added together: a modality),
    so that a trained part can be frozen while a new modality's slice is appended and trained
    (:meth:`add_slices`).
    """

    def __init__(self, num_classes: int, slice_dims: Sequence[int], kind: str = "cosine", temperature: float = 0.1) -> None:
        super().__init__()
        if kind not in HEADS:
            raise ConfigError(f"unknown head '{kind}'; valid: {', '.join(HEADS)}")
        if kind == "cosine" and not temperature > 0:
            raise ConfigError(f"temperature must be > 0 for the cosine head, got {temperature}")
        if num_classes < 2:
            raise ConfigError(f"need at least 2 classes, got {num_classes}")
        self.kind = kind
        self.temperature = float(temperature)
        self._num_classes = num_classes
        self.slice_dims: tuple[int, ...] = ()
        self.offsets: tuple[int, ...] = ()
        self.chunks = nn.ParameterList()
        self.add_slices(slice_dims)

    def add_slices(self, dims: Sequence[int]) -> list[int]:
        """Append slices of the given widths (a new chunk of prototypes); returns their indices."""
        dims = [int(d) for d in dims]
        first = len(self.slice_dims)
        start = sum(self.slice_dims)
        self.offsets += tuple(start + sum(dims[:i]) for i in range(len(dims)))
        self.slice_dims += tuple(dims)
        # std 1/sqrt(D), as nn.Linear: template logits m . T_c then have unit variance for a
        # normalised m (||m||^2 ~ D), and Adam's per-coordinate steps (~lr) turn cosine prototypes
        # at a useful rate (with unit-scale components they would barely rotate: ~lr radians/step).
        self.chunks.append(nn.Parameter(torch.randn(self._num_classes, sum(dims)) / math.sqrt(sum(dims))))
        return list(range(first, len(self.slice_dims)))

    @property
    def weight(self) -> Tensor:
        """(C, D): all prototypes."""
        return self.chunks[0] if len(self.chunks) == 1 else torch.cat(list(self.chunks), dim=1)

    @property
    def num_classes(self) -> int:
        return self._num_classes

    def prototype_slices(self, slices: Sequence[int]) -> Tensor:
        """(C, sum of the chosen slices' widths): the prototypes restricted to some blocks."""
        weight = self.weight
        if list(slices) == list(range(len(self.slice_dims))):
            return weight
        return torch.cat([weight[:, self.offsets[i]:self.offsets[i] + self.slice_dims[i]] for i in slices], dim=1)

    def forward(self, patterns: Sequence[Tensor], slices: Sequence[int] | None = None) -> Tensor:
        """Class scores (B, C) of the concatenation of ``patterns``, which fill ``slices`` (default: all)."""
        slices = list(range(len(self.slice_dims))) if slices is None else list(slices)
        if len(patterns) != len(slices) or not slices:
            raise ValueError(f"got {len(patterns)} patterns for slices {slices}")
        for pattern, index in zip(patterns, slices):
            if pattern.shape[-1] != self.slice_dims[index]:
                raise ValueError(f"pattern for slice {index} has width {pattern.shape[-1]}, expected {self.slice_dims[index]}")
        m = torch.cat(list(patterns), dim=1)  # (B, D_sub)
        mu = self.prototype_slices(slices)  # (C, D_sub)
        if self.kind == "cosine":
            return F.normalize(m, dim=1) @ F.normalize(mu, dim=1).T / self.temperature
        return m @ mu.T

    def extra_repr(self) -> str:
        return f"kind={self.kind}, temperature={self.temperature}, slices={self.slice_dims}"
