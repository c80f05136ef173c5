"""Built-in image data sets: bundled digits, torchvision's MNIST family and CIFAR, image folders."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision import datasets
from torchvision.transforms import v2

from ..errors import DataError
from .base import ImageSet
from .datasets import DATASETS, ImageDataSection, ImageDataset
from .integrity import VerifiedOnce


@DATASETS.register("digits")
def load_digits(config: ImageDataSection, root: Path) -> ImageDataset:
    """scikit-learn's bundled 8x8 digits (1,797 images): needs no download, so it is the quickstart set.

    Split: a fixed stratified 80/20 split (``random_state=0``): 1,437 train, 360 test.
    """
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    bunch = sklearn_digits()
    images = torch.from_numpy(np.round(bunch.images * (255 / 16)).astype(np.uint8)).unsqueeze(1)  # (N, 1, 8, 8)
    labels = torch.from_numpy(bunch.target)
    train_idx, test_idx = train_test_split(np.arange(len(labels)), test_size=0.2, random_state=0, stratify=bunch.target)
    return ImageDataset(
        "digits",
        ImageSet(images[train_idx], labels[train_idx]),
        ImageSet(images[test_idx], labels[test_idx]),
        [str(c) for c in range(10)],
    )


def _expected_files(cls: type, folder: Path) -> tuple[Path, list[str]]:
    if issubclass(cls, datasets.CIFAR10):
        return folder / cls.base_folder, [name for name, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
    return folder / cls.__name__ / "raw", [Path(url).name.removesuffix(".gz") for url, _ in cls.resources]


def _open_torchvision(cls: type, folder: Path, train: bool, download: bool, name: str) -> Any:
    path, files = _expected_files(cls, folder)
    if not all((path / file).is_file() for file in files):
        missing = f"data set '{name}' not found: expected {', '.join(files)} in {path}"
        if not download:
            raise DataError(f"{missing}; set --data-root or CAPSMM_DATA to the folder holding torchvision/, or allow data.download")
        try:
            cls(root=str(folder), train=train, download=True)
        except Exception as error:
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise DataError(f"{missing}, and downloading it failed ({reason}); set --data-root or CAPSMM_DATA to a folder that holds it") from None
    try:
        return cls(root=str(folder), train=train, download=False)
    except Exception as error:
        reason = str(error).splitlines()[0] if str(error) else ""
        raise DataError(f"data set '{name}' in {path} is unreadable ({type(error).__name__}: {reason}); delete it and download again") from None


def _torchvision_split(cls: type, folder: Path, train: bool, download: bool, name: str) -> tuple[ImageSet, list[str]]:
    ds = _open_torchvision(cls, folder, train, download, name)
    data = torch.as_tensor(np.asarray(ds.data))
    images = data.unsqueeze(1) if data.ndim == 3 else data.permute(0, 3, 1, 2)  # (N, C, H, W)
    return ImageSet(images.contiguous(), torch.as_tensor(ds.targets)), list(ds.classes)


def _register_torchvision(name: str, cls: type) -> None:
    @DATASETS.register(name)
    def load(config: ImageDataSection, root: Path) -> ImageDataset:
        folder = root / "torchvision"
        train, classes = _torchvision_split(cls, folder, True, config.download, name)
        test, _ = _torchvision_split(cls, folder, False, config.download, name)
        return ImageDataset(name, train, test, classes)


for _name, _cls in {
    "mnist": datasets.MNIST,
    "fashion-mnist": datasets.FashionMNIST,
    "kmnist": datasets.KMNIST,
    "cifar10": type("CIFAR10", (VerifiedOnce, datasets.CIFAR10), {}),
    "cifar100": type("CIFAR100", (VerifiedOnce, datasets.CIFAR100), {}),
}.items():
    _register_torchvision(_name, _cls)


def _read_folder(folder: Path, size: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    transform = v2.Compose([v2.Resize((size, size), antialias=True), v2.PILToTensor()])
    try:
        ds = datasets.ImageFolder(str(folder), transform=transform)
    except (FileNotFoundError, OSError) as error:
        raise DataError(f"cannot read image folder {folder}: {error}") from None
    images, labels = [], []
    for index, (path, label) in enumerate(ds.samples):
        try:
            image, _ = ds[index]
        except Exception as error:  # PIL raises UnidentifiedImageError, OSError, ValueError, DecompressionBombError...
            raise DataError(f"cannot decode image {path} ({type(error).__name__}: {error}); remove or replace the file") from None
        images.append(image)
        labels.append(label)
    return torch.stack(images), torch.tensor(labels), ds.classes


@DATASETS.register("imagefolder")
def load_image_folder(config: ImageDataSection, root: Path) -> ImageDataset:
    """``<folder>/train/<class>/*`` and ``<folder>/test/<class>/*`` (torchvision ImageFolder layout).

    Images of any size are resized to ``image_size`` squared. The set is grayscale (1 channel)
    when every image has equal R, G and B, colour (3 channels) otherwise.
    """
    folder = root / config.path if config.path else root
    for split in ("train", "test"):
        if not (folder / split).is_dir():
            raise DataError(
                f"image folder '{folder}' needs train/ and test/ sub-directories with one folder per class; "
                f"'{folder / split}' is missing (set data.path or --data-root)"
            )
    train_images, train_labels, classes = _read_folder(folder / "train", config.image_size)
    test_images, test_labels, test_classes = _read_folder(folder / "test", config.image_size)
    if test_classes != classes:
        raise DataError(f"image folder '{folder}': test classes {test_classes} differ from train classes {classes}")
    train_images, test_images = grey_if_colourless(train_images, test_images)
    return ImageDataset("imagefolder", ImageSet(train_images, train_labels), ImageSet(test_images, test_labels), classes)


def grey_if_colourless(*splits: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """RGB uint8 (N, 3, H, W) splits as 1-channel images when every pixel has R = G = B, else unchanged."""
    grey = all(bool((x[:, 0] == x[:, 1]).all() and (x[:, 1] == x[:, 2]).all()) for x in splits)
    return tuple((x[:, :1] if grey else x).contiguous() for x in splits)
