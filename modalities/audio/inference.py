"""Audio in use and under shift: how a trained model reads audio files (any sample rate and channel
count: mixed to mono, resampled, cut to the run's clip length, exactly as the training sets are
read), and the audio corruptions of ``scripts/evaluate.py`` at five severities.

| corruption | severities 1..5 |
|---|---|
| noise | white noise at an SNR of 20, 10, 5, 0, -5 dB of each clip's power |
| time_shift | each clip moved by up to 5, 10, 20, 30, 40 % of its length, either way (zero-filled) |
| gain | attenuated by 6, 12, 18, 24, 30 dB |
| band_limit | low-passed (biquad) at 50, 35, 25, 15, 10 % of the sample rate's Nyquist frequency |
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from capsmm.evaluation.corruptions import corruption_registry
from capsmm.inference import INPUT_KINDS, InputKind
from capsmm.optional import require

from .augment import additive_noise, time_shift
from .data import AUDIO_SUFFIXES, fix_length, read_wave

AUDIO = corruption_registry("audio")
AUDIO_SEVERITIES: dict[str, tuple[float, ...]] = {
    "noise": (20, 10, 5, 0, -5),
    "time_shift": (0.05, 0.1, 0.2, 0.3, 0.4),
    "gain": (6, 12, 18, 24, 30),
    "band_limit": (0.5, 0.35, 0.25, 0.15, 0.1),
}


def read_audio(path: Path, pipeline: dict[str, Any]) -> Tensor:
    """One audio file as the run's (T,) waveform: mono, at its sample rate, centre-cropped or padded."""
    return fix_length(read_wave(path, pipeline["sample_rate"]), pipeline["in_shape"][0])


def conform_waves(waves: Tensor, pipeline: dict[str, Any]) -> Tensor:
    """(N, T) waveforms of another set (already at the run's rate: its section is the run's) cut to the run's length."""
    length = pipeline["in_shape"][0]
    return waves if waves.shape[1] == length else torch.stack([fix_length(w, length) for w in waves])


INPUT_KINDS.register("audio")(InputKind(suffixes=AUDIO_SUFFIXES, read=read_audio, conform=conform_waves,
                                        prepare=lambda pipeline: Tensor.float, scale=1.0, bounds=(-1.0, 1.0)))


@AUDIO.register("noise")
def noise(waves: Tensor, severity: int, generator: torch.Generator, pipeline: dict[str, Any]) -> Tensor:
    return additive_noise(waves, generator, AUDIO_SEVERITIES["noise"][severity - 1], spread_db=0.0)


@AUDIO.register("time_shift")
def shift(waves: Tensor, severity: int, generator: torch.Generator, pipeline: dict[str, Any]) -> Tensor:
    return time_shift(waves, generator, max(1, round(AUDIO_SEVERITIES["time_shift"][severity - 1] * waves.shape[1])))


@AUDIO.register("gain")
def gain(waves: Tensor, severity: int, generator: torch.Generator, pipeline: dict[str, Any]) -> Tensor:
    return waves * 10 ** (-AUDIO_SEVERITIES["gain"][severity - 1] / 20)


@AUDIO.register("band_limit")
def band_limit(waves: Tensor, severity: int, generator: torch.Generator, pipeline: dict[str, Any]) -> Tensor:
    torchaudio = require("torchaudio", "band-limiting audio")
    rate = pipeline["sample_rate"]
    return torchaudio.functional.lowpass_biquad(waves, rate, AUDIO_SEVERITIES["band_limit"][severity - 1] * rate / 2)
