"""The metrics a run writes: what each name means, and how its values are rounded for the record."""

from __future__ import annotations

from typing import Any


#: the meaning of every metric name capsmm writes (results.json, metrics.jsonl, bench.json); docs/metrics.md shows it
METRIC_NAMES: dict[str, str] = {
    "forward_ms": "forward pass of one batch, loss included (median over batches, ms)",
    "backward_ms": "backward pass of one batch (block-parallel: forward and backward, which interleave across ranks)",
    "optimizer_ms": "the optimiser's step on one batch",
    "step_ms": "one whole training step: forward + backward + optimizer of the same batch (median over batches)",
    "epoch_seconds": "wall time of the epoch: training, evaluation, diagnostics, checkpoint",
    "train_seconds": "wall time of the epoch's training steps alone (its batches, without evaluation or checkpoint)",
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
