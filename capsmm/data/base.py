"""In-memory image splits, the data-set registry and the data-root convention."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ..config import DataConfig
from ..errors import DataError
from ..registry import Registry
from ..streams import Purpose, stream

if TYPE_CHECKING:
    from .batches import ModalSplit

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


@dataclass
class ImageDataset:
    """Train and test splits with the metadata a model needs."""

    name: str
    train: ImageSet
    test: ImageSet
    classes: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.images.shape[1:])  # type: ignore[return-value]

    def channel_stats(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and std of the training images, in [0, 1] units (for normalisation)."""
        pixels = self.train.images.transpose(0, 1).reshape(self.train.images.shape[1], -1).float() / 255
        return pixels.mean(1).tolist(), pixels.std(1).clamp_min(1e-6).tolist()

    def subset(self, train: int | None, test: int | None, seed: int) -> "ImageDataset":
        """The stratified subsets of ``seed`` (:class:`~capsmm.streams.Purpose` ``TRAIN_SUBSET``, ``TEST_SUBSET``)."""
        return replace(self, train=self.train.sample(train, stream(seed, Purpose.TRAIN_SUBSET)),
                       test=self.test.sample(test, stream(seed, Purpose.TEST_SUBSET)))

    def modal_splits(self, config: DataConfig) -> tuple["ModalSplit", "ModalSplit"]:
        """(train, test) as model inputs: standardised with the training set's channel statistics,
        training batches augmented when ``config.augment``."""
        from .batches import image_split

        mean, std = self.channel_stats()
        return image_split(self.train, mean, std, config.augment, config.crop_padding, config.cutout), image_split(self.test, mean, std)


DatasetLoader = Callable[[DataConfig, Path], ImageDataset]

#: image data-set name -> ``loader(config, data_root) -> ImageDataset``
DATASETS: Registry[DatasetLoader] = Registry("dataset", builtin_modules=("capsmm.data.vision",))
#: audio data-set name -> ``loader(config, data_root)`` -> a data set like :class:`ImageDataset` (``train``,
#: ``test``, ``classes``, ``in_shape``, ``subset``, ``modal_splits``); ``modalities.audio`` registers its sets here
AUDIO_DATASETS: Registry[Callable[[Any, Path], Any]] = Registry("audio dataset")
#: modality -> the registry of its data sets (the data sections of a multimodal config)
DATASETS_BY_MODALITY: dict[str, Registry[Any]] = {"image": DATASETS, "audio": AUDIO_DATASETS}


def load_dataset(modality: str, config: Any, seed: int = 0) -> Any:
    """Load ``config.name`` of ``modality`` from the data root, then keep the train/test subsets asked
    for, drawn by the run's ``seed`` (``train.seed``)."""
    dataset = DATASETS_BY_MODALITY[modality].get(config.name)(config, resolve_data_root(config.root))
    if len(dataset.train) == 0 or len(dataset.test) == 0:
        raise DataError(f"{modality} data set '{config.name}' has an empty train or test split")
    return dataset.subset(config.train_subset, config.test_subset, seed)


def load_image_dataset(config: DataConfig, seed: int = 0) -> ImageDataset:
    """Load an image data set (see :func:`load_dataset`)."""
    return load_dataset("image", config, seed)
