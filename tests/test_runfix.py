"""Issue 17, the second look: run logic, reporting, prototypes and checkpoints (each test fails on the
code before its fix)."""

import pytest
import torch

from capsmm.checkpoint import load_checkpoint
from capsmm.config import build_runs
from capsmm.incremental import IncrementalRunConfig, run_incremental


def test_frozen_prototypes_stay_bit_identical_under_weight_decay(tmp_path):
    """Adam's weight decay moves a row whose gradient is zero: frozen prototypes must not move at all."""
    [config] = build_runs(None, ["train.mode=caps", "train.epochs=1", "train.weight_decay=0.1", "train.device=cpu",
                                 "train.progress=false", "data.train_subset=200", "data.test_subset=100", "model.hidden=16",
                                 "model.pattern_width=8", "incremental.tasks=2", "incremental.freeze_prototypes=true",
                                 f"out={tmp_path}"], schema=IncrementalRunConfig)
    run_incremental(config, log=lambda line: None)
    before, after = (load_checkpoint(tmp_path / f"task-{t}" / "checkpoint.safetensors")["model"]["head.chunks.0"] for t in (0, 1))
    old, new = [0, 1, 2, 3, 4], [5, 6, 7, 8, 9]
    assert torch.equal(after[old], before[old])
    assert not torch.equal(after[new], before[new])
