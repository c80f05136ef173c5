"""Data sets saved with ``datasets.save_to_disk``: image, audio and label columns.

Columns are read undecoded (``decode=False``) and decoded here with PIL and soundfile, so audio
needs no FFmpeg/torchcodec. The saved object is a ``DatasetDict`` with ``train`` and ``test``.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from capsmm.config import DataConfig
from capsmm.data import DATASETS, ImageDataset, ImageSet
from capsmm.data.vision import grey_if_colourless
from capsmm.errors import DataError
from capsmm.optional import require
from modalities.audio.config import AUDIO_DATASETS, AudioDataConfig
from modalities.audio.data import AudioDataset, AudioSet, fix_length, read_wave

LABEL = "label"


def load_disk_split_columns(path: Path, column: str) -> tuple[dict[str, list], dict[str, torch.Tensor], list[str]]:
    """``{split: raw column values}``, ``{split: labels}`` and class names of a saved DatasetDict."""
    datasets = require("datasets", "loading Hugging Face data sets")
    try:
        saved = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as error:
        raise DataError(f"no data set saved with save_to_disk at {path} ({error})") from None
    missing = [s for s in ("train", "test") if s not in saved]
    if missing:
        raise DataError(f"{path} must hold a DatasetDict with train and test splits; missing {', '.join(missing)}")
    values, labels = {}, {}
    for split in ("train", "test"):
        table = saved[split]
        for needed in (column, LABEL):
            if needed not in table.column_names:
                raise DataError(f"{path} [{split}] has no '{needed}' column (columns: {', '.join(table.column_names)})")
        feature = table.features[column]
        if hasattr(feature, "decode"):
            table = table.cast_column(column, type(feature)(decode=False))
        values[split] = table[column]
        labels[split] = torch.tensor(table[LABEL], dtype=torch.long)
    names = getattr(saved["train"].features[LABEL], "names", None)
    classes = list(names) if names else [str(c) for c in range(int(max(labels["train"].max(), labels["test"].max())) + 1)]
    return values, labels, classes


def _file(value: object) -> io.BytesIO | Path:
    """An undecoded Image/Audio value ({"bytes", "path"}) as something PIL and soundfile can open."""
    if isinstance(value, dict) and (value.get("bytes") or value.get("path")):
        return io.BytesIO(value["bytes"]) if value.get("bytes") else Path(value["path"])
    raise DataError(f"unexpected column value {type(value).__name__}; expected an Image or Audio feature")


def _decode_image(value: object, size: int, where: str) -> np.ndarray:
    """One undecoded Image value as an RGB array of ``size`` x ``size``; a broken one is a one-line DataError naming it."""
    source = _file(value)
    try:
        with Image.open(source) as image:
            return np.asarray(image.convert("RGB").resize((size, size)))
    except Exception as error:  # PIL raises UnidentifiedImageError, OSError, ValueError, DecompressionBombError...
        name = source if isinstance(source, Path) else where
        raise DataError(f"cannot decode image {name} ({type(error).__name__}: {error}); fix or drop that row") from None


@DATASETS.register("hf-disk")
def load_hf_images(config: DataConfig, root: Path) -> ImageDataset:
    """The ``image`` column of a saved DatasetDict at ``data.path`` (relative to the root) or the root."""
    folder = root / config.path if config.path else root
    values, labels, classes = load_disk_split_columns(folder, "image")
    sets = {}
    for split, items in values.items():
        images = [_decode_image(item, config.image_size, f"{folder} [{split}] row {row}") for row, item in enumerate(items)]
        sets[split] = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)
    train, test = grey_if_colourless(sets["train"], sets["test"])
    return ImageDataset("hf-disk", ImageSet(train, labels["train"]), ImageSet(test, labels["test"]), classes)


@AUDIO_DATASETS.register("hf-disk")
def load_hf_audio(config: AudioDataConfig, root: Path) -> AudioDataset:
    """The ``audio`` column of a saved DatasetDict at ``audio.path`` (relative to the root) or the root."""
    folder = root / config.path if config.path else root
    values, labels, classes = load_disk_split_columns(folder, "audio")
    sets = {}
    for split, items in values.items():
        waves = torch.stack([fix_length(read_wave(_file(item), config.sample_rate, name=f"{folder} [{split}] row {row}"), config.length)
                             for row, item in enumerate(items)])
        sets[split] = AudioSet(waves, labels[split], [f"{split}-{i}" for i in range(len(waves))])
    return AudioDataset("hf-disk", sets["train"], sets["test"], classes, config.sample_rate)
