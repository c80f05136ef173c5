"""Data-parallel training under torchrun: every rank steps a replica on its share of the global batch."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..distributed import DistContext, average_gradients
from ..modes import LABELLED_INPUT_MODES
from ..profiling import PhaseTimer
from .base import AfterBackward, Inputs, LocalStrategy, Setup, StepOutput, Strategy, single_process_only
from .registry import PARALLEL


@PARALLEL.register("data")
class DataParallel(Strategy):
    """Each rank runs the local strategy (plain or lean) on its equal share of every global batch;
    after the backward, one flat all-reduce averages the gradients and the batch-norm running
    statistics, so every replica takes the same optimiser step.

    Averaging after the backward (instead of DistributedDataParallel's buckets during it) works
    for every local strategy alike, lean recomputation included, and for parameters that get no
    gradient in some steps (modality dropout, frozen modalities). With per-sample normalisation
    (layer norm, none) and no dropout, N ranks give exactly one process' parameters on the same
    global batches; batch norm normalises each rank's share with its own statistics unless
    ``train.sync_batchnorm`` (CUDA) pools them.
    """

    def __init__(self, local: LocalStrategy, dist: DistContext) -> None:
        super().__init__(local.model, local.train_config, local.device, dist, optimizer=local.optimizer)
        self.local = local
        if self.train_config.sync_batchnorm:
            nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        local.add_after_backward(lambda output, labels: self.average())

    @classmethod
    def refusal(cls, setup: Setup) -> str | None:
        if setup.world > 1 and set(setup.modes) & LABELLED_INPUT_MODES:
            return single_process_only()
        if setup.sync_batchnorm and not setup.cuda:
            return "train.sync_batchnorm needs CUDA (PyTorch's SyncBatchNorm has no CPU kernel); set train.device to cuda or drop it"
        if setup.batch_size % setup.world:
            return f"train.batch_size {setup.batch_size} is the global batch and must divide evenly over {setup.world} ranks"
        if setup.world > 1 and setup.batch_size < 2 * setup.world:
            return (f"train.batch_size {setup.batch_size} leaves each of {setup.world} ranks one sample (batch norm needs 2); "
                    f"set it to at least {2 * setup.world}")
        return None

    @property
    def batch_shard(self) -> tuple[int, int]:
        return (self.dist.rank, self.dist.world)

    def describe(self) -> str:
        return f"{self.device} x {self.dist.world} ranks, data-parallel, global batch {self.train_config.batch_size}"

    def average(self) -> None:
        average_gradients(self.local.trainable_parameters(), self.dist, self.model.buffers())

    def add_after_backward(self, hook: AfterBackward) -> None:
        """After the averaging: the hook sees the global batch's gradients, the same on every rank."""
        self.local.add_after_backward(hook)

    def step(self, inputs: Inputs, labels: Tensor, timer: PhaseTimer | None = None) -> StepOutput:
        return self.local.step(inputs, labels, timer)

    @torch.no_grad()
    def predict(self, inputs: Inputs) -> Tensor | None:
        return self.local.predict(inputs)
