"""A joint prediction that leans on each modality as far as its pattern looks like the ones it was
trained on, so that an uninformative modality (noise, silence, an unknown source) cannot ruin it.

The joint CAP score is the cosine between the joint pattern and every class prototype, over the
slices of the modalities present. With a gate ``g_m`` in [0, 1] per modality and sample, the gated
score is the cosine of the gated concatenations::

    score_c = sum_m g_m^2 p_m . mu_mc / ( sqrt(sum_m g_m^2 |p_m|^2) * sqrt(sum_m g_m^2 |mu_mc|^2) )

All gates open: exactly the joint cosine the model was trained with. A gate closed: the score of
the other modalities alone, the missing-modality prediction.

A modality's *typicality* is how close its pattern p_m lies to the nearest class mean of the
clean training pairs, in units of the training patterns' own spread: ``-log`` of the mean over
dimensions of ``(p - mean_c)^2 / var``, minimised over classes (a diagonal Mahalanobis distance,
after Lee et al. 2018). Its gate opens fully above the 5th percentile of the clean training
typicality and closes linearly to zero over the same distance below it again as the median lies
above it; a sample whose most typical modality is below that bar has every gate raised until
that modality counts in full. Typicality needs no label and no other modality, so gating keeps every property of the
joint model: no shared parameters, no gradient between encoders (gates act at inference only;
training optimises the ungated joint loss), any subset of modalities at inference, and added
modalities leave the old ones' predictions unchanged. A modality whose input is constant (a blank
image, digital silence) has its gate shut outright (:func:`constant_samples`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

#: bytes of patterns (on the model's device) a calibration keeps from its first pass for its second; beyond, the second recomputes them
CALIBRATION_CACHE_BYTES = 512 * 2**20
#: the clean typicality quantile above which a gate is fully open
OPEN_QUANTILE = 0.05
#: bounds that keep an uncalibrated gate open whatever the typicality
NEVER = (-1e9, -1e9 + 1)
#: the typicality of a sample whose input is constant: below any threshold, the uncalibrated ones (NEVER) too
CONSTANT_INPUT = -1e12


def constant_samples(inputs: Any) -> dict[str, Tensor]:
    """Per modality of a multimodal batch, (B,) True where a sample's input holds one value throughout
    (a blank image, digital silence). Such an input carries no information, whatever pattern the
    encoder makes of it, and its typicality alone cannot tell: a black Fashion-MNIST image reads as
    typical as a real one. Its gate is shut (:data:`CONSTANT_INPUT`)."""
    if not isinstance(inputs, Mapping) or len(inputs) < 2:
        return {}
    return {name: torch.eq(*torch.aminmax(x.flatten(1), dim=1)) for name, x in inputs.items()}


def modality_terms(head: Any, patterns: Sequence[Tensor], slices: Sequence[int], groups: Sequence[Sequence[int]]
                   ) -> tuple[Tensor, Tensor, Tensor]:
    """Per modality group (positions in ``patterns``): dot products with every prototype (M, B, C),
    squared pattern norms (M, B), squared prototype norms (M, C)."""
    dots, pattern_norms, prototype_norms = [], [], []
    for group in groups:
        p = torch.cat([patterns[i] for i in group], dim=1).float()
        mu = head.prototype_slices([slices[i] for i in group]).float()
        dots.append(p @ mu.T)
        pattern_norms.append(p.pow(2).sum(1))
        prototype_norms.append(mu.pow(2).sum(1))
    return torch.stack(dots), torch.stack(pattern_norms), torch.stack(prototype_norms)


def gated_cosine(dots: Tensor, pattern_norms: Tensor, prototype_norms: Tensor, gates: Tensor, temperature: float) -> Tensor:
    """(B, C) gated joint cosine scores / temperature (module docstring); ``gates`` (M, B)."""
    w = gates.pow(2)
    numerator = (w[:, :, None] * dots).sum(0)
    pattern = (w * pattern_norms).sum(0).clamp_min(1e-12).sqrt()  # (B,)
    prototype = (w[:, :, None] * prototype_norms[:, None, :]).sum(0).clamp_min(1e-12).sqrt()  # (B, C)
    return numerator / (pattern[:, None] * prototype) / temperature


class ModalityGate(nn.Module):
    """Per modality: the clean training patterns' class means and per-dimension variance, and the
    typicality thresholds of its gate (buffers, saved with the model). Uncalibrated, gates stay open."""

    def __init__(self, widths: Mapping[str, int], num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.modalities: list[str] = []
        self.register_buffer("low", torch.empty(0))
        self.register_buffer("high", torch.empty(0))
        for name, width in widths.items():
            self.add(name, width)

    def add(self, modality: str, width: int) -> None:
        self.modalities.append(modality)
        self.register_buffer(f"means_{modality}", torch.zeros(self.num_classes, width, device=self.low.device))
        self.register_buffer(f"inverse_variance_{modality}", torch.ones(width, device=self.low.device))
        self.low = torch.cat([self.low, self.low.new_full((1,), NEVER[0])])
        self.high = torch.cat([self.high, self.high.new_full((1,), NEVER[1])])

    def typicality(self, modality: str, pattern: Tensor) -> Tensor:
        """(B,): ``-log`` of the pattern's standardised squared distance to the nearest class mean."""
        means, weight = getattr(self, f"means_{modality}"), getattr(self, f"inverse_variance_{modality}")
        p = pattern.float()
        squared = (p.pow(2) * weight).sum(1)[:, None] - 2 * (p * weight) @ means.T + (means.pow(2) * weight).sum(1)[None]
        return -torch.log(squared.clamp_min(0).min(dim=1).values / p.shape[1] + 1e-12)

    def gates(self, names: Sequence[str], typical: Tensor) -> Tensor:
        """(M, B) gates of the modalities ``names`` from their typicality (M, B).

        On the scale ``r = (typicality - low) / (high - low)`` (1: fully typical, 0: shut) each gate is
        ``clamp(r, 0, 1)``, shifted for a sample whose most typical modality is below 1 so that this
        modality counts in full: a sample whose every modality looks unusual leans on the least
        unusual one, instead of on none."""
        rows = [self.modalities.index(name) for name in names]
        low, high = self.low[rows][:, None], self.high[rows][:, None]
        r = (typical - low) / (high - low).clamp_min(1e-6)
        shortfall = (1 - r.max(dim=0).values).clamp_min(0)
        return (r + shortfall).clamp(0, 1)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        for name, buffer in self.named_buffers(recurse=False):  # a checkpoint written before gates existed: open gates
            state_dict.setdefault(prefix + name, buffer)
        super()._load_from_state_dict(state_dict, prefix, *args)


