"""TensorBoard logging of a run (``train.tensorboard=true``; needs the ``tensorboard`` package).

``metrics.jsonl`` stays the source of truth; the event files in ``<run>/tensorboard`` mirror it for
watching a run live: the training loss per step, every scalar of an epoch's record (losses, errors,
learning rate, times, per-modality errors, retrieval, diagnostics), and the per-block diagnostics
(accuracy, sparsity, gradient cosine) as histograms over the blocks and as one scalar per block.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .optional import require

FOLDER = "tensorboard"


class Board:
    """A ``SummaryWriter`` for one run. ``first_step``: where a resumed run's events continue (any
    events written after it by an interrupted process are purged)."""

    def __init__(self, run_dir: Path, first_step: int = 0) -> None:
        require("tensorboard", "train.tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(Path(run_dir) / FOLDER), purge_step=first_step or None)

    def step(self, step: int, loss: float) -> None:
        self.writer.add_scalar("train/loss_step", loss, step)

    def epoch(self, record: dict[str, Any], step: int) -> None:
        """Every number of an epoch's record, at the global step that ended the epoch."""
        for tag, value in _flatten(record):
            if isinstance(value, list):
                numbers = [v for v in value if isinstance(v, (int, float)) and not isinstance(v, bool)]
                if numbers:
                    self.writer.add_histogram(tag, np.asarray(numbers, dtype=np.float64), step)
                for block, number in enumerate(value):
                    if isinstance(number, (int, float)) and not isinstance(number, bool):
                        self.writer.add_scalar(f"{tag}/block_{block}", number, step)
            elif isinstance(value, (int, float)) and not isinstance(value, bool) and tag != "epoch":
                self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def _flatten(record: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    items = []
    for key, value in record.items():
        if isinstance(value, dict):
            items += _flatten(value, f"{prefix}{key}/")
        else:
            items.append((f"{prefix}{key}", value))
    return items
