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

from capsmm.config import AudioDataConfig, DataConfig
from capsmm.data import DATASETS, ImageDataset, ImageSet
from capsmm.errors import DataError
from capsmm.optional import require
from modalities.audio.data import AUDIO_DATASETS, AudioDataset, AudioSet, fix_length

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


def _bytes(value: object) -> bytes | str:
    if isinstance(value, dict):
        return value.get("bytes") or value["path"]
    raise DataError(f"unexpected column value {type(value).__name__}; expected an Image or Audio feature")


@DATASETS.register("hf-disk")
def load_hf_images(config: DataConfig, root: Path) -> ImageDataset:
    """The ``image`` column of a saved DatasetDict at ``data.path`` (relative to the root) or the root."""
    path = root / config.path if config.path else root
    values, labels, classes = load_disk_split_columns(path, "image")
    sets = {}
    for split, items in values.items():
        images = []
        for item in items:
            data = _bytes(item)
            image = Image.open(io.BytesIO(data) if isinstance(data, bytes) else data).convert("RGB")
            images.append(np.asarray(image.resize((config.image_size, config.image_size))))
        sets[split] = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    grey = all(bool((x[:, 0] == x[:, 1]).all() and (x[:, 1] == x[:, 2]).all()) for x in sets.values())
    sets = {k: v[:, :1].contiguous() if grey else v for k, v in sets.items()}
    return ImageDataset("hf-disk", ImageSet(sets["train"], labels["train"]), ImageSet(sets["test"], labels["test"]), classes)


@AUDIO_DATASETS.register("hf-disk")
def load_hf_audio(config: AudioDataConfig, root: Path) -> AudioDataset:
    """The ``audio`` column of a saved DatasetDict at ``audio.path`` (relative to the root) or the root."""
    soundfile = require("soundfile", "decoding audio")
    from modalities.audio.data import read_wave

    path = root / config.path if config.path else root
    values, labels, classes = load_disk_split_columns(path, "audio")
    sets = {}
    for split, items in values.items():
        waves = []
        for index, item in enumerate(items):
            data = _bytes(item)
            if isinstance(data, bytes):
                samples, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
                wave = torch.from_numpy(samples.mean(axis=1))
                if rate != config.sample_rate:
                    torchaudio = require("torchaudio", "resampling audio")
                    wave = torchaudio.functional.resample(wave, rate, config.sample_rate)
            else:
                wave = read_wave(Path(data), config.sample_rate)
            waves.append(fix_length(wave, config.length))
        sets[split] = AudioSet(torch.stack(waves), labels[split], [f"{split}-{i}" for i in range(len(waves))])
    return AudioDataset("hf-disk", sets["train"], sets["test"], classes, config.sample_rate)
