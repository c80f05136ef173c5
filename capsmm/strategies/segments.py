"""Segmented lean recomputation: one block recomputed and backpropagated over micro-batches, with
the gradients of the whole batch (why micro-batches, and why the readout is not split:
:mod:`capsmm.strategies.lean`).

A block is a function of each sample alone except where it normalises by batch statistics, and
except for its random draws, which are drawn for the whole batch at once. Both are made
micro-batch-exact here:

- **Batch norm.** Step 1 of a lean step (the forward without autograd, on the whole batch)
  records, per batch-statistics ``F.batch_norm`` call of the block, the batch mean and variance
  (:class:`BatchStatistics`). A micro-batch normalises with those (:class:`FullBatchNorms`), so
  its values are the whole batch's rows. The whole batch's input gradient of a batch norm,
  ``gamma * invstd * (dy - (S1 + xhat * S2) / M)`` with ``S1 = sum dy`` and ``S2 = sum dy * xhat``
  over the M positions of the whole batch, needs those two sums; they are ``d beta`` and
  ``d gamma``, so a micro-batch's share of them is the gradient of the norm's affine parameters,
  computed by autograd. One pass over the micro-batches per batch norm, the deepest first (a
  norm's ``dy`` is exact once every later norm's sums are known), then a last pass that
  backpropagates into the parameters with every correction in place.
- **Random draws** (dropout masks): the first micro-batch draws each of the block's random tensors
  for the whole batch, from the generator state the whole-batch forward drew them from, so the
  values are the same, and every micro-batch reads its own rows of them (:class:`DrawReplay`).

Anything else that couples the samples of a batch inside a block would not be exact; capsmm's
blocks have nothing else. A random operation that :class:`DrawReplay` can't replay is an error.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from ..encoder import without_graph
from ..errors import ConfigError
from ..profiling import TensorMemoryMeter

Statistics = tuple[Tensor, Tensor]
"""(mean, biased variance) per channel of one batch norm call, over the whole batch, in float32."""

_BATCH_NORM = inspect.signature(F.batch_norm)


def _reduced_dims(x: Tensor) -> list[int]:
    """Every dimension but the channels (dim 1): what batch norm averages over."""
    return [0, *range(2, x.dim())]


def _per_channel(t: Tensor, x: Tensor) -> Tensor:
    return t.view(1, -1, *([1] * (x.dim() - 2)))


class BatchStatistics(TorchFunctionMode):
    """While on and :attr:`enabled`, records the batch mean and variance each batch-statistics
    ``F.batch_norm`` call normalises with, in call order; the call itself runs unchanged."""

    def __init__(self) -> None:
        super().__init__()
        self.enabled = False
        self.recorded: list[Statistics] = []

    def take(self) -> list[Statistics]:
        """What was recorded since the last call."""
        taken, self.recorded = self.recorded, []
        return taken

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if self.enabled and func is F.batch_norm:
            call = _BATCH_NORM.bind(*args, **kwargs).arguments
            if call.get("training", False):
                x = call["input"]
                var, mean = torch.var_mean(x.float(), dim=_reduced_dims(x), correction=0)
                self.recorded.append((mean, var))
        return func(*args, **kwargs)


class _FullBatchNorm(torch.autograd.Function):
    """Batch norm of a micro-batch with fixed whole-batch statistics (the forward of the eval-mode
    kernel) whose backward, once the whole batch's sums ``(S1, S2)`` are known, is the whole batch's:
    the fixed-statistics input gradient ``gamma * invstd * dy`` minus what flows through the mean
    and variance, ``gamma * invstd * (S1 + xhat * S2) / M``, subtracted in place (no temporary)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor | None, bias: Tensor | None, mean: Tensor, var: Tensor, eps: float,
                sums: Tensor | None, count: int) -> Tensor:
        ctx.save_for_backward(x, weight, mean, var, sums)
        ctx.eps, ctx.count = eps, count
        return F.batch_norm(x, mean, var, weight, bias, training=False, eps=eps)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, weight, mean, var, sums = ctx.saved_tensors
        wanted = [ctx.needs_input_grad[0], weight is not None and ctx.needs_input_grad[1], ctx.needs_input_grad[2]]
        dx, dweight, dbias = torch.ops.aten.native_batch_norm_backward(grad, x, weight, mean, var, None, None, False, ctx.eps, wanted)
        if dx is not None and sums is not None:
            invstd = (var + ctx.eps).rsqrt()
            scale = (invstd if weight is None else invstd * weight.float()) / ctx.count
            # - scale * (S1 + (x - mean) * invstd * S2) = -(scale * (S1 - mean * invstd * S2)) - (scale * invstd * S2) * x
            slope = scale * invstd * sums[1]
            dx.sub_(_per_channel(scale * sums[0] - slope * mean, x)).addcmul_(x, _per_channel(slope, x), value=-1)
        return dx, dweight, dbias, None, None, None, None, None


