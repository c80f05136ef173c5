"""The training loss of each mode, computed from a :class:`~capsmm.model.CAPOutput`."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from .ff import ff_loss
from .model import CAPOutput
from .peers import peer_loss


def training_loss(output: CAPOutput, targets: Tensor) -> Tensor:
    """``cross_entropy(logits, y)`` for bp/caps/caps-full; the sum of per-block CEs for ``local``;
    a layer-local peer's local losses (:func:`capsmm.peers.peer_loss`); Forward-Forward's
    (:func:`capsmm.ff.ff_loss`).

    With per-modality slice losses (``output.slice_loss_weight`` > 0, :mod:`capsmm.balance`) the
    weighted sum of each present modality's cross-entropy over its own slices is added: a modality's
    slice loss depends on its own patterns only, so under the stop-gradient each block still learns
    from the derivative of the whole objective at its own pattern.
    """
    if output.peer is not None:
        family, num_classes, weight = output.peer
        if family == "ff":
            return ff_loss(output.parts or [], output.logits, targets, weight)
        return peer_loss(family, output.parts or [], targets, num_classes, weight)
    if output.block_logits is not None:
        return sum(F.cross_entropy(logits, targets) for logits in output.block_logits)
    loss = F.cross_entropy(output.logits, targets)
    if output.modality_logits and output.slice_loss_weight:
        loss = loss + output.slice_loss_weight * sum(F.cross_entropy(logits, targets) for logits in output.modality_logits.values())
    return loss
