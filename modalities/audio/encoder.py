"""Audio encoders over spectrogram features, cut into CAP blocks: the front end (log-mel or MFCC,
normalised per batch or per utterance, SpecAugment masks in training) belongs to block 0.

- ``audio-cnn``: 4 conv blocks (16, 32, 64, 64 channels), like the VGGs.
- ``audio-resnet``: 4 residual blocks (32, 64, 128, 128 channels); the skip connection stays inside
  its block, so the stop-gradient still falls between blocks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from capsmm.encoder import CAPEncoder, register_encoder
from capsmm.errors import ConfigError
from capsmm.layers import POOL, activation, conv_blocks
from capsmm.optional import require

FEATURES = ("logmel", "mfcc")
NORMALIZATIONS = ("batch", "utterance")


class AudioFrontEnd(nn.Module):
    """(B, T) waveform -> (B, 1, bins, frames) features, on the model's device.

    ``features``: ``logmel`` (log of a ``torchaudio.transforms.MelSpectrogram``, ``n_mels`` bins) or
    ``mfcc`` (``torchaudio.transforms.MFCC``, ``n_mels // 2`` coefficients over ``n_mels`` mel bins);
    32 ms windows, 10 ms hops at any sample rate. ``normalize``: ``batch`` (one BatchNorm over every
    bin and frame: the level of the training set) or ``utterance`` (each bin to zero mean and unit
    variance over the clip's frames, which removes the clip's gain and a microphone's fixed
    colouring). ``time_mask`` / ``freq_mask`` > 0: SpecAugment (Park et al. 2019) in training mode,
    one mask of up to that many frames / bins per clip (``torchaudio.transforms.TimeMasking``,
    ``FrequencyMasking``).
    """

    def __init__(self, sample_rate: int, n_mels: int = 40, features: str = "logmel", normalize: str = "batch",
                 time_mask: int = 0, freq_mask: int = 0) -> None:
        super().__init__()
        torchaudio = require("torchaudio", "the audio front end")
        if features not in FEATURES or normalize not in NORMALIZATIONS:
            raise ConfigError(f"audio front end: features must be one of {', '.join(FEATURES)} and normalize one of "
                              f"{', '.join(NORMALIZATIONS)}, got {features!r}, {normalize!r}")
        n_fft = 1 << max(6, round(0.032 * sample_rate - 1).bit_length())  # power of two >= 32 ms
        mel = {"n_fft": n_fft, "hop_length": max(1, sample_rate // 100), "n_mels": n_mels}
        if features == "mfcc":
            self.features = torchaudio.transforms.MFCC(sample_rate=sample_rate, n_mfcc=n_mels // 2, log_mels=True, melkwargs=mel)
        else:
            self.features = torchaudio.transforms.MelSpectrogram(sample_rate=sample_rate, **mel)
        self.log = features == "logmel"
        self.norm = nn.BatchNorm2d(1) if normalize == "batch" else None
        self.masks = nn.Sequential(*([torchaudio.transforms.TimeMasking(time_mask, iid_masks=True)] if time_mask else []),
                                   *([torchaudio.transforms.FrequencyMasking(freq_mask, iid_masks=True)] if freq_mask else []))

    def forward(self, waves: Tensor) -> Tensor:
        x = self.features(waves.float())
        x = torch.log(x + 1e-6).unsqueeze(1) if self.log else x.unsqueeze(1)  # (B, 1, bins, frames)
        if self.norm is not None:
            x = self.norm(x)
        else:
            x = (x - x.mean(dim=-1, keepdim=True)) / (x.std(dim=-1, keepdim=True) + 1e-5)
        if self.training and len(self.masks):
            x = self.masks(x)
        return x


class ResidualBlock(nn.Module):
    """conv3x3-BN-act-conv3x3-BN plus the input (1x1 conv-BN when the width changes), act, 2x2
    max-pool, dropout: one CAP block, its skip connection inside it."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float, nonlinearity: str = "relu") -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels), activation(nonlinearity),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels))
        self.shortcut = nn.Identity() if in_channels == out_channels else nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels))
        self.out = nn.Sequential(activation(nonlinearity), nn.MaxPool2d(2, ceil_mode=True), nn.Dropout(dropout))

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.body(x) + self.shortcut(x))


class AudioEncoder(CAPEncoder):
    """A front end followed by conv or residual blocks; the front end belongs to block 0."""

    modality = "audio"

    def __init__(self, front_end: AudioFrontEnd, blocks: Sequence[nn.Module]) -> None:
        blocks = list(blocks)
        blocks[0] = nn.Sequential(front_end, blocks[0])
        super().__init__(blocks)


AUDIO_CHANNELS: list[int | str] = [16, POOL, 32, POOL, 64, POOL, 64, POOL]
RESNET_CHANNELS = [32, 64, 128, 128]


def _register(name: str, normalize: str, body: Callable[[float, float, str], list[nn.Module]], doc: str) -> None:
    """Register an audio encoder: the front end's options (``normalize`` its default), then ``body``'s blocks."""

    @register_encoder(name, modality="audio")
    def build(*, in_shape: Sequence[int], sample_rate: int = 8000, n_mels: int = 40, width_mult: float = 1.0, dropout: float = 0.2,
              features: str = "logmel", normalize: str = normalize, time_mask: int = 0, freq_mask: int = 0,
              activation: str = "relu") -> AudioEncoder:
        if len(in_shape) != 1:
            raise ConfigError(f"audio encoders read waveforms of shape (T,), got {tuple(in_shape)}")
        if width_mult <= 0:
            raise ConfigError(f"width_mult must be > 0, got {width_mult}")
        front = AudioFrontEnd(sample_rate, n_mels, features, normalize, time_mask, freq_mask)
        return AudioEncoder(front, body(width_mult, dropout, activation))

    build.__name__ = build.__qualname__ = name.replace("-", "_")
    build.__doc__ = doc


def _resnet_body(width_mult: float, dropout: float, nonlinearity: str) -> list[nn.Module]:
    widths = [max(1, round(c * width_mult)) for c in RESNET_CHANNELS]
    return [ResidualBlock(c_in, c_out, dropout, nonlinearity) for c_in, c_out in zip([1, *widths[:-1]], widths)]


_register("audio-cnn", "batch", lambda width_mult, dropout, nonlinearity: list(conv_blocks(1, AUDIO_CHANNELS, width_mult, dropout, nonlinearity)),
          "4 conv blocks (16, 32, 64, 64 channels x ``width_mult``) over spectrogram features of a (T,) waveform.")
_register("audio-resnet", "utterance", _resnet_body,
          "4 residual blocks (32, 64, 128, 128 channels x ``width_mult``, each pooling 2x2) over spectrogram features.")
