"""Cross-modal retrieval through a modality-free code: each item's class-similarity profile."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def class_profile(logits: Tensor) -> Tensor:
    """(N, C) class probabilities: a code that means the same thing whatever modality produced it."""
    return logits.float().softmax(dim=1)


def retrieval_metrics(query_codes: Tensor, query_labels: Tensor, item_codes: Tensor, item_labels: Tensor) -> dict[str, float]:
    """Rank every item for every query by cosine similarity of codes; an item is relevant when it
    has the query's class.

    ``recall@1``: fraction of queries whose first item is relevant. ``map``: mean over queries of
    the average precision, AP = (1/R) sum_k precision@k * rel_k over the whole ranking (R relevant
    items); queries without any relevant item are left out.
    """
    similarity = F.normalize(query_codes.float(), dim=1) @ F.normalize(item_codes.float(), dim=1).T  # (Q, I)
    order = similarity.argsort(dim=1, descending=True, stable=True)
    relevant = (item_labels[order] == query_labels[:, None]).float()  # (Q, I) in ranked order
    hits = relevant.sum(1)
    ranks = torch.arange(1, relevant.shape[1] + 1, device=relevant.device)
    precision = relevant.cumsum(1) / ranks
    has_relevant = hits > 0
    average_precision = (precision * relevant).sum(1)[has_relevant] / hits[has_relevant]
    return {"recall@1": relevant[:, 0].mean().item(), "map": average_precision.mean().item() if has_relevant.any() else float("nan")}
