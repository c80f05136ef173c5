"""torch.distributed plumbing: the process group from torchrun's environment, reductions, and the
one-line error a run ends with when another rank dies or stops answering.

Launch with ``torchrun --nproc_per_node N scripts/train_vision.py ...``: every process runs the
same command, torchrun sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT, and
capsmm joins the group (gloo on CPU, NCCL on CUDA). Without those variables nothing changes.
"""

from __future__ import annotations

import datetime
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.utils._pytree import tree_map_only

from .errors import TrainingError


@dataclass(frozen=True)
class DistContext:
    """This process' place in the group (``world == 1``: not distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def is_main_process() -> bool:
    """Whether this process is rank 0 of a torchrun launch, or not launched by torchrun at all."""
    return os.environ.get("RANK", "0") == "0"


def launched_by_torchrun() -> bool:
    return world_size() > 1


def init_distributed(device: torch.device, timeout_s: float) -> tuple[DistContext, torch.device]:
    """Join the process group torchrun describes (if any); returns the context and this rank's device.

    ``timeout_s`` bounds every collective: a rank that dies or hangs makes the others fail with
    :class:`TrainingError` after at most that long instead of waiting forever.
    """
    if not launched_by_torchrun():
        return DistContext(), device
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        try:
            dist.init_process_group(backend, rank=rank, world_size=world, timeout=datetime.timedelta(seconds=timeout_s),
                                    device_id=device if device.type == "cuda" else None)
        except Exception as error:
            raise TrainingError(f"rank {rank} could not join the process group of {world} "
                                f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})") from None
    return DistContext(rank, world, local_rank), device


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(context: DistContext, *values: torch.Tensor) -> None:
    """Sum tensors over ranks, in place (a no-op on one process)."""
    if context.enabled:
        for value in values:
            communicate(dist.all_reduce, value, op=dist.ReduceOp.SUM)


def average_gradients(parameters: Iterable[torch.nn.Parameter], context: DistContext, buffers: Iterable[torch.Tensor] = ()) -> None:
    """Average gradients, and floating buffers (batch-norm running statistics), over the ranks of
    ``context`` in one flat all-reduce.

    A parameter that has no gradient on any rank keeps none (Adam skips it, as it would in one
    process); one that has a gradient on some ranks only counts zeros for the others. Averaging the
    running means of equal shards gives exactly the running mean of the global batch.
    """
    params = list(parameters)
    floating = [b for b in buffers if b.is_floating_point()]
    if not params and not floating:
        return
    device = (params or floating)[0].device
    flat = torch.cat([
        *(p.grad.flatten().float() if p.grad is not None else torch.zeros(p.numel(), device=device) for p in params),
        torch.tensor([float(p.grad is not None) for p in params], device=device),
        *(b.flatten().float() for b in floating),
    ])
    communicate(dist.all_reduce, flat)
    flat /= context.world
    offset = sum(p.numel() for p in params)
    present = flat[offset:offset + len(params)].tolist()
    start = 0
    for p, share in zip(params, present):
        p.grad = flat[start:start + p.numel()].view_as(p).to(p.dtype).clone() if share > 0 else None
        start += p.numel()
    start = offset + len(params)
    with torch.no_grad():
        for b in floating:
            b.copy_(flat[start:start + b.numel()].view_as(b))
            start += b.numel()


def world_size() -> int:
    """The number of ranks torchrun launched (1 without torchrun)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def gather_objects(context: DistContext, obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not context.enabled:
        return [obj]
    gathered: list[Any] = [None] * context.world
    communicate(dist.all_gather_object, gathered, obj)
    return gathered


def to_cpu(obj: Any) -> Any:
    """``obj`` (nested dicts, lists, tuples) with every tensor moved to the CPU.

    Why: a pickled CUDA tensor is unpickled on the sender's GPU, so gathering one would put every
    rank's state on that GPU in the receiving process (and need that GPU to be visible there).
    """
    return tree_map_only(torch.Tensor, lambda tensor: tensor.to("cpu"), obj)


def gather_to_main(context: DistContext, obj: Any) -> list[Any] | None:
    """Every rank's ``obj``, its tensors on the CPU, in rank order, on rank 0; None on the others.

    For what only rank 0 needs (a checkpoint it writes): the others neither receive nor hold it.
    """
    obj = to_cpu(obj)
    if not context.enabled:
        return [obj]
    gathered: list[Any] | None = [None] * context.world if context.is_main else None
    communicate(dist.gather_object, obj, gathered, dst=0)
    return gathered


def barrier(context: DistContext) -> None:
    if context.enabled:
        communicate(dist.barrier)


#: what gloo raises, as a plain RuntimeError, when a peer dies or a collective times out: an
#: ``IoException`` of its transport, whose message starts with the source file that raised it
#: ("[.../gloo/transport/tcp/pair.cc:561] Connection closed by peer ...", "[.../unbound_buffer.cc:78]
#: Timed out waiting 300000ms for recv operation to complete"), or the notice that a timed-out
#: rank's other collectives get ("Application timeout caused pair closure"); tests/test_distributed.py
#: kills and silences a real gloo peer to check that these are the messages
GLOO_PEER_FAILURE = re.compile(r"^\[[^\]]*gloo[\\/]transport[\\/]|^Application timeout caused pair closure")


class PeerFailure(TrainingError):
    """Another rank died or stopped answering (the run can be resumed from its last checkpoint)."""


def is_peer_failure(error: BaseException) -> bool:
    """Whether ``error`` says another rank died or stopped answering: one of torch.distributed's own
    error types (``DistError``: ``DistBackendError`` from NCCL, ``DistNetworkError``,
    ``DistStoreError``), or gloo's transport failure, which reaches Python as a plain RuntimeError
    (:data:`GLOO_PEER_FAILURE`). Matched by type and by gloo's own wording only, so that a bug
    whose message merely mentions a timeout surfaces as itself."""
    return isinstance(error, dist.DistError) or (type(error) is RuntimeError and bool(GLOO_PEER_FAILURE.search(str(error))))


def peer_failure(error: BaseException, during: str) -> PeerFailure:
    """The one-line :class:`PeerFailure` for a collective's ``error``, caused by it (its traceback,
    the gloo or NCCL message included, goes into the run's crash log)."""
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    rank = dist.get_rank() if dist.is_initialized() else "?"
    failure = PeerFailure(f"rank {rank} lost its peers during {during} (another rank died or timed out: {text[:200]}); "
                          "rerun the same command with --resume to continue from the last complete checkpoint")
    failure.__cause__ = error
    return failure


def communicate(operation: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a collective; a dead or silent peer becomes one-line :class:`PeerFailure`."""
    try:
        return operation(*args, **kwargs)
    except RuntimeError as error:  # DistError is a RuntimeError
        if not is_peer_failure(error):
            raise
        raise peer_failure(error, getattr(operation, "__name__", "a collective"))
