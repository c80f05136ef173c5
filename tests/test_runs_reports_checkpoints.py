"""Issue 17, the second look: run logic, reporting, prototypes and checkpoints (each test fails on the
code before its fix)."""

import json
import re
from pathlib import Path

import pytest
import torch

from capsmm.checkpoint import load_checkpoint, save_checkpoint
from capsmm.config import build_runs
from capsmm.errors import CheckpointError, DataError
from capsmm.incremental import IncrementalRunConfig, run_incremental
from capsmm.reporting import paired_differences, paper_table, record_of, summary_table
from capsmm.run_records import varying_keys
from capsmm.distributed import DistContext
from capsmm.training import model_from_config, seeded_model
from conftest import load_script


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
    initial = seeded_model(lambda: model_from_config(config, num_classes=10, in_shape=(1, 8, 8)), config.train.seed,
                           DistContext()).head.chunks[0].detach()  # the initial model, as run_incremental builds it
    assert torch.equal(before[new], initial[new])  # the classes of task 1 untouched by task 0 (docs/incremental.md)
    assert not torch.equal(before[old], initial[old])


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


def finished(folder, seed, error, **overrides):
    """A finished run's record as report.py reads it (its config resolved, ``out`` its folder)."""
    settings = [f"train.seed={seed}", f"out={folder}", *(f"{k}={v}" for k, v in overrides.items())]
    config = build_runs(None, settings)[0].to_dict()
    return record_of({"test_error": error, "train_error": error, "epochs": config["train"]["epochs"], "wall_seconds": 1.0,
                      "config": config})


def test_runs_of_different_lengths_are_different_cells(tmp_path):
    """train.epochs never names a folder (a resumed run may extend it), but a 2- and a 4-epoch run are
    not replicates of one method: they were averaged in one row."""
    runs = [finished(tmp_path / f"e{epochs}" / f"seed-{seed}", seed, epochs / 10 + seed / 100, **{"train.epochs": epochs})
            for epochs in (2, 4) for seed in (0, 1)]
    assert varying_keys(runs) == ["train.epochs"]
    table = summary_table(runs)
    assert "| 2 | 2 | 20.50 ± 0.71 |" in table and "| 4 | 2 | 40.50 ± 0.71 |" in table
    [pair] = paired_differences(runs + [finished(tmp_path / "bp", 0, 0.3, **{"train.mode": "bp", "train.epochs": 4})],
                                "train.mode", "caps", "bp")
    assert pair["cell"] == {"train.epochs": 4} and pair["differences"] == pytest.approx([0.1])


def test_two_runs_of_one_cell_and_seed_are_refused_naming_both_folders(tmp_path):
    """Pairs were kept per (cell, seed) in a dict: the second such run silently replaced the first."""
    runs = [finished(tmp_path / "a", 0, 0.1), finished(tmp_path / "copy", 0, 0.9), finished(tmp_path / "bp", 0, 0.2, **{"train.mode": "bp"})]
    both = re.escape(f"{tmp_path / 'a'} and {tmp_path / 'copy'} are the same cell")
    with pytest.raises(DataError, match=both):
        paired_differences(runs, "train.mode", "caps", "bp")
    for table in (summary_table, paper_table):  # averaged, the seed counted twice
        with pytest.raises(DataError, match=both):
            table(runs)


train_vision = load_script("train_vision")


def train_digits(out, mode, epochs, *extra):
    return train_vision.main(["--dataset", "digits", "--mode", mode, "--epochs", str(epochs), "--batch-size", "64",
                              "--train-subset", "300", "--test-subset", "100", "--device", "cpu", "--no-progress",
                              "--set", "model.hidden=16", "--set", "model.pattern_width=8", "--out", str(out), *extra])


def modes_of(out):
    return [json.loads(line)["mode"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_a_resume_that_would_move_a_past_mode_switch_is_refused(tmp_path, capsys):
    """caps:0.5,caps-full trained 4 epochs (caps, caps, caps-full, caps-full) and resumed to 8 ran
    caps-full for 5-8, a history no fresh 8-epoch run (caps for 1-4) has."""
    assert train_digits(tmp_path, "caps:0.5,caps-full", 4) == 0
    written = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    capsys.readouterr()
    assert train_digits(tmp_path, "caps:0.5,caps-full", 8, "--resume") == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "epoch 3, trained as caps-full, would be caps in a run of 8 epochs; resume with train.epochs=4" in line
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == written


def test_a_resume_that_would_change_a_past_cooled_down_learning_rate_is_refused(tmp_path, capsys):
    """With train.lr_cooldown, 6 epochs train epoch 6 at 0.67x; a run of 8 epochs trains it at 1x."""
    assert train_digits(tmp_path, "caps", 6, "--set", "train.lr_cooldown=true") == 0
    written = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    capsys.readouterr()
    assert train_digits(tmp_path, "caps", 8, "--set", "train.lr_cooldown=true", "--resume") == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "epoch 6 trained at 0.666667x would be 1x in a run of 8 epochs; resume with train.epochs=6" in line
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == written


def test_a_run_saved_before_new_config_keys_still_counts_as_finished(tmp_path, capsys):
    """results.json of a run written before train.optimizer (and the other ADDED_KEYS) existed: the same
    command finds it finished instead of calling it a run with other settings."""
    from capsmm.config import ADDED_KEYS

    assert train_digits(tmp_path, "caps", 1) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    for key in ADDED_KEYS:
        section, _, name = key.partition(".")
        results["config"].get(section, {}).pop(name, None)
    (tmp_path / "results.json").write_text(json.dumps(results))
    capsys.readouterr()
    assert train_digits(tmp_path, "caps", 1) == 0
    assert "holds this run, finished" in capsys.readouterr().out


def test_a_saved_config_without_the_keys_added_since_loads_with_the_values_its_run_used():
    """A multimodal run saved before multimodal.slice_loss_weight existed trained without slice losses:
    loaded (load_run, extend_from), its config says 0, not today's default auto."""
    from capsmm.config import config_from_saved, multimodal_schema

    saved = {"multimodal": {"fusion": "joint", "modalities": ["audio", "image"]}, "train": {"mode": "caps"}}
    assert multimodal_schema()().multimodal.slice_loss_weight == "auto"
    assert config_from_saved(multimodal_schema(), saved, Path("old-run")).multimodal.slice_loss_weight == 0.0
    assert config_from_saved(multimodal_schema(), {**saved, "multimodal": {**saved["multimodal"], "slice_loss_weight": 0.5}},
                             Path("run")).multimodal.slice_loss_weight == 0.5


def test_a_resume_before_any_switch_may_extend_the_schedule(tmp_path):
    """Extended before its switch, the run has the modes of a fresh run of the new length (the
    refusal above must not catch this: it passes before the fix too)."""
    assert train_digits(tmp_path, "caps:0.75,caps-full", 2) == 0
    assert train_digits(tmp_path, "caps:0.75,caps-full", 4, "--resume") == 0
    assert modes_of(tmp_path) == ["caps", "caps", "caps", "caps-full"]
