"""Cost measurements of a run: parameter counts, per-phase step times, peak memory."""

from __future__ import annotations

import resource
import statistics
import sys
import time
from collections import defaultdict
from contextlib import contextmanager
from collections.abc import Iterator

import torch
from torch import nn


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
    """Wall time of named phases (forward, backward, step) per batch.

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
        """Median milliseconds per phase since the last call, then reset."""
        if self._pending:
            torch.cuda.synchronize()
            for name, start, end in self._pending:
                self.samples[name].append(start.elapsed_time(end))
            self._pending.clear()
        medians = {f"{name}_ms": statistics.median(values) for name, values in self.samples.items() if values}
        self.samples.clear()
        return medians


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
