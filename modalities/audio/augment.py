"""Waveform augmentations of training batches, on the batch's device, drawn from the loader's generator
(so a seeded run sees the same augmented batches, resumed or not)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


def time_shift(waves: Tensor, generator: torch.Generator, max_samples: int) -> Tensor:
    """Each clip moved by a random whole number of samples in [-max, max], zero-filled (not wrapped)."""
    b, t = waves.shape
    shifts = torch.randint(-max_samples, max_samples + 1, (b,), generator=generator).to(waves.device)
    padded = F.pad(waves, (max_samples, max_samples))
    index = torch.arange(t, device=waves.device)[None] + max_samples - shifts[:, None]  # (B, T)
    return padded.gather(1, index)


def gain(waves: Tensor, generator: torch.Generator, max_db: float) -> Tensor:
    """Each clip scaled by a random gain in [-max_db, +max_db] dB."""
    db = (torch.rand(len(waves), generator=generator) * 2 - 1) * max_db
    return waves * (10 ** (db / 20)).to(waves.device, waves.dtype)[:, None]


def additive_noise(waves: Tensor, generator: torch.Generator, min_snr_db: float, spread_db: float = 20.0) -> Tensor:
    """White noise at a random signal-to-noise ratio in [min, min + spread] dB of each clip's own power."""
    snr = min_snr_db + torch.rand(len(waves), generator=generator) * spread_db
    power = waves.pow(2).mean(dim=1).clamp_min(1e-10)
    noise_std = (power / 10 ** (snr.to(waves.device) / 10)).sqrt()
    noise = torch.randn(waves.shape, generator=generator).to(waves.device, waves.dtype)
    return waves + noise * noise_std[:, None]


def speed(waves: Tensor, generator: torch.Generator, max_change: float) -> Tensor:
    """Each clip played faster or slower by a random factor in [1 - max, 1 + max] (tempo and pitch, as
    resampling does: Ko et al.'s speed perturbation), then cut or zero-padded back to its length."""
    b, t = waves.shape
    factors = 1 + (torch.rand(b, generator=generator) * 2 - 1) * max_change
    positions = torch.arange(t, device=waves.device)[None] * factors.to(waves.device)[:, None]  # (B, T) where each output sample reads
    left = positions.floor().long().clamp(max=t - 1)
    right = (left + 1).clamp(max=t - 1)
    weight = (positions - left).clamp(0, 1)
    resampled = waves.gather(1, left) * (1 - weight) + waves.gather(1, right) * weight
    return torch.where(positions < t - 1, resampled, torch.zeros((), dtype=waves.dtype, device=waves.device))


def waveform_augmentation(sample_rate: int, shift: float = 0.0, gain_db: float = 0.0, noise_snr: float | None = None,
                          speed_change: float = 0.0, p: float = 1.0) -> Callable[[Tensor, torch.Generator], Tensor] | None:
    """The augmentations asked for, in the order speed, shift, gain, noise, each applied to a clip with
    probability ``p`` (drawn per clip and augmentation); None when none is asked for.

    ``p`` < 1 matters most for noise: clean clips end in exact digital silence (zero padding), noisy
    ones never do, and a model that only ever heard noisy clips reads clean ones badly. With ``p`` = 1
    no coin is drawn, so the random stream is what it was before ``p`` existed."""
    steps: list[Callable[[Tensor, torch.Generator], Tensor]] = []
    if speed_change:
        steps.append(lambda w, g: speed(w, g, speed_change))
    if shift:
        steps.append(lambda w, g: time_shift(w, g, max(1, round(shift * sample_rate))))
    if gain_db:
        steps.append(lambda w, g: gain(w, g, gain_db))
    if noise_snr is not None:
        steps.append(lambda w, g: additive_noise(w, g, noise_snr))
    if not steps:
        return None

    def augment(waves: Tensor, generator: torch.Generator) -> Tensor:
        for step in steps:
            changed = step(waves, generator)
            if p < 1:
                chosen = (torch.rand(len(waves), generator=generator) < p).to(waves.device)
                changed = torch.where(chosen[:, None], changed, waves)
            waves = changed
        return waves

    return augment