class FullBatchNorms(TorchFunctionMode):
    """While on, the i-th batch-statistics ``F.batch_norm`` call normalises with ``statistics[i]``
    (the whole batch's) and, where ``sums[i]`` is known, sends the whole batch's gradient through
    them. The norm ``probe`` (an index) reads its affine parameters through fresh leaves
    (:attr:`probes`), whose gradients are this micro-batch's share of its (S2, S1)."""

    def __init__(self, statistics: list[Statistics], sums: list[Tensor | None], batch: int, probe: int | None = None) -> None:
        super().__init__()
        self.statistics, self.sums, self.batch, self.probe = statistics, sums, batch, probe
        self.calls = 0
        self.probes: list[Tensor] = []

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is not F.batch_norm:
            return func(*args, **kwargs)
        call = _BATCH_NORM.bind(*args, **kwargs)
        call.apply_defaults()
        x, weight, bias, eps = (call.arguments[k] for k in ("input", "weight", "bias", "eps"))
        if not call.arguments["training"]:
            return func(*args, **kwargs)
        index, self.calls = self.calls, self.calls + 1
        if index >= len(self.statistics):
            raise RuntimeError(f"a segmented block ran batch norm {index + 1} times, its whole-batch forward {len(self.statistics)}")
        mean, var = self.statistics[index]
        if index == self.probe:
            channels = mean.shape[0]
            weight = (torch.ones(channels, device=x.device) if weight is None else without_graph(weight)).requires_grad_()
            bias = (torch.zeros(channels, device=x.device) if bias is None else without_graph(bias)).requires_grad_()
            self.probes = [weight, bias]
        sums = None if index == self.probe else self.sums[index]
        return _FullBatchNorm.apply(x, weight, bias, mean, var, eps, sums, self.batch * math.prod(x.shape[2:]))


def _layout(t: Tensor) -> torch.memory_format:
    """The memory layout of a dense tensor: contiguous or channels-last."""
    if t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    if not t.is_contiguous():
        raise RuntimeError(f"a segmented block met a tensor of strides {t.stride()}, neither contiguous nor channels-last")
    return torch.contiguous_format


def _whole_batch_like(t: Tensor, batch: int) -> Tensor:
    """An empty tensor like ``t`` (a micro-batch's), with ``batch`` rows, in ``t``'s memory layout."""
    return torch.empty((batch, *t.shape[1:]), dtype=t.dtype, device=t.device, memory_format=_layout(t))


class DrawReplay(TorchDispatchMode):
    """Random draws of one block, replayed by micro-batch (module docstring). Replays ``bernoulli_``
    with a probability (dropout on CPU, ``Dropout2d``) and ``native_dropout`` (fused dropout on CUDA);
    any other random operation is an error, not a silently different mask."""

    def __init__(self, batch: int) -> None:
        super().__init__()
        self.batch = batch
        self.draws: list[Tensor] = []
        self.rows = slice(0, batch)
        self.calls = 0

    @contextmanager
    def rows_of(self, rows: slice) -> Iterator[None]:
        """Replay the draws of the micro-batch ``rows`` (the block's forward on those rows runs within)."""
        self.rows, self.calls = rows, 0
        with self:
            yield

    def _draw(self, like: Tensor, make: Callable[[Tensor], Tensor]) -> Tensor:
        """The draw of this call: made for the whole batch the first time (by ``make`` on an empty
        whole-batch tensor like ``like``), then this micro-batch's rows of it."""
        index, self.calls = self.calls, self.calls + 1
        if like.shape[0] != self.rows.stop - self.rows.start:
            raise RuntimeError(f"a segmented block draws random numbers of shape {tuple(like.shape)}, not one row per sample")
        if index == len(self.draws):
            self.draws.append(make(_whole_batch_like(like, self.batch)))
        if self.draws[index].shape[1:] != like.shape[1:]:
            raise RuntimeError(f"a segmented block's random draw {index} has shape {tuple(like.shape)}, at first {tuple(self.draws[index].shape)}")
        return self.draws[index][self.rows]

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if torch.Tag.nondeterministic_seeded not in func.tags:
            return func(*args, **kwargs)
        if func is torch.ops.aten.bernoulli_.float and kwargs.get("generator") is None:
            target = args[0]
            return target.copy_(self._draw(target, lambda whole: func(whole, *args[1:], **kwargs).bool()))
        if func is torch.ops.aten.native_dropout.default and args[2] is not False:
            x, p = args[0], args[1]
            mask = self._draw(x, lambda whole: func(whole, *args[1:], **kwargs)[1])
            return x * mask * (0.0 if p == 1 else 1.0 / (1.0 - p)), mask
        raise ConfigError(f"train.lean_segments: a block draws random numbers with {func}, which segmented recomputation "
                          "can't replay; use train.lean_segments=1")


