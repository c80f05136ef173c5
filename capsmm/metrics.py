"""Cost measurements of a run: parameter counts, per-phase step times, peak memory."""

from __future__ import annotations

import resource
import statistics
import sys
import time
import weakref
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Total trainable parameters, split into backbone (encoders), readouts and prototypes when present."""
    groups = {"backbone": "encoders", "readouts": "readouts", "prototypes": "head"}
    counts = {"total": sum(p.numel() for p in model.parameters() if p.requires_grad)}
    for label, attribute in groups.items():
        module = getattr(model, attribute, None)
        if isinstance(module, nn.Module):
            counts[label] = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return counts


class PhaseTimer:
    """Wall time of named phases (forward, backward, optimizer) per batch.

    On CUDA it records events and reads them once per epoch (:meth:`collect`), so timing adds no
    synchronisation to the training loop; on CPU it reads ``perf_counter``.
    """

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self._pending: list[tuple[str, torch.cuda.Event, torch.cuda.Event]] = []
        self.samples: dict[str, list[float]] = defaultdict(list)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            self._pending.append((name, start, end))
        else:
            start_time = time.perf_counter()
            yield
            self.samples[name].append((time.perf_counter() - start_time) * 1000)

    def collect(self) -> dict[str, float]:
        """Median milliseconds per phase since the last call (``<phase>_ms``) and of the whole step
        (``step_ms``: the median over batches of each batch's phases summed), then reset."""
        if self._pending:
            torch.cuda.synchronize()
            for name, start, end in self._pending:
                self.samples[name].append(start.elapsed_time(end))
            self._pending.clear()
        series = [values for values in self.samples.values() if values]
        medians = {f"{name}_ms": statistics.median(values) for name, values in self.samples.items() if values}
        if series and len({len(values) for values in series}) == 1:
            medians["step_ms"] = statistics.median(map(sum, zip(*series)))
        self.samples.clear()
        return medians


def phase_of(timer: PhaseTimer | None) -> Callable[[str], AbstractContextManager[None]]:
    """``timer.phase``, or a phase that measures nothing when there is no timer."""
    return timer.phase if timer is not None else (lambda name: nullcontext())


#: the meaning of every metric name capsmm writes (results.json, metrics.jsonl, bench.json); docs/metrics.md shows it
METRIC_NAMES: dict[str, str] = {
    "forward_ms": "forward pass of one batch, loss included (median over batches, ms)",
    "backward_ms": "backward pass of one batch (block-parallel: forward and backward, which interleave across ranks)",
    "optimizer_ms": "the optimiser's step on one batch",
    "step_ms": "one whole training step: forward + backward + optimizer of the same batch (median over batches)",
    "epoch_seconds": "wall time of the epoch: training, evaluation, diagnostics, checkpoint",
    "wall_seconds": "wall time of all epochs of the run, resumed ones included",
    "train_loss": "mean training loss over the epoch's batches (dropout on)",
    "train_error": "fraction of training samples misclassified during the epoch (dropout on)",
    "test_error": "fraction of test samples misclassified, model in eval mode",
    "best_test_error": "lowest test_error over the epochs",
    "peak_memory_mib": "peak memory of the run, MiB (peak_memory_method says how it was measured)",
    "params": "trainable parameters of the model (elements; frozen ones left out)",
}


def tidy(value: Any, key: str = "") -> Any:
    """Numbers rounded to what they mean, recursively: times (``*_ms``, ``*_seconds``) to 1 microsecond
    or millisecond, ``lr`` as is, every other float (errors, losses, cosines...) to 1e-6."""
    if isinstance(value, dict):
        return {k: tidy(v, k) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [tidy(v, key) for v in value]
    if isinstance(value, float) and value == value and abs(value) != float("inf"):
        if key.endswith(("_ms", "_seconds")):
            return round(value, 3)
        return value if key == "lr" else round(value, 6)
    return value


def peak_memory_mib(device: torch.device) -> tuple[float, str]:
    """Peak memory and how it was measured.

    CUDA: ``torch.cuda.max_memory_allocated`` (tensors only). CPU: the process' peak resident set
    size (everything: Python, libraries, data set, activations), an upper bound on the training
    footprint; ``scripts/bench.py`` measures activation memory more precisely.
    """
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_memory_allocated"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (peak / 2**20 if sys.platform == "darwin" else peak / 2**10), "process_peak_rss"


class TensorMemoryMeter(TorchDispatchMode):
    """Live and peak bytes of the tensor storages that operations allocate while the meter is on.

    Works on any device, CPU included (where PyTorch keeps no allocator statistics): every op's
    outputs are registered by storage (views and in-place results, which share an input's storage,
    are not new memory), and a finaliser on the storage subtracts its bytes when it is freed.
    Autograd's saved tensors and the gradients made by ``backward`` are ops' outputs too, so the
    peak covers activations, gradients and temporaries; allocations inside a kernel are not seen.
    """

    def __init__(self) -> None:
        super().__init__()
        self._live: dict[int, int] = {}
        self._serial: dict[int, int] = {}  # storage key -> serial number of its live allocation
        self._events: list[tuple[int, int]] = []  # (allocation serial, +bytes or -bytes), in order
        self.current = 0
        self.peak = 0

    def _free(self, key: int) -> None:
        nbytes = self._live.pop(key, 0)
        self.current -= nbytes
        if nbytes:
            self._events.append((self._serial.pop(key), -nbytes))

    def peak_without(self, tensors: Iterable[torch.Tensor]) -> int:
        """The peak of live bytes had ``tensors`` (still alive, e.g. gradients) never been allocated.

        Subtracting their bytes from :attr:`peak` is wrong when they were allocated after the peak;
        this replays the allocations instead.
        """
        excluded = {self._serial[key] for key in (t.untyped_storage().data_ptr() for t in tensors) if key in self._serial}
        current = peak = 0
        for serial, delta in self._events:
            if serial not in excluded:
                current += delta
                peak = max(peak, current)
        return peak

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        for tensor in tree_flatten(out)[0]:
            if not isinstance(tensor, torch.Tensor):
                continue
            storage = tensor.untyped_storage()
            key = storage.data_ptr()
            if key == 0 or key in inputs or key in self._live:
                continue
            self._live[key] = storage.nbytes()
            self._serial[key] = len(self._events)
            self._events.append((self._serial[key], storage.nbytes()))
            self.current += storage.nbytes()
            self.peak = max(self.peak, self.current)
            weakref.finalize(storage, self._free, key)
        return out


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of distinct storages among ``tensors``."""
    seen: dict[int, int] = {}
    for tensor in tensors:
        seen[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
    return sum(seen.values())
