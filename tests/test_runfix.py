"""Issue 17, the second look: run logic, reporting, prototypes and checkpoints (each test fails on the
code before its fix)."""

import pytest
import torch

from capsmm.checkpoint import load_checkpoint, save_checkpoint
from capsmm.config import build_runs
from capsmm.errors import CheckpointError
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


def test_checkpoint_names_with_dots_round_trip_and_a_true_collision_is_refused(tmp_path):
    """Tensor names join keys with '.': {"a.b": t} and {"a": {"b": t}} once both became "state.a.b"
    and one overwrote the other silently."""
    state = {"a.b": torch.zeros(2), "a": {"b": torch.ones(2)}, "a\\": {"b": torch.full((2,), 2.0)}}  # the last would clash with "a.b" were only dots escaped
    save_checkpoint(tmp_path / "ok.safetensors", state)
    loaded = load_checkpoint(tmp_path / "ok.safetensors")
    assert loaded.keys() == state.keys()
    assert [loaded["a.b"].tolist(), loaded["a"]["b"].tolist(), loaded["a\\"]["b"].tolist()] == [[0, 0], [1, 1], [2, 2]]
    with pytest.raises(CheckpointError, match="both"):  # keys that print alike: 1 and "1"
        save_checkpoint(tmp_path / "clash.safetensors", {1: torch.zeros(1), "1": torch.ones(1)})
    assert not (tmp_path / "clash.safetensors").exists()
