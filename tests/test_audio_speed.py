"""The speed augmentation (modalities.audio.augment.speed): the right frequency, no aliasing, the clip's
length and its last sample kept, the random factors of the generator."""

import math

import torch

from modalities.audio.augment import SPEED_GRID, speed

RATE = 8000


def tones(freq: float, clips: int, seconds: float = 1.0) -> torch.Tensor:
    return torch.sin(2 * math.pi * freq * torch.arange(int(seconds * RATE)) / RATE)[None].repeat(clips, 1)


def factors(seed: int, clips: int, max_change: float) -> torch.Tensor:
    """The factors speed() draws from a generator of ``seed``, on its grid."""
    drawn = 1 + (torch.rand(clips, generator=torch.Generator().manual_seed(seed)) * 2 - 1) * max_change
    return (drawn * SPEED_GRID).round() / SPEED_GRID


def spectrum(waves: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(power per bin, bin frequencies) of samples 1000-5000 (clear of the ends), Hann-windowed."""
    part = waves[:, 1000:5000]
    return torch.fft.rfft(part * torch.hann_window(part.shape[1])).abs().pow(2), torch.fft.rfftfreq(part.shape[1], 1 / RATE)


def test_a_tone_lands_at_its_sped_up_frequency():
    played = speed(tones(500, 60), torch.Generator().manual_seed(1), 0.2)
    power, freqs = spectrum(played)
    expected = 500 * factors(1, 60, 0.2)
    assert (freqs[power.argmax(1)] - expected).abs().max() <= 2  # the bin width
    assert expected.std() > 20 and played.shape == (60, RATE)


def test_a_tone_near_nyquist_does_not_alias():
    # 3 kHz at 8 kHz, sped up by up to 1.5x: above 4 kHz it must vanish, not fold back below 4 kHz
    clean = tones(3000, 200)
    played = speed(clean, torch.Generator().manual_seed(0), 0.5)
    power, freqs = spectrum(played)
    energy = power.sum(1) / spectrum(clean)[0].sum(1)
    expected = 3000 * factors(0, 200, 0.5)
    above, within = expected >= 4100, expected <= 3500
    assert above.sum() > 10 and within.sum() > 10
    assert energy[above].max() < 1e-4  # over 40 dB down
    near = (freqs[None] - expected[:, None]).abs() <= 20
    assert ((power * near).sum(1)[within] / power.sum(1)[within]).min() > 0.99  # no spurious peak next to the tone
    assert (energy[within] - 1).abs().max() < 0.02  # the pass band keeps the tone's level


def test_the_last_sample_survives_and_a_factor_of_one_changes_nothing():
    clean = tones(300, 200) + 0.5
    played = speed(clean, torch.Generator().manual_seed(2), 0.1)
    grid = factors(2, 200, 0.1)
    same, slower = grid == 1, grid < 1
    assert same.any() and torch.equal(played[same], clean[same])
    # slowed down, the last sample reads the inside of the clip (at (T - 1) * factor): neither zeroed nor faded
    inside = torch.sin(2 * math.pi * 300 * (RATE - 1) * grid / RATE) + 0.5
    assert slower.sum() > 10 and (played[slower, -1] - inside[slower]).abs().max() < 0.01
    assert (played[grid > 1, -1] == 0).all()  # sped up: zero-padded at the end
