"""Common corruptions at five severities, the protocol of ImageNet-C and MNIST-C (Hendrycks &
Dietterich 2019; Mu & Gilmer 2019), applied to inputs in stored form (uint8 images here; audio
registers its own in ``modalities.audio``), seeded so that every model sees the same corrupted set.

Image corruptions (parameters per severity 1..5 in :data:`IMAGE_SEVERITIES`; sizes scale with the
image side over 28 pixels, so they suit MNIST-sized images and grow with larger ones):

| name | what |
|---|---|
| gaussian_noise | additive N(0, sigma) in [0, 1] pixel units |
| shot_noise | Poisson photon noise, ``poisson(x * lambda) / lambda`` |
| impulse_noise | salt and pepper on a fraction of pixels |
| defocus_blur | a disk kernel of a radius (pixels) |
| motion_blur | a line kernel of a length (pixels) at a random angle per image |
| contrast | pixels pulled towards the image mean, ``(x - mean) c + mean`` |
| brightness | ``x + b``, clipped (grey images: ImageNet-C's HSV value shift) |
| pixelate | box-downsampled by a factor, then enlarged with nearest neighbours |
| jpeg | JPEG at a quality (PIL) |
| elastic | a smooth random displacement field (``torchvision.transforms.v2.functional.elastic``) |
| occlusion | a black square of a fraction of the side at a random place |

Mean corruption error (:func:`corruption_summary`): the error per corruption averaged over the
severities, then over corruptions; against a baseline run's errors, Hendrycks & Dietterich's
normalised ``mce`` (sum over severities of the model's error over the baseline's, averaged over
corruptions) and ``relative_mce`` (the same for the error's rise above each model's clean error).
"""

from __future__ import annotations

import io
import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

from ..errors import ConfigError
from ..registry import Registry

SEVERITIES = (1, 2, 3, 4, 5)
#: the seed every corruption draws from (with the severity), so that all models see the same set
SEED = 2019

Corruption = Callable[[Tensor, int, torch.Generator, dict[str, Any]], Tensor]
"""(stored inputs (N, ...), severity 1..5, generator, the run's input pipeline) -> corrupted inputs"""

#: modality -> its corruptions; a modality package adds its own with :func:`corruption_registry`
CORRUPTIONS: dict[str, Registry[Corruption]] = {}


def corruption_registry(modality: str) -> Registry[Corruption]:
    """The registry of ``modality``'s corruptions, created on first use."""
    if modality not in CORRUPTIONS:
        CORRUPTIONS[modality] = Registry(f"{modality} corruption", builtin_modules=("capsmm.evaluation.corruptions",))
    return CORRUPTIONS[modality]


IMAGE = corruption_registry("image")

IMAGE_SEVERITIES: dict[str, tuple[float, ...]] = {
    "gaussian_noise": (0.08, 0.12, 0.18, 0.26, 0.38),
    "shot_noise": (60, 25, 12, 5, 3),
    "impulse_noise": (0.03, 0.06, 0.09, 0.17, 0.27),
    "defocus_blur": (0.75, 1.0, 1.5, 2.0, 2.5),
    "motion_blur": (3, 5, 7, 9, 11),
    "contrast": (0.4, 0.3, 0.2, 0.1, 0.05),
    "brightness": (0.1, 0.2, 0.3, 0.4, 0.5),
    "pixelate": (0.5, 0.4, 0.33, 0.25, 0.2),
    "jpeg": (25, 18, 15, 10, 7),
    "elastic": (0.5, 1.0, 1.5, 2.0, 2.5),
    "occlusion": (0.2, 0.3, 0.4, 0.5, 0.6),
}


def _unit(images: Tensor) -> Tensor:
    return images.float() / 255


def _stored(x: Tensor) -> Tensor:
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def _scale(images: Tensor) -> float:
    return max(1.0, images.shape[-1] / 28)


