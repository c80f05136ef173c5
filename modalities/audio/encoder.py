"""Log-mel front end and a conv encoder over spectrograms, cut into CAP blocks like the VGGs."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from capsmm.encoder import CAPEncoder, register_encoder
from capsmm.errors import ConfigError
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


M = "M"


class AudioConvEncoder(CAPEncoder):
    """Log-mel -> BatchNorm, then conv3x3-BN-ReLU[-pool]-Dropout blocks; the front end belongs to block 0."""

    modality = "audio"

    def __init__(self, sample_rate: int, channels: Sequence[int | str], width_mult: float, dropout: float, n_mels: int) -> None:
        blocks, in_channels = [], 1
        for index, item in enumerate(channels):
            if item == M:
                continue
            out_channels = max(1, round(int(item) * width_mult))
            layers: list[nn.Module] = [LogMel(sample_rate, n_mels), nn.BatchNorm2d(1)] if not blocks else []
            layers += [nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]
            if index + 1 < len(channels) and channels[index + 1] == M:
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            layers.append(nn.Dropout(dropout))
            blocks.append(nn.Sequential(*layers))
            in_channels = out_channels
        super().__init__(blocks)


AUDIO_CHANNELS: list[int | str] = [16, M, 32, M, 64, M, 64, M]


@register_encoder("audio-cnn", modality="audio")
def audio_cnn(*, in_shape: Sequence[int], sample_rate: int = 8000, n_mels: int = 40, width_mult: float = 1.0,
              dropout: float = 0.2) -> AudioConvEncoder:
    """4 conv blocks (16, 32, 64, 64 channels x ``width_mult``) over a log-mel spectrogram of a (T,) waveform."""
    if len(in_shape) != 1:
        raise ConfigError(f"audio-cnn reads waveforms of shape (T,), got {tuple(in_shape)}")
    if width_mult <= 0:
        raise ConfigError(f"width_mult must be > 0, got {width_mult}")
    return AudioConvEncoder(sample_rate, AUDIO_CHANNELS, width_mult, dropout, n_mels)
