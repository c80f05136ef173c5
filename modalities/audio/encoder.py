"""Log-mel front end and a conv encoder over spectrograms, cut into CAP blocks like the VGGs."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from capsmm.encoder import CAPEncoder, register_encoder
from capsmm.errors import ConfigError
from capsmm.layers import POOL, conv_blocks
from capsmm.optional import require


class LogMel(nn.Module):
    """(B, T) waveform -> (B, 1, n_mels, frames) log-mel spectrogram (``torchaudio.transforms.MelSpectrogram``).

    A module of the encoder, so features are computed on the model's device (GPU included) from
    the raw waveforms a batch carries. 32 ms windows and 10 ms hops at any sample rate.
    """

    def __init__(self, sample_rate: int, n_mels: int = 40) -> None:
        super().__init__()
        torchaudio = require("torchaudio", "the audio front end")
        n_fft = 1 << max(6, round(0.032 * sample_rate - 1).bit_length())  # power of two >= 32 ms
        self.mel = torchaudio.transforms.MelSpectrogram(sample_rate=sample_rate, n_fft=n_fft,
                                                        hop_length=max(1, sample_rate // 100), n_mels=n_mels)

    def forward(self, waves: Tensor) -> Tensor:
        return torch.log(self.mel(waves.float()) + 1e-6).unsqueeze(1)


class AudioConvEncoder(CAPEncoder):
    """Log-mel -> BatchNorm, then conv3x3-BN-ReLU[-pool]-Dropout blocks; the front end belongs to block 0."""

    modality = "audio"

    def __init__(self, sample_rate: int, channels: Sequence[int | str], width_mult: float, dropout: float, n_mels: int) -> None:
        blocks = conv_blocks(1, channels, width_mult, dropout)
        blocks[0] = nn.Sequential(LogMel(sample_rate, n_mels), nn.BatchNorm2d(1), *blocks[0])
        super().__init__(blocks)


AUDIO_CHANNELS: list[int | str] = [16, POOL, 32, POOL, 64, POOL, 64, POOL]


@register_encoder("audio-cnn", modality="audio")
def audio_cnn(*, in_shape: Sequence[int], sample_rate: int = 8000, n_mels: int = 40, width_mult: float = 1.0,
              dropout: float = 0.2) -> AudioConvEncoder:
    """4 conv blocks (16, 32, 64, 64 channels x ``width_mult``) over a log-mel spectrogram of a (T,) waveform."""
    if len(in_shape) != 1:
        raise ConfigError(f"audio-cnn reads waveforms of shape (T,), got {tuple(in_shape)}")
    if width_mult <= 0:
        raise ConfigError(f"width_mult must be > 0, got {width_mult}")
    return AudioConvEncoder(sample_rate, AUDIO_CHANNELS, width_mult, dropout, n_mels)
