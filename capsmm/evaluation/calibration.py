"""Calibration of predicted probabilities: expected calibration error (Guo et al. 2017, equal-width
confidence bins), negative log-likelihood, Brier score, and the reliability diagram's bins."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

#: equal-width confidence bins of the ECE (the common choice since Guo et al. 2017)
BINS = 15


def calibration(logits: Tensor, labels: Tensor, bins: int = BINS) -> dict[str, Any]:
    """``ece``, ``nll``, ``brier`` and the ``reliability`` bins of (N, C) ``logits`` against ``labels``.

    A sample falls in bin ``b`` when its confidence (the top probability) lies in
    ``[b / bins, (b + 1) / bins)`` (a confidence of 1 in the last bin), as torchmetrics bins it;
    ECE is the sample-weighted mean over bins of ``|accuracy - mean confidence|``. Brier is the
    squared distance of the probability vector to the one-hot label, summed over classes
    (Brier 1950's multi-class form), averaged over samples.
    """
    logits, labels = logits.double(), labels.long().to(logits.device)
    probabilities = logits.softmax(1)
    confidence, predicted = probabilities.max(1)
    correct = (predicted == labels).double()
    index = (confidence * bins).long().clamp(max=bins - 1)
    count = torch.bincount(index, minlength=bins).double()
    confidence_sum = torch.bincount(index, weights=confidence, minlength=bins)
    correct_sum = torch.bincount(index, weights=correct, minlength=bins)
    filled = count > 0
    ece = ((correct_sum - confidence_sum).abs()[filled].sum() / len(labels)).item()
    one_hot = torch.nn.functional.one_hot(labels, probabilities.shape[1]).double()
    return {
        "ece": ece,
        "nll": torch.nn.functional.cross_entropy(logits.clamp_min(-1e30), labels).item(),  # -inf (masked classes) stays finite
        "brier": (probabilities - one_hot).pow(2).sum(1).mean().item(),
        "reliability": {
            "bins": bins,
            "count": count.long().tolist(),
            "confidence": [v if f else None for v, f in zip((confidence_sum / count.clamp_min(1)).tolist(), filled.tolist())],
            "accuracy": [v if f else None for v, f in zip((correct_sum / count.clamp_min(1)).tolist(), filled.tolist())],
        },
    }
