"""Audio data sets held in memory as fixed-length float waveforms: ``fsdd`` and ``audiofolder``.

Files are read with soundfile (``torchaudio.load`` needs FFmpeg libraries a plain install lacks),
mixed down to mono, resampled with ``torchaudio.transforms.Resample`` and cut to a fixed length.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import torch
from torch import Tensor

from capsmm.data import ModalSplit, load_dataset, seeded_subsets, stratified_indices
from capsmm.errors import DataError
from capsmm.optional import require

from .augment import waveform_augmentation
from .config import AUDIO_DATASETS, AudioDataConfig

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".aiff", ".aif")


@dataclass
class AudioSet:
    """One split: ``waves`` float32 (N, T), ``labels`` (N,), and each clip's ``speakers`` (or source)."""

    waves: Tensor
    labels: Tensor
    speakers: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)

    def sample(self, n: int | None, generator: torch.Generator) -> "AudioSet":
        """``n`` clips stratified by class (:func:`capsmm.data.stratified_indices`; all when ``n`` is None)."""
        index = stratified_indices(self.labels, n, generator)
        return AudioSet(self.waves[index], self.labels[index], [self.speakers[i] for i in index.tolist()] if self.speakers else [])


@dataclass
class AudioDataset:
    name: str
    train: AudioSet
    test: AudioSet
    classes: list[str]
    sample_rate: int

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_shape(self) -> tuple[int]:
        return (self.train.waves.shape[1],)

    def subset(self, train: int | None, test: int | None, seed: int) -> "AudioDataset":
        return seeded_subsets(self, train, test, seed)

    def modal_splits(self, config: AudioDataConfig) -> tuple[ModalSplit, ModalSplit]:
        """(train, test) as model inputs: the waveforms (the encoder computes its features), training
        batches augmented as ``config`` asks."""
        augment = waveform_augmentation(config.sample_rate, config.shift, config.gain_db, config.noise_snr, config.speed,
                                       config.augment_p)
        return ModalSplit(self.train.waves, self.train.labels, augment=augment), ModalSplit(self.test.waves, self.test.labels)


def fix_length(wave: Tensor, length: int) -> Tensor:
    """Centre-crop a longer (T,) clip to ``length`` samples; zero-pad a shorter one at the end."""
    if len(wave) >= length:
        start = (len(wave) - length) // 2
        return wave[start:start + length]
    return torch.nn.functional.pad(wave, (0, length - len(wave)))


_resamplers: dict[tuple[int, int], Callable[[Tensor], Tensor]] = {}


def read_wave(source: Path | BinaryIO, sample_rate: int, name: str | None = None) -> Tensor:
    """A mono float32 (T,) waveform at ``sample_rate`` from a file or a file-like object (encoded
    bytes, called ``name`` in errors); an unreadable one is a one-line :class:`DataError`."""
    soundfile = require("soundfile", "reading audio files")
    try:
        data, rate = soundfile.read(source if hasattr(source, "read") else str(source), dtype="float32", always_2d=True)
    except Exception as error:  # soundfile raises its own LibsndfileError, RuntimeError, ...
        raise DataError(f"cannot read audio file {name or getattr(source, 'name', source)}: {error}") from None
    wave = torch.from_numpy(data.mean(axis=1))
    if rate != sample_rate:
        if (rate, sample_rate) not in _resamplers:
            torchaudio = require("torchaudio", "resampling audio")
            _resamplers[rate, sample_rate] = torchaudio.transforms.Resample(rate, sample_rate)
        wave = _resamplers[rate, sample_rate](wave)
    return wave


def _stack(paths: list[Path], config: AudioDataConfig) -> Tensor:
    if not paths:
        return torch.zeros(0, config.length)
    return torch.stack([fix_length(read_wave(p, config.sample_rate), config.length) for p in paths])



FSDD_NAME = re.compile(r"^(\d+)_([A-Za-z0-9-]+)_(\d+)$")