def _patterns_by_modality(model: nn.Module, inputs: Any) -> dict[str, Tensor]:
    by_modality: dict[str, list[Tensor]] = {}
    for block in model.iter_blocks(inputs):
        if block.pattern is not None:
            by_modality.setdefault(block.modality, []).append(block.pattern.float())
    return {name: torch.cat(parts, dim=1) for name, parts in by_modality.items()}


@torch.no_grad()
def calibrate_gate(model: nn.Module, loader: Any) -> None:
    """Fit ``model.gate`` to the clean pairs of ``loader``: each modality's class means and pooled
    within-class variance (first pass), then its typicality thresholds (second pass). The first
    pass keeps the patterns for the second while they fit in ``CALIBRATION_CACHE_BYTES``: the
    calibration runs after every epoch, and a second forward pass over the training pairs would
    otherwise cost as much as the first."""
    gate: ModalityGate | None = getattr(model, "gate", None)
    if gate is None:
        return
    was_training = model.training
    model.eval()
    sums: dict[str, Tensor] = {}
    squares: dict[str, Tensor] = {}
    counts = torch.zeros(gate.num_classes)
    kept: list[dict[str, Tensor]] | None = []
    kept_bytes = 0
    for inputs, labels in loader:
        one_hot = torch.nn.functional.one_hot(labels, gate.num_classes).float()
        counts += one_hot.sum(0).cpu()
        patterns = _patterns_by_modality(model, inputs)
        for name, p in patterns.items():
            sums[name] = sums.get(name, 0) + one_hot.T @ p
            squares[name] = squares.get(name, 0) + one_hot.T @ p.pow(2)
        kept_bytes += sum(p.numel() * p.element_size() for p in patterns.values())
        if kept is not None:
            kept.append(patterns)
        if kept_bytes > CALIBRATION_CACHE_BYTES:
            kept = None  # too many pairs to hold: the second pass recomputes them
    present = counts > 0
    for name in sums:
        n = counts.to(sums[name].device)[:, None].clamp_min(1)
        means = sums[name] / n
        within = ((squares[name] - n * means.pow(2)).clamp_min(0)[present.to(means.device)].sum(0) / counts.sum().clamp_min(1))
        getattr(gate, f"means_{name}").copy_(means)
        getattr(gate, f"inverse_variance_{name}").copy_(1 / (within + 1e-6))
    typical: dict[str, list[Tensor]] = {}
    for patterns in kept if kept is not None else (_patterns_by_modality(model, inputs) for inputs, _ in loader):
        for name, p in patterns.items():
            typical.setdefault(name, []).append(gate.typicality(name, p))
    for name, values in typical.items():
        values_ = torch.cat(values)
        high = torch.quantile(values_, OPEN_QUANTILE)
        row = gate.modalities.index(name)
        gate.high[row] = high
        gate.low[row] = high - (values_.median() - high).clamp_min(1e-3)
    model.train(was_training)
