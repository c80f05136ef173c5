"""The training loss of each mode, computed from a :class:`~capsmm.model.CAPOutput`."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from .model import CAPOutput


def training_loss(output: CAPOutput, targets: Tensor) -> Tensor:
    """``cross_entropy(logits, y)`` for bp/caps/caps-full; the sum of per-block CEs for ``local``."""
    if output.block_logits is not None:
        return sum(F.cross_entropy(logits, targets) for logits in output.block_logits)
    return F.cross_entropy(output.logits, targets)