@AUDIO_DATASETS.register("fsdd")
def load_fsdd(config: AudioDataConfig, root: Path) -> AudioDataset:
    """Free Spoken Digit Dataset: ``{digit}_{speaker}_{take}.wav`` in ``<root>/fsdd/recordings`` (or ``path``).

    Split: ``test_speakers`` hold out those speakers entirely (speaker-independent test);
    otherwise the data set's own rule, takes 0-4 of every speaker and digit in test. Clips are
    ordered take, speaker, digit.
    """
    folder = root / config.path if config.path else root / "fsdd"
    if (folder / "recordings").is_dir():
        folder = folder / "recordings"
    files = []
    for path in sorted(folder.glob("*.wav")) if folder.is_dir() else []:
        match = FSDD_NAME.match(path.stem)
        if match:
            files.append((int(match[3]), match[2], int(match[1]), path))
    if not files:
        raise DataError(f"no FSDD recordings ({{digit}}_{{speaker}}_{{take}}.wav) in {folder}; set --audio-root or CAPSMM_DATA "
                        "to the folder holding fsdd/recordings, or audio.path to the recordings")
    files.sort()
    speakers = sorted({speaker for _, speaker, _, _ in files})
    held_out = set(config.test_speakers or [])
    unknown = sorted(held_out - set(speakers))
    if unknown:
        raise DataError(f"test speaker(s) {', '.join(unknown)} not in {folder}; speakers there: {', '.join(speakers)}")
    if held_out == set(speakers):
        raise DataError(f"holding out every speaker ({', '.join(speakers)}) leaves nothing to train on")
    is_test = (lambda take, speaker: speaker in held_out) if held_out else (lambda take, speaker: take < 5)
    splits = {}
    for test in (False, True):
        chosen = [(speaker, digit, path) for take, speaker, digit, path in files if is_test(take, speaker) == test]
        splits[test] = AudioSet(_stack([p for _, _, p in chosen], config), torch.tensor([d for _, d, _ in chosen], dtype=torch.long),
                                [s for s, _, _ in chosen])
    digits = sorted({digit for _, _, digit, _ in files})
    if digits != list(range(len(digits))):
        raise DataError(f"FSDD digits in {folder} must be 0..K-1, found {digits}")
    return AudioDataset("fsdd", splits[False], splits[True], [str(d) for d in digits], config.sample_rate)


@AUDIO_DATASETS.register("audiofolder")
def load_audiofolder(config: AudioDataConfig, root: Path) -> AudioDataset:
    """``<folder>/train/<class>/*.wav`` and ``<folder>/test/<class>/*.wav`` (flac/ogg too), any sample
    rate (resampled); classes are the sorted folder names, the same in both splits."""
    folder = root / config.path if config.path else root
    classes = {}
    for split in ("train", "test"):
        if not (folder / split).is_dir():
            raise DataError(f"audio folder '{folder}' needs train/ and test/ sub-directories with one folder per class; "
                            f"'{folder / split}' is missing (set audio.path or --audio-root)")
        classes[split] = sorted(p.name for p in (folder / split).iterdir() if p.is_dir())
    if classes["train"] != classes["test"] or not classes["train"]:
        raise DataError(f"audio folder '{folder}': train classes {classes['train']} and test classes {classes['test']} must match")
    sets = {}
    for split in ("train", "test"):
        items = [(path, index) for index, cls in enumerate(classes["train"])
                 for path in sorted((folder / split / cls).iterdir()) if path.suffix.lower() in AUDIO_SUFFIXES]
        if not items:
            raise DataError(f"no audio files ({', '.join(AUDIO_SUFFIXES)}) under {folder / split}")
        sets[split] = AudioSet(_stack([p for p, _ in items], config), torch.tensor([i for _, i in items]), [p.stem for p, _ in items])
    return AudioDataset("audiofolder", sets["train"], sets["test"], classes["train"], config.sample_rate)


def load_audio_dataset(config: AudioDataConfig, seed: int = 0) -> AudioDataset:
    """Load ``config.name`` from the data root, then keep the train/test clips asked for (drawn by ``seed``)."""
    return load_dataset("audio", config, seed)
