"""Test-time corruption of one modality: what a joint prediction does when a modality carries nothing
(noise, silence or a blank image, a signal of another kind), against the clean modalities alone.

Corruptions are deterministic (a stream of the run's seed per variant) and keep each sample's label,
so the joint error with a corrupted modality compares directly with the error of the other
modalities alone.

| stored inputs | corruptions |
|---|---|
| images (uint8 N, C, H, W) | ``noise`` (uniform random pixels), ``blank`` (all black) |
| waveforms (float N, T) | ``noise`` (white, at the clean clips' median RMS), ``silence``, ``tones`` (a sine of 150-3000 Hz at that RMS) |
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from .data import ModalSplit
from .streams import Purpose, stream


def _median_rms(waves: Tensor) -> Tensor:
    return waves.float().pow(2).mean(dim=1).sqrt().median()


def _noise(inputs: Tensor, generator: torch.Generator) -> Tensor:
    if inputs.dtype == torch.uint8:
        return torch.randint(0, 256, inputs.shape, generator=generator, dtype=torch.uint8)
    return torch.randn(inputs.shape, generator=generator) * _median_rms(inputs)


def _blank(inputs: Tensor, generator: torch.Generator) -> Tensor:
    return torch.zeros_like(inputs)


def _tones(inputs: Tensor, generator: torch.Generator) -> Tensor:
    n, t = inputs.shape
    frequency = 150 + torch.rand(n, 1, generator=generator) * 2850  # cycles per sample at an assumed 8 kHz: a
    phase = torch.rand(n, 1, generator=generator) * 2 * math.pi     # scale-free choice, as only the shape matters
    steps = torch.arange(t)[None].float() / 8000
    return torch.sin(2 * math.pi * frequency * steps + phase) * _median_rms(inputs) * math.sqrt(2)


def corruptions_for(inputs: Tensor) -> dict[str, Callable[[Tensor, torch.Generator], Tensor]]:
    """The corruptions that apply to a modality stored as ``inputs``."""
    if inputs.dtype == torch.uint8:
        return {"noise": _noise, "blank": _blank}
    if inputs.ndim == 2 and inputs.is_floating_point():
        return {"noise": _noise, "silence": _blank, "tones": _tones}
    return {"noise": _noise}


def corrupted_splits(test: dict[str, ModalSplit], seed: int) -> dict[str, dict[str, ModalSplit]]:
    """``"audio=noise"`` -> the test splits with that modality corrupted (the others clean), each
    variant drawn by its own stream of ``seed``."""
    variants = {}
    for name, split in test.items():
        for kind, corrupt in corruptions_for(split.inputs).items():
            generator = stream(seed, Purpose.CORRUPTION, len(variants))
            corrupted = ModalSplit(corrupt(split.inputs.cpu(), generator).to(split.inputs.device), split.labels, split.prepare)
            variants[f"{name}={kind}"] = {**test, name: corrupted}
    return variants
