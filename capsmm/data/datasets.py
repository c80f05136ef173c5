"""Data sets by name: the registries that loaders join, the sections they read, and loading one.

A loader is ``loader(section, data_root)`` registered under a name in its modality's registry
(:data:`DATASETS` for images; a modality package adds its own with :func:`dataset_registry`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from ..errors import DataError
from ..registry import Registry
from ..streams import Purpose, stream
from .base import ImageSet, resolve_data_root
from .batches import ModalSplit, image_split


def seeded_subsets(dataset: Any, train: int | None, test: int | None, seed: int) -> Any:
    """``dataset`` (a dataclass with ``train`` and ``test`` splits that have ``sample(n, generator)``) with
    the stratified subsets of ``seed``: the streams ``TRAIN_SUBSET`` and ``TEST_SUBSET`` (:mod:`capsmm.streams`),
    the same for every modality, so that row pairs stay paired."""
    return replace(dataset, train=dataset.train.sample(train, stream(seed, Purpose.TRAIN_SUBSET)),
                   test=dataset.test.sample(test, stream(seed, Purpose.TEST_SUBSET)))


class DataSection(Protocol):
    """What the data-set loaders read of a run's data section (:class:`capsmm.config.DataConfig`, or a
    modality's own section with more keys). A protocol, so that the data package does not import the
    config package that validates names against its registries."""

    name: str
    root: str | None
    path: str | None
    train_subset: int | None
    test_subset: int | None


class ImageDataSection(DataSection, Protocol):
    """What the image loaders and :meth:`ImageDataset.modal_splits` read besides."""

    download: bool
    image_size: int
    augment: bool
    crop_padding: int | None
    cutout: int


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
        return seeded_subsets(self, train, test, seed)

    def modal_splits(self, config: ImageDataSection) -> tuple[ModalSplit, ModalSplit]:
        """(train, test) as model inputs: standardised with the training set's channel statistics,
        training batches augmented when ``config.augment``."""
        mean, std = self.channel_stats()
        return image_split(self.train, mean, std, config.augment, config.crop_padding, config.cutout), image_split(self.test, mean, std)



DatasetLoader = Callable[[Any, Path], ImageDataset]

#: image data-set name -> ``loader(config, data_root) -> ImageDataset``
DATASETS: Registry[DatasetLoader] = Registry("dataset", builtin_modules=("capsmm.data.vision",))
#: modality -> the registry of its data sets; a modality package adds its own with :func:`dataset_registry`
DATASETS_BY_MODALITY: dict[str, Registry[Any]] = {"image": DATASETS}


def dataset_registry(modality: str) -> Registry[Any]:
    """The registry of ``modality``'s data sets (``loader(section, data_root)`` -> a data set like
    :class:`ImageDataset`: ``train``, ``test``, ``classes``, ``in_shape``, ``subset``, ``modal_splits``),
    created on first use by the package that registers the modality's sets."""
    return DATASETS_BY_MODALITY.setdefault(modality, Registry(f"{modality} dataset"))


def load_dataset(modality: str, config: DataSection, seed: int = 0) -> Any:
    """Load ``config.name`` of ``modality`` from the data root, then keep the train/test subsets asked
    for, drawn by the run's ``seed`` (``train.seed``)."""
    dataset = DATASETS_BY_MODALITY[modality].get(config.name)(config, resolve_data_root(config.root))
    if len(dataset.train) == 0 or len(dataset.test) == 0:
        raise DataError(f"{modality} data set '{config.name}' has an empty train or test split")
    return dataset.subset(config.train_subset, config.test_subset, seed)


def load_image_dataset(config: ImageDataSection, seed: int = 0) -> ImageDataset:
    """Load an image data set (see :func:`load_dataset`)."""
    return load_dataset("image", config, seed)
