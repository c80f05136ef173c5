"""Batches sliced from in-memory uint8 tensors: shuffling, augmentation, normalisation."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor

from ..errors import DataError
from ..streams import Purpose, stream
from .base import ImageSet, stratified_indices


def random_crop_flip(images: Tensor, generator: torch.Generator, padding: int | None = None) -> Tensor:
    """Random crop after zero padding (default: a side / 8, so 4 px on 32x32) and random horizontal flip.

    The batch version of torchvision's ``RandomCrop(size, padding)`` + ``RandomHorizontalFlip()``:
    one offset and one coin per image, drawn from ``generator`` (so runs are reproducible).
    """
    b, _, h, w = images.shape
    pad = max(1, h // 8) if padding is None else padding
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(images.device)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(images.device)
    flip = (torch.rand(b, generator=generator) < 0.5).to(images.device)
    rows = dy[:, None] + torch.arange(h, device=images.device)  # (B, H)
    cols = dx[:, None] + torch.arange(w, device=images.device)  # (B, W)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    batch = torch.arange(b, device=images.device)[:, None, None]
    crops = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return rearrange(crops, "b h w c -> b c h w").contiguous()


def cutout(images: Tensor, generator: torch.Generator, size: int, fill: Sequence[int]) -> Tensor:
    """One ``size`` x ``size`` square per image set to ``fill`` (per channel), centred at a random pixel
    and clipped at the borders (DeVries & Taylor's cutout, as local-loss applies it). ``fill`` is the
    training set's mean pixel, so after normalisation the square is zero, as when cutting out a
    normalised image."""
    b, c, h, w = images.shape
    cy = torch.randint(0, h, (b,), generator=generator).to(images.device)
    cx = torch.randint(0, w, (b,), generator=generator).to(images.device)
    rows, cols = torch.arange(h, device=images.device), torch.arange(w, device=images.device)
    inside_y = (rows[None] >= (cy - size // 2)[:, None]) & (rows[None] < (cy + size // 2)[:, None])  # (B, H)
    inside_x = (cols[None] >= (cx - size // 2)[:, None]) & (cols[None] < (cx + size // 2)[:, None])  # (B, W)
    hole = (inside_y[:, :, None] & inside_x[:, None, :])[:, None]  # (B, 1, H, W)
    value = torch.tensor(fill, dtype=images.dtype, device=images.device).view(1, c, 1, 1)
    return torch.where(hole, value, images)


class Normalize:
    """uint8 images -> float, standardised per channel with the training set's mean and std."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = torch.tensor(mean).view(1, -1, 1, 1)
        self.std = torch.tensor(std).view(1, -1, 1, 1)

    def __call__(self, images: Tensor) -> Tensor:
        if self.mean.device != images.device:
            self.mean, self.std = self.mean.to(images.device), self.std.to(images.device)
        return (images.float() / 255 - self.mean) / self.std


@dataclass
class ModalSplit:
    """One modality's samples of one split, in stored form, and how a batch becomes model input."""

    inputs: Tensor
    """(N, ...) as stored: uint8 images, float waveforms, ..."""
    labels: Tensor
    """(N,) class indices"""
    prepare: Callable[[Tensor], Tensor] = Tensor.float
    """stored batch (already on the device) -> model input"""
    augment: Callable[[Tensor, torch.Generator], Tensor] | None = None
    """random augmentation of a stored training batch"""

    def __len__(self) -> int:
        return len(self.labels)

    def sample(self, n: int | None, generator: torch.Generator) -> "ModalSplit":
        """``n`` samples stratified by class (:func:`~capsmm.data.stratified_indices`)."""
        index = stratified_indices(self.labels, n, generator)
        return ModalSplit(self.inputs[index], self.labels[index], self.prepare, self.augment)


def image_split(split: ImageSet, mean: Sequence[float], std: Sequence[float], augment: bool = False,
                crop_padding: int | None = None, cutout_size: int = 0) -> ModalSplit:
    """A split as model input: standardised with ``mean``/``std``; with ``augment`` a random crop (zero
    padding ``crop_padding``, default a side / 8) and flip, and with ``cutout_size`` > 0 cutout, on
    every training batch."""
    steps: list[Callable[[Tensor, torch.Generator], Tensor]] = []
    if augment:
        steps.append(lambda images, generator: random_crop_flip(images, generator, crop_padding))
    if cutout_size:
        fill = [round(255 * m) for m in mean]
        steps.append(lambda images, generator: cutout(images, generator, cutout_size, fill))

    def augmentation(images: Tensor, generator: torch.Generator) -> Tensor:
        for step in steps:
            images = step(images, generator)
        return images

    return ModalSplit(split.images, split.labels, Normalize(mean, std), augmentation if steps else None)


def same_class_partners(anchor_labels: Tensor, other_labels: Tensor, generator: torch.Generator) -> Tensor:
    """For every anchor sample, the index of a random sample of ``other`` with the same class."""
    partners = torch.empty(len(anchor_labels), dtype=torch.long)
    for cls in anchor_labels.unique().tolist():
        anchors = (anchor_labels == cls).nonzero().flatten()
        pool = (other_labels == cls).nonzero().flatten()
        if len(pool) == 0:
            raise DataError(f"class {cls} has samples in one modality but none in the other; pairing needs every class in both")
        partners[anchors] = pool[torch.randint(len(pool), (len(anchors),), generator=generator)]
    return partners


class BatchLoader:
    """Iterates batches of one split, kept on ``device`` in stored form (uint8 images stay uint8).

    ``parts`` is one :class:`ModalSplit` (batches are tensors) or a mapping modality -> split
    (batches are dicts). With several modalities the first one named by ``anchor`` sets the
    samples and labels, and every other modality is *paired* by class: each anchor sample gets a
    random same-class partner, redrawn every epoch when ``repair`` (training) and fixed otherwise;
    with ``row_pairing`` sample i goes with sample i (data sets that hold both modalities per row).
    The order, the pairing and the augmentation of epoch ``e`` are three streams of ``(seed, e)``
    (:mod:`capsmm.streams`), so a resumed run sees the same batches. When shuffling, a trailing
    batch of one sample is dropped (batch norm needs two).
    With ``shard=(rank, world)`` each rank of a data-parallel run takes its share of every global batch.
    """

    def __init__(
        self,
        parts: ModalSplit | Mapping[str, ModalSplit],
        batch_size: int,
        *,
        device: torch.device | str = "cpu",
        shuffle: bool = False,
        seed: int = 0,
        anchor: str | None = None,
        repair: bool = False,
        row_pairing: bool = False,
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        self.single = isinstance(parts, ModalSplit)
        named = {"input": parts} if isinstance(parts, ModalSplit) else dict(parts)
        self.anchor = anchor or next(iter(named))
        if self.anchor not in named:
            raise ValueError(f"anchor '{self.anchor}' is not one of {list(named)}")
        self.parts = named
        self.inputs = {name: part.inputs.to(device) for name, part in named.items()}
        self.labels = named[self.anchor].labels.to(device)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.row_pairing = row_pairing
        self.rank, self.world = shard
        self.repair = repair and not row_pairing
        self._fixed_partners = None if self.repair else self._partners(stream(seed, Purpose.FIXED_PAIRING))

    def _partners(self, generator: torch.Generator) -> dict[str, Tensor]:
        anchor_labels = self.parts[self.anchor].labels
        partners = {}
        for name, part in self.parts.items():
            if name == self.anchor:
                continue
            if self.row_pairing:
                if not torch.equal(part.labels, anchor_labels):
                    raise DataError(f"row pairing needs '{name}' and '{self.anchor}' to hold the same samples, label for label")
                partners[name] = torch.arange(len(anchor_labels), device=self.labels.device)
            else:
                partners[name] = same_class_partners(anchor_labels, part.labels, generator).to(self.labels.device)
        return partners

    def __len__(self) -> int:
        full, rest = divmod(len(self.labels), self.batch_size)
        if self.world > 1 and self.shuffle:
            return full
        return full + (1 if rest > 1 or (rest == 1 and not self.shuffle) else 0)

    def _local(self, index: Tensor) -> Tensor | None:
        """This rank's part of a global batch (``shard``); None when it has none.

        Training keeps only full global batches, split into equal parts, so that averaging the
        ranks' gradients gives the gradient of the global batch; evaluation deals samples out.
        """
        if self.world == 1:
            return index
        if self.shuffle:
            if len(index) < self.batch_size:
                return None
            local = self.batch_size // self.world
            return index[self.rank * local:(self.rank + 1) * local]
        index = index[self.rank::self.world]
        return index if len(index) else None

    def epoch(self, epoch: int = 0) -> Iterator[tuple[Tensor | dict[str, Tensor], Tensor]]:
        n = len(self.labels)
        order = (torch.randperm(n, generator=stream(self.seed, Purpose.BATCH_ORDER, epoch)) if self.shuffle
                 else torch.arange(n)).to(self.labels.device)
        partners = self._partners(stream(self.seed, Purpose.PAIRING, epoch)) if self.repair else self._fixed_partners
        augmentation = stream(self.seed, Purpose.AUGMENTATION, epoch)
        for start in range(0, n, self.batch_size):
            index = self._local(order[start:start + self.batch_size])
            if index is None:
                continue
            if self.shuffle and len(index) < 2:
                break
            batch = {}
            for name, part in self.parts.items():
                rows = index if name == self.anchor else partners[name][index]
                stored = self.inputs[name][rows]
                if part.augment is not None:
                    stored = part.augment(stored, augmentation)
                batch[name] = part.prepare(stored)
            yield (batch["input"] if self.single else batch), self.labels[index]

    def __iter__(self) -> Iterator[tuple[Tensor | dict[str, Tensor], Tensor]]:
        return self.epoch(0)
