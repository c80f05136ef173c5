"""Waveform augmentations of training batches, on the batch's device, drawn from the loader's generator
(so a seeded run sees the same augmented batches, resumed or not)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from capsmm.optional import require

#: speed factors are rounded to the nearest multiple of 1 / SPEED_GRID (0.90, 0.91, ..., 1.10 for
#: ``audio.speed=0.1``): the factor ``n / SPEED_GRID`` is a rational resampling from ``n`` to
#: ``SPEED_GRID`` samples, and a batch resamples once per distinct factor, not once per clip
SPEED_GRID = 100
#: the low-pass of the speed resampling: librosa's "kaiser_best" (torchaudio's resampling tutorial), whose
#: stop band starts at the new Nyquist frequency; the default filter (a 6-zero Hann window) lets a tone
#: 3.5% above it through at -9 dB, this one at below -40 dB (tests/test_audio_speed.py), for twice the arithmetic
SPEED_FILTER = dict(lowpass_filter_width=64, rolloff=0.9475937167399596, resampling_method="sinc_interp_kaiser", beta=14.769656459379492)


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
    resampling does: Ko et al.'s speed perturbation), then cut or zero-padded at the end back to its length.

    The factor is rounded to the grid of :data:`SPEED_GRID`, and each group of clips with the same factor
    is resampled by ``torchaudio.functional.resample``, whose windowed-sinc low-pass (:data:`SPEED_FILTER`)
    keeps what lies above the new Nyquist frequency from folding back (aliasing) when a clip is sped up.
    """
    functional = require("torchaudio", "the audio.speed augmentation").functional
    t = waves.shape[1]
    factors = 1 + (torch.rand(len(waves), generator=generator) * 2 - 1) * max_change
    steps = (factors * SPEED_GRID).round().long().to(waves.device)
    played = waves.clone()
    for step in steps.unique().tolist():
        rows = (steps == step).nonzero().flatten()
        resampled = functional.resample(waves[rows], orig_freq=step, new_freq=SPEED_GRID, **SPEED_FILTER)
        played[rows] = F.pad(resampled, (0, max(0, t - resampled.shape[1])))[:, :t]
    return played


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
