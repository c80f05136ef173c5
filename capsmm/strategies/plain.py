"""Plain autograd in one process: the model's forward, the mode's loss, one ``backward``."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..distributed import DistContext
from ..objectives import training_loss
from .base import Inputs, LocalStrategy, TrainSettings
from .registry import MEMORY


@MEMORY.register("standard")
class Plain(LocalStrategy):
    """Every mode, every model: autograd keeps every block's graph until the one backward.

    ``train.compile`` runs the forward through ``torch.compile``.
    """

    def __init__(self, model: nn.Module, train: TrainSettings, device: torch.device, dist: DistContext = DistContext()) -> None:
        super().__init__(model, train, device, dist)
        self.forward_model = torch.compile(model) if train.compile else model

    def forward_loss(self, inputs: Inputs, labels: Tensor) -> tuple[Any, Tensor, None]:
        output = self.forward_model(inputs, labels)
        return output, training_loss(output, labels), None

    def backward(self, loss: Tensor, pending: None) -> None:
        loss.backward()
