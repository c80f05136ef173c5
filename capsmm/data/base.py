"""In-memory image splits, the data-set registry and the data-root convention."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import Tensor

from ..config import DataConfig
from ..errors import DataError
from ..registry import Registry

#: environment variable naming the data root (the ``--data-root`` flag wins over it)
DATA_ROOT_ENV = "CAPSMM_DATA"


def resolve_data_root(root: str | os.PathLike[str] | None) -> Path:
    """``root`` if given, else ``$CAPSMM_DATA``, else ``./data``."""
    if root:
        return Path(root).expanduser()
    env = os.environ.get(DATA_ROOT_ENV)
    return Path(env).expanduser() if env else Path("data")


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

    def head(self, n: int | None) -> "ImageSet":
        """The first ``n`` samples (all when ``n`` is None)."""
        return self if n is None else ImageSet(self.images[:n], self.labels[:n])


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

    def subset(self, train: int | None, test: int | None) -> "ImageDataset":
        return replace(self, train=self.train.head(train), test=self.test.head(test))


DatasetLoader = Callable[[DataConfig, Path], ImageDataset]

#: data-set name -> ``loader(config, data_root) -> ImageDataset``
DATASETS: Registry[DatasetLoader] = Registry("dataset", builtin_modules=("capsmm.data.vision", "modalities.hf.datasets"))


def load_image_dataset(config: DataConfig) -> ImageDataset:
    """Load ``config.name`` from the data root, then keep the first train/test subsets asked for."""
    loader = DATASETS.get(config.name)
    dataset = loader(config, resolve_data_root(config.root))
    if len(dataset.train) == 0 or len(dataset.test) == 0:
        raise DataError(f"data set '{config.name}' has an empty train or test split")
    return dataset.subset(config.train_subset, config.test_subset)
