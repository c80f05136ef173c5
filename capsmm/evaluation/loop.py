"""The one evaluation loop: a model's predictions over a loader, in eval mode and without gradients.

The trainer's test error, the class-incremental accuracy matrix and the multimodal subset errors all
read their batches through :func:`predictions`, so eval mode, ``no_grad`` and restoring the model's
training state are decided once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import Tensor, nn


def predictions(predict: Callable[[Any], Any], model: nn.Module, loader: Iterable[tuple[Any, Tensor]]) -> Iterator[tuple[Any, Tensor]]:
    """``(predict(inputs), labels)`` for every batch of ``loader``, with ``model`` in eval mode and no
    gradients; batches whose prediction is None (a rank that does not hold the head) are skipped.
    The model's training state is restored when the loop ends."""
    was_training = model.training
    model.eval()
    try:
        for inputs, labels in loader:
            with torch.no_grad():
                output = predict(inputs)
            if output is not None:
                yield output, labels
    finally:
        model.train(was_training)


def error_counts(pairs: Iterable[tuple[Tensor, Tensor]], device: torch.device | None = None) -> Tensor:
    """``[wrong, seen]`` (int64) over ``(logits, labels)`` pairs: summed as tensors, so that ranks can add them up."""
    counts = torch.zeros(2, dtype=torch.long, device=device)
    for logits, labels in pairs:
        counts += torch.stack([(logits.argmax(1) != labels).sum(), torch.tensor(len(labels), device=labels.device)]).to(counts.device)
    return counts
