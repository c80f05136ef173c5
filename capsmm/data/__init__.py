"""Data sets held in memory as uint8 tensors, and fast batch iteration over them.

Every supported image set fits in memory (Fashion-MNIST: 47 MB, CIFAR: 150 MB as uint8), so
capsmm loads it once through torchvision and then slices batches from tensors, on the GPU when
training there: no per-sample Python transforms and no DataLoader workers in the hot loop.
"""

from .base import ImageSet, resolve_data_root, stratified_indices
from .datasets import (DATASETS, DATASETS_BY_MODALITY, DataSection, ImageDataSection, ImageDataset, dataset_registry, load_dataset,
                       load_image_dataset, seeded_subsets)
from .batches import BatchLoader, ModalSplit, Normalize, image_split, random_crop_flip, same_class_partners

__all__ = [
    "DATASETS", "DATASETS_BY_MODALITY", "DataSection", "ImageDataSection", "dataset_registry", "BatchLoader", "ImageDataset", "ImageSet", "ModalSplit", "Normalize",
    "image_split", "load_dataset", "seeded_subsets", "load_image_dataset", "stratified_indices", "random_crop_flip", "resolve_data_root", "same_class_partners",
]