def micro_batches(batch: int, segments: int) -> list[slice]:
    """``batch`` rows in ``segments`` contiguous, balanced slices (fewer when the batch is smaller)."""
    segments = max(1, min(segments, batch))
    bounds = [round(i * batch / segments) for i in range(segments + 1)]
    return [slice(a, b) for a, b in zip(bounds, bounds[1:])]


def backward_in_segments(recompute: Callable[[slice], Tensor], grad: Tensor, statistics: list[Statistics], segments: int) -> None:
    """Backpropagate ``grad`` (the gradient of a block's whole-batch output) through the block, recomputed
    by ``recompute(rows)`` (its output for those rows, with autograd) over ``segments`` micro-batches;
    ``statistics``: the block's batch norms' whole-batch statistics, in call order."""
    parts = micro_batches(grad.shape[0], segments)
    draws = DrawReplay(grad.shape[0])
    sums: list[Tensor | None] = [None] * len(statistics)
    for norm in reversed(range(len(statistics))):
        total = torch.zeros(2, statistics[norm][0].shape[0], device=grad.device)
        for rows in parts:
            with draws.rows_of(rows), FullBatchNorms(statistics, sums, grad.shape[0], probe=norm) as norms:
                output = recompute(rows)
            found = torch.autograd.grad(output, norms.probes, grad[rows], allow_unused=True)
            total += torch.stack([g.float() if g is not None else torch.zeros_like(total[0]) for g in reversed(found)])
        sums[norm] = total  # (S1, S2) = (d beta, d gamma) of the whole batch
    for rows in parts:
        with draws.rows_of(rows), FullBatchNorms(statistics, sums, grad.shape[0]):
            output = recompute(rows)
        output.backward(grad[rows])


@dataclass(frozen=True)
class BlockMemory:
    """Bytes one block needs per sample (what grows with the batch), as the meter counts them."""

    input: float
    """its input, which lean keeps from step 1 until the block is recomputed"""
    output: float
    """its output: a split block holds the whole batch's gradient of it while its micro-batches run"""
    recompute: float | None
    """the peak of its forward with autograd and its backward, beyond its input: what a whole-block
    recomputation needs (None: the block is not recomputed)"""

    def per_sample(self, larger: "BlockMemory", samples: int) -> "BlockMemory":
        """What grows per sample, from this measurement and one on ``samples`` more samples."""
        recompute = None if self.recompute is None or larger.recompute is None else (larger.recompute - self.recompute) / samples
        return BlockMemory((larger.input - self.input) / samples, (larger.output - self.output) / samples, recompute)


def peak_bytes(run: Callable[[], Tensor], params: list[Tensor]) -> int:
    """Peak bytes of ``run()`` (a forward with autograd) and of the backward of its output, without
    the gradients of ``params`` (the same for any batch), which the backward leaves in their ``.grad``."""
    for p in params:
        p.grad = None  # allocated within the measurement, so that it can be left out
    with TensorMemoryMeter() as meter:
        output = run()
        output.backward(torch.ones_like(output))
    return meter.peak_without(p.grad for p in params if p.grad is not None)


def segment_counts(setting: int | str, blocks: list[tuple[Any, BlockMemory]], floor: float) -> dict[Any, int]:
    """Micro-batches per recomputed block, from what each of ``blocks`` (in the order step 1 runs them)
    needs per sample; blocks left whole are not listed.

    With an integer ``k`` the largest recomputation is split into ``k`` and every other block into as
    many as keep its micro-batch's share no larger (``ceil(k * need / largest)``). With ``auto`` a
    block is split when recomputing it whole, with the inputs still kept (its own and those of the
    blocks before it), would need more than ``floor``: what step 1 and the loss' backward need
    anyway, which no split lowers. A split block holds those inputs and its output's gradient; the
    rest of the floor (or of what its whole-batch readout holds, one output more, if that is
    larger) is the room for one micro-batch. Splitting further would only add passes.
    """
    recomputed = {key: m.recompute for key, m in blocks if m.recompute is not None}
    if setting != "auto":
        largest = max(recomputed.values(), default=0.0)
        counts = {key: math.ceil(int(setting) * need / largest - 1e-9) for key, need in recomputed.items()} if largest > 0 else {}
        return {key: count for key, count in counts.items() if count > 1}
    counts, kept = {}, 0.0
    for key, m in blocks:
        if m.recompute is None:
            continue
        kept += m.input
        held = kept + m.output
        room = max(floor, held + m.output) - held
        if kept + m.recompute > floor and room > 0 and m.recompute > room:
            counts[key] = math.ceil(m.recompute / room)
    return counts