def _convolve(images: Tensor, kernels: Tensor) -> Tensor:
    """Each image (N, C, H, W, floats) convolved with its own (N, k, k) kernel, reflect-padded."""
    n, c, h, w = images.shape
    k = kernels.shape[-1]
    padded = F.pad(images.reshape(1, n * c, h, w), (k // 2,) * 4, mode="reflect" if k // 2 < min(h, w) else "replicate")
    weight = kernels.repeat_interleave(c, dim=0)[:, None]
    return F.conv2d(padded, weight, groups=n * c).reshape(n, c, h, w)


@IMAGE.register("gaussian_noise")
def gaussian_noise(images: Tensor, severity: int, generator: torch.Generator, pipeline: dict[str, Any]) -> Tensor:
    sigma = IMAGE_SEVERITIES["gaussian_noise"][severity - 1]
    return _stored(_unit(images) + sigma * torch.randn(images.shape, generator=generator))


@IMAGE.register("shot_noise")
def shot_noise(images: Tensor, severity: int, generator: torch.Generator, pipeline: dict[str, Any]) -> Tensor:
    photons = IMAGE_SEVERITIES["shot_noise"][severity - 1]
    return _stored(torch.poisson(_unit(images) * photons, generator=generator) / photons)


@IMAGE.register("impulse_noise")
def impulse_noise(images: Tensor, severity: int, generator: torch.Generator, pipeline: dict[str, Any]) -> Tensor:
    amount = IMAGE_SEVERITIES["impulse_noise"][severity - 1]
    draw = torch.rand(images.shape, generator=generator)
    salt = torch.rand(images.shape, generator=generator) < 0.5
    noisy = torch.where(salt, torch.full_like(images, 255), torch.zeros_like(images))
    return torch.where(draw < amount, noisy, images)


def _disk(radius: float) -> Tensor:
    """A normalised disk kernel of ``radius`` pixels, antialiased by 4x4 supersampling at its edge."""
    half = math.ceil(radius)
    fine = -half - 0.5 + (torch.arange(4 * (2 * half + 1)) + 0.5) / 4  # sub-pixel centres across the kernel
    inside = ((fine[:, None] ** 2 + fine[None] ** 2) <= radius**2).float()
    kernel = F.avg_pool2d(inside[None, None], 4)[0, 0]
    return kernel / kernel.sum()


@IMAGE.register("defocus_blur")
def defocus_blur(images: Tensor, severity: int, generator: torch.Generator, pipeline: dict[str, Any]) -> Tensor:
    kernel = _disk(IMAGE_SEVERITIES["defocus_blur"][severity - 1] * _scale(images))
    return _stored(_convolve(_unit(images), kernel.expand(len(images), -1, -1)))


@IMAGE.register("motion_blur")
def motion_blur(images: Tensor, severity: int, generator: torch.Generator, pipeline: dict[str, Any]) -> Tensor:
    length = round(IMAGE_SEVERITIES["motion_blur"][severity - 1] * _scale(images)) | 1
    angles = torch.rand(len(images), generator=generator) * math.pi
    positions = torch.linspace(-(length // 2), length // 2, 4 * length)  # samples along the line through the centre
    kernels = torch.zeros(len(images), length, length)
    rows = (positions[None] * angles.sin()[:, None]).round().long() + length // 2
    cols = (positions[None] * angles.cos()[:, None]).round().long() + length // 2
    kernels[torch.arange(len(images))[:, None], rows, cols] = 1.0
    return _stored(_convolve(_unit(images), kernels / kernels.sum((1, 2), keepdim=True)))


@IMAGE.register("contrast")
def contrast(images: Tensor, severity: int, generator: torch.Generator, pipeline: dict[str, Any]) -> Tensor:
    c = IMAGE_SEVERITIES["contrast"][severity - 1]
    x = _unit(images)
    mean = x.mean((1, 2, 3), keepdim=True)
    return _stored((x - mean) * c + mean)


@IMAGE.register("brightness")
def brightness(images: Tensor, severity: int, generator: torch.Generator, pipeline: dict[str, Any]) -> Tensor:
    return _stored(_unit(images) + IMAGE_SEVERITIES["brightness"][severity - 1])


@IMAGE.register("pixelate")
def pixelate(images: Tensor, severity: int, generator: torch.Generator, pipeline: dict[str, Any]) -> Tensor:
    h, w = images.shape[-2:]
    factor = IMAGE_SEVERITIES["pixelate"][severity - 1]
    small = F.interpolate(_unit(images), size=(max(1, round(h * factor)), max(1, round(w * factor))), mode="area")
    return _stored(F.interpolate(small, size=(h, w), mode="nearest"))


@IMAGE.register("jpeg")
def jpeg(images: Tensor, severity: int, generator: torch.Generator, pipeline: dict[str, Any]) -> Tensor:
    """Encoded and decoded by PIL (torchvision's JPEG codec is deprecated since 0.29)."""
    from PIL import Image

    quality = int(IMAGE_SEVERITIES["jpeg"][severity - 1])
    decoded = []
    for image in images.permute(0, 2, 3, 1).numpy():
        buffer = io.BytesIO()
        Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, "JPEG", quality=quality)
        decoded.append(torch.from_numpy(np.asarray(Image.open(buffer)).copy()).reshape(image.shape))
    return torch.stack(decoded).permute(0, 3, 1, 2).contiguous()


@IMAGE.register("elastic")
def elastic(images: Tensor, severity: int, generator: torch.Generator, pipeline: dict[str, Any]) -> Tensor:
    """Each image warped by its own smooth random field (uniform noise blurred with sigma 3 px per
    28 px of side, scaled so that its largest displacement is ``severity``'s number of pixels x the size scale)."""
    n, _, h, w = images.shape
    sigma = 3.0 * w / 28
    size = min(2 * math.ceil(3 * sigma) + 1, 2 * min(h, w) - 1)  # reflect padding needs a kernel under twice the side
    field = torch.rand(n, 2, h, w, generator=generator) * 2 - 1
    field = TF.gaussian_blur(field, [size, size], [sigma, sigma])
    pixels = IMAGE_SEVERITIES["elastic"][severity - 1] * _scale(images)
    field = field / field.abs().amax((1, 2, 3), keepdim=True).clamp_min(1e-12) * pixels
    displacement = torch.stack([field[:, 0] * 2 / w, field[:, 1] * 2 / h], dim=-1)  # pixels -> [-1, 1] grid units
    warped = [TF.elastic(image, displacement[i:i + 1], interpolation=TF.InterpolationMode.BILINEAR) for i, image in enumerate(_unit(images))]
    return _stored(torch.stack(warped))


@IMAGE.register("occlusion")
def occlusion(images: Tensor, severity: int, generator: torch.Generator, pipeline: dict[str, Any]) -> Tensor:
    n, _, h, w = images.shape
    side_h, side_w = (max(1, round(s * IMAGE_SEVERITIES["occlusion"][severity - 1])) for s in (h, w))
    top = torch.randint(0, h - side_h + 1, (n,), generator=generator)
    left = torch.randint(0, w - side_w + 1, (n,), generator=generator)
    rows, cols = torch.arange(h), torch.arange(w)
    inside = ((rows[None] >= top[:, None]) & (rows[None] < top[:, None] + side_h))[:, :, None] & \
             ((cols[None] >= left[:, None]) & (cols[None] < left[:, None] + side_w))[:, None, :]
    return images.masked_fill(inside[:, None], 0)


def corruption_names(modality: str, text: str) -> list[str]:
    """``all`` or ``NAME,NAME`` -> the corruptions of ``modality``; an unknown name is a :class:`ConfigError`."""
    registry = corruption_registry(modality)
    if text.strip() == "all":
        return registry.names()
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in registry]
    if unknown or not names:
        raise ConfigError(f"unknown {modality} corruption '{unknown[0] if unknown else text}'; valid: all, {', '.join(registry.names())}")
    return names


def corrupt(modality: str, name: str, inputs: Tensor, severity: int, pipeline: dict[str, Any]) -> Tensor:
    """``inputs`` (stored form, on the CPU) under corruption ``name`` at ``severity``, seeded."""
    generator = torch.Generator().manual_seed(SEED + 1_000 * severity)
    return corruption_registry(modality).get(name)(inputs.cpu(), severity, generator, pipeline)


def corruption_summary(errors: Mapping[str, Sequence[float]], clean_error: float,
                       baseline: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``corruption_error`` per corruption (mean over severities) and ``mce`` (their mean); with a
    ``baseline`` (its ``corruptions`` and ``clean_error``), ``mce_vs_baseline`` and
    ``relative_mce_vs_baseline`` over the corruptions both have (module docstring)."""
    per = {name: statistics.fmean(values) for name, values in errors.items()}
    summary: dict[str, Any] = {"corruption_error": per, "mce": statistics.fmean(per.values()) if per else None}
    if baseline is not None:
        shared = [name for name in errors if name in baseline["corruptions"]]
        if not shared:
            raise ConfigError("the baseline's evaluation has none of these corruptions; evaluate it with the same --corruptions")
        theirs = baseline["corruptions"]
        summary["mce_vs_baseline"] = statistics.fmean(sum(errors[c]) / max(sum(theirs[c]), 1e-12) for c in shared)
        # the rise above the clean error, relative to the baseline's rise: a corruption the baseline does not suffer
        # from (its errors at or below its clean error) cannot normalise anything, and is left out and named
        rises = {c: sum(e - baseline["clean_error"] for e in theirs[c]) for c in shared}
        usable = [c for c in shared if rises[c] > 0]
        summary["relative_mce_vs_baseline"] = (statistics.fmean(sum(e - clean_error for e in errors[c]) / rises[c] for c in usable)
                                               if usable else None)
        summary["relative_mce_left_out"] = sorted(set(shared) - set(usable))
    return summary
