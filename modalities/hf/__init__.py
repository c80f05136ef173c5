"""Hugging Face adapters: a ``transformers`` encoder as a CAP encoder (its layers are the blocks), and
data sets saved with ``datasets.save_to_disk`` (image / audio / label columns)."""

from .datasets import load_disk_split_columns
from .encoder import HFEncoder, hf_image

__all__ = ["HFEncoder", "hf_image", "load_disk_split_columns"]
