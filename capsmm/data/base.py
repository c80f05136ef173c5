"""In-memory image splits, stratified subsets and the data-root convention."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor


#: environment variable naming the data root (the ``--data-root`` flag wins over it)
DATA_ROOT_ENV = "CAPSMM_DATA"


def resolve_data_root(root: str | os.PathLike[str] | None) -> Path:
    """``root`` if given, else ``$CAPSMM_DATA``, else ``./data``."""
    if root:
        return Path(root).expanduser()
    env = os.environ.get(DATA_ROOT_ENV)
    return Path(env).expanduser() if env else Path("data")


def stratified_indices(labels: Tensor, n: int | None, generator: torch.Generator) -> Tensor:
    """``n`` indices into ``labels`` (all of them when ``n`` is None or too large), each class taking its
    share of ``n`` in proportion to its size (largest remainders; every class at least one when ``n``
    allows), chosen at random within the class by ``generator`` (a :func:`~capsmm.streams.stream` of
    the run's seed), in their original order.

    Subsets for quick runs and diagnostics are taken this way, never as "the first N": data sets
    sorted by class (an ImageFolder, an audio folder) would otherwise lose whole classes.
    """
    labels = torch.as_tensor(labels)
    if n is None or n >= len(labels):
        return torch.arange(len(labels))
    classes, counts = labels.unique(return_counts=True)
    exact = counts.double() * n / len(labels)
    shares = exact.floor().long()
    if n >= len(classes):
        shares = shares.clamp_min(1)
    for index in torch.argsort(exact - exact.floor(), descending=True).tolist():  # largest remainders first
        if shares.sum() >= n:
            break
        if shares[index] < counts[index]:
            shares[index] += 1
    while shares.sum() > n:  # the minimum of one per class may overshoot: trim the largest shares
        shares[shares.argmax()] -= 1
    chosen = []
    for cls, share in zip(classes.tolist(), shares.tolist()):
        members = (labels == cls).nonzero().flatten()
        chosen.append(members[torch.randperm(len(members), generator=generator)[:share]])
    return torch.cat(chosen).sort().values


@dataclass
class ImageSet:
    """One split: ``images`` uint8 (N, C, H, W) and ``labels`` int64 (N,)."""

    images: Tensor
    labels: Tensor

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"labels shape {tuple(self.labels.shape)} does not match {self.images.shape[0]} images")
        self.labels = self.labels.long()

    def __len__(self) -> int:
        return self.images.shape[0]

    def sample(self, n: int | None, generator: torch.Generator) -> "ImageSet":
        """``n`` samples stratified by class (:func:`stratified_indices`; all when ``n`` is None)."""
        index = stratified_indices(self.labels, n, generator)
        return ImageSet(self.images[index], self.labels[index])
