"""Out-of-distribution detection: scores that should be higher for inputs like the training set's,
and how well they separate a test set from an OOD set (AUROC, FPR at 95% TPR).

Scores (higher = more in-distribution):

- ``msp``: the maximum softmax probability (Hendrycks & Gimpel 2017), the baseline;
- ``cap_similarity``: the largest cosine between the sample's CAP pattern and a class prototype,
  a score a softmax classifier does not have;
- ``energy``: ``logsumexp`` of the logits, the negative free energy (Liu et al. 2020).

In-distribution samples are the positives.
"""

from __future__ import annotations

import math

import torch
from scipy.stats import rankdata
from torch import Tensor


def ood_scores(logits: Tensor, similarity: Tensor | None) -> dict[str, Tensor]:
    """The scores of (N, C) ``logits`` and CAP similarities (None: a model without prototypes)."""
    logits = logits.double()
    finite = logits.clamp_min(-1e30)  # classes masked out of the softmax (-inf) add nothing to energy
    scores = {"msp": logits.softmax(1).max(1).values, "energy": finite.logsumexp(1)}
    if similarity is not None:
        scores["cap_similarity"] = similarity.double().max(1).values
    return scores


def auroc(inside: Tensor, outside: Tensor) -> float:
    """Area under the ROC curve of telling ``inside`` (positives) from ``outside`` by the score: the
    probability that an inside sample scores above an outside one, ties counting one half (the
    Mann-Whitney U statistic over the mid-ranks)."""
    ranks = rankdata(torch.cat([inside, outside]).double().cpu().numpy())
    n, m = len(inside), len(outside)
    return float((ranks[:n].sum() - n * (n + 1) / 2) / (n * m))


def fpr_at_tpr(inside: Tensor, outside: Tensor, tpr: float = 0.95) -> float:
    """The fraction of ``outside`` accepted at the highest threshold that accepts at least ``tpr``
    of ``inside`` (a sample is accepted when its score is at least the threshold)."""
    ordered = inside.double().sort(descending=True).values
    threshold = ordered[max(0, math.ceil(tpr * len(ordered)) - 1)]
    return (outside.double() >= threshold).double().mean().item()


def detection(inside: dict[str, Tensor], outside: dict[str, Tensor]) -> dict[str, dict[str, float]]:
    """``auroc`` and ``fpr95`` of every score both sets have."""
    names = [name for name in inside if name in outside]
    return {"auroc": {name: auroc(inside[name], outside[name]) for name in names},
            "fpr95": {name: fpr_at_tpr(inside[name], outside[name]) for name in names}}
