"""Training runs on the bundled digits: records, determinism, schedules, checkpoints and resuming."""

import json
import os

import pytest
import torch
from safetensors.torch import load_file

from capsmm.checkpoint import load_checkpoint, save_checkpoint
from capsmm.config import build_runs
from capsmm.errors import CheckpointError, ConfigError, TrainingError
from capsmm.training import train

METRIC_KEYS = {"epoch", "mode", "lr", "train_loss", "train_error", "test_error", "epoch_seconds", "forward_ms", "backward_ms", "step_ms"}
RESULT_KEYS = {"dataset", "backbone", "mode", "params", "test_error", "train_error", "peak_memory_mib", "forward_ms",
               "backward_ms", "epochs", "wall_seconds", "config"}


def digits_config(out, **overrides):
    base = {"data.name": "digits", "model.hidden": 64, "model.pattern_width": 64, "train.epochs": 2,
            "train.batch_size": 64, "train.lr": 2e-3, "train.progress": False,
            "train.device": "cpu", "out": str(out)}
    base.update(overrides)
    [config] = build_runs(None, list(base.items()))
    return config


def quiet(_):
    pass


def read_metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_run_writes_metrics_results_and_checkpoint(tmp_path):
    results = train(digits_config(tmp_path, **{"train.epochs": 3}), log=quiet)
    metrics = read_metrics(tmp_path)
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    assert all(METRIC_KEYS <= set(m) for m in metrics)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    assert RESULT_KEYS <= set(saved)
    assert 0 <= saved["test_error"] <= 1 and 0 <= saved["train_error"] <= 1
    assert saved["test_error"] == metrics[-1]["test_error"]
    assert saved["config"]["train"]["epochs"] == 3 and saved["mode"] == "caps"
    checkpoint = load_checkpoint(tmp_path / "checkpoint.safetensors")
    assert saved["params"] == sum(t.numel() for k, t in checkpoint["model"].items() if "running" not in k and "num_batches" not in k)
    assert checkpoint["epoch"] == 3


def test_training_lowers_the_loss(tmp_path):
    train(digits_config(tmp_path, **{"train.epochs": 4}), log=quiet)
    losses = [m["train_loss"] for m in read_metrics(tmp_path)]
    assert losses[-1] < 0.5 * losses[0]


def test_same_seed_same_run_bit_for_bit(tmp_path):
    train(digits_config(tmp_path / "a", **{"data.augment": True}), log=quiet)
    train(digits_config(tmp_path / "b", **{"data.augment": True}), log=quiet)
    a, b = read_metrics(tmp_path / "a"), read_metrics(tmp_path / "b")
    assert [m["train_loss"] for m in a] == [m["train_loss"] for m in b]
    ta, tb = load_file(tmp_path / "a" / "checkpoint.safetensors"), load_file(tmp_path / "b" / "checkpoint.safetensors")
    assert all(torch.equal(ta[k], tb[k]) for k in ta if not k.startswith("state.rng"))
    train(digits_config(tmp_path / "c", **{"train.seed": 1}), log=quiet)
    assert read_metrics(tmp_path / "c")[0]["train_loss"] != a[0]["train_loss"]


class Interrupt(Exception):
    pass


def interrupt_after(epoch):
    def log(line):
        if line.startswith(f"epoch {epoch}/"):
            raise Interrupt  # the run dies right after the checkpoint of ``epoch``
    return log


def test_resumed_run_equals_uninterrupted_run(tmp_path):
    overrides = {"train.epochs": 4, "train.mode": "caps:0.5,caps-full", "train.lr_milestones": [3], "data.augment": True}
    train(digits_config(tmp_path / "straight", **overrides), log=quiet)
    with pytest.raises(Interrupt):
        train(digits_config(tmp_path / "split", **overrides), log=interrupt_after(2))
    # as if it also died after writing epoch 3's metrics line but before that epoch's checkpoint
    with open(tmp_path / "split" / "metrics.jsonl", "a") as handle:
        handle.write('{"epoch": 3, "partial": true}\n')
    train(digits_config(tmp_path / "split", **overrides), resume=True, log=quiet)
    straight, split = read_metrics(tmp_path / "straight"), read_metrics(tmp_path / "split")
    drop = lambda rows: [{k: v for k, v in r.items() if not k.endswith(("_ms", "_seconds"))} for r in rows]
    assert drop(split) == drop(straight)
    assert [r["mode"] for r in split] == ["caps", "caps", "caps-full", "caps-full"]
    a, b = load_file(tmp_path / "straight" / "checkpoint.safetensors"), load_file(tmp_path / "split" / "checkpoint.safetensors")
    model_keys = [k for k in a if k.startswith("state.model")]
    assert model_keys and all(torch.equal(a[k], b[k]) for k in model_keys)


def test_resume_may_extend_the_run(tmp_path):
    train(digits_config(tmp_path, **{"train.epochs": 1}), log=quiet)
    results = train(digits_config(tmp_path, **{"train.epochs": 2}), resume=True, log=quiet)
    assert results["epochs"] == 2 and [m["epoch"] for m in read_metrics(tmp_path)] == [1, 2]


def test_schedule_changes_mode_per_epoch(tmp_path):
    train(digits_config(tmp_path, **{"train.epochs": 4, "train.mode": "caps:0.5,caps-full"}), log=quiet)
    assert [m["mode"] for m in read_metrics(tmp_path)] == ["caps", "caps", "caps-full", "caps-full"]


def test_lr_milestones(tmp_path):
    train(digits_config(tmp_path, **{"train.epochs": 3, "train.lr_milestones": [1, 2], "train.lr_gamma": 0.5}), log=quiet)
    assert [m["lr"] for m in read_metrics(tmp_path)] == pytest.approx([2e-3, 1e-3, 5e-4])


def test_a_finished_run_is_not_trained_again_and_force_starts_it_over(tmp_path):
    first = train(digits_config(tmp_path, **{"train.epochs": 1}), log=quiet)
    written = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in tmp_path.iterdir()}
    lines = []
    again = train(digits_config(tmp_path, **{"train.epochs": 1}), log=lines.append)
    assert again == json.loads(json.dumps(first)) and "finished" in lines[0]
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in tmp_path.iterdir()} == written  # nothing rewritten
    with pytest.raises(ConfigError, match="already holds an unfinished run or one with other settings.*--resume.*--force"):
        train(digits_config(tmp_path, **{"train.epochs": 1, "train.lr": 1e-3}), log=quiet)
    assert (tmp_path / "checkpoint.safetensors").read_bytes() == written["checkpoint.safetensors"][0]
    forced = train(digits_config(tmp_path, **{"train.epochs": 1, "train.lr": 1e-3}), force=True, log=quiet)
    assert forced["config"]["train"]["lr"] == 1e-3 and len(read_metrics(tmp_path)) == 1


def test_resume_refuses_a_different_config(tmp_path):
    train(digits_config(tmp_path, **{"train.epochs": 1}), log=quiet)
    with pytest.raises(CheckpointError, match=r"train.lr: 0.002 -> 0.001"):
        train(digits_config(tmp_path, **{"train.epochs": 2, "train.lr": 1e-3}), resume=True, log=quiet)


def test_checkpoint_older_than_a_config_key_resumes_only_with_its_old_value(tmp_path):
    train(digits_config(tmp_path, **{"train.epochs": 1}), log=quiet)
    path = tmp_path / "checkpoint.safetensors"
    state = load_checkpoint(path)
    del state["config"]["train"]["lean_keep"]  # as written before the key existed
    save_checkpoint(path, state)
    with pytest.raises(CheckpointError, match=r"train.lean_keep: 0 -> 2"):
        train(digits_config(tmp_path, **{"train.epochs": 2, "train.lean_keep": 2}), resume=True, log=quiet)
    assert train(digits_config(tmp_path, **{"train.epochs": 2}), resume=True, log=quiet)["epochs"] == 2


def test_a_checkpoint_whose_random_streams_were_drawn_another_way_is_not_resumed(tmp_path):
    """Resuming it would draw the rest of the run's batches (and subsets, pairs, augmentation) from other
    streams: a run no fresh run reproduces. The checkpoint says which derivation drew it."""
    train(digits_config(tmp_path, **{"train.epochs": 1}), log=quiet)
    path = tmp_path / "checkpoint.safetensors"
    state = load_checkpoint(path)
    assert state["streams"] == 1
    del state["streams"]  # as written before capsmm/streams.py
    save_checkpoint(path, state)
    with pytest.raises(CheckpointError, match="random streams"):
        train(digits_config(tmp_path, **{"train.epochs": 2}), resume=True, log=quiet)


def test_an_incremental_task_without_a_test_sample_is_an_error_not_a_perfect_score(tmp_path):
    from capsmm.errors import DataError
    from capsmm.incremental import IncrementalRunConfig, run_incremental

    [config] = build_runs(None, ["train.epochs=1", "train.device=cpu", "train.progress=false", "data.train_subset=100",
                                 "data.test_subset=4", "model.hidden=16", "model.pattern_width=8", "incremental.tasks=5",
                                 f"out={tmp_path}"], schema=IncrementalRunConfig)
    with pytest.raises(DataError, match="no test sample"):
        run_incremental(config, log=quiet)


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    train(digits_config(tmp_path, **{"train.epochs": 1}), log=quiet)
    path = tmp_path / "checkpoint.safetensors"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="unreadable.*delete it"):
        train(digits_config(tmp_path, **{"train.epochs": 2}), resume=True, log=quiet)


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.safetensors"
    save_checkpoint(path, {"a": torch.ones(3), "meta": {1: "x"}})
    def crash(*args):
        raise OSError("disk full")
    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        save_checkpoint(path, {"a": torch.zeros(3), "meta": {1: "y"}})
    state = load_checkpoint(path)
    assert torch.equal(state["a"], torch.ones(3)) and state["meta"] == {1: "x"}
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.safetensors"]


def test_nan_loss_stops_with_a_training_error(tmp_path, monkeypatch):
    import capsmm.strategies.plain as step_module

    original = step_module.training_loss
    calls = {"n": 0}

    def poisoned(output, targets):
        calls["n"] += 1
        loss = original(output, targets)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(step_module, "training_loss", poisoned)
    with pytest.raises(TrainingError, match=r"loss became nan in epoch 1 \(by step 3\).*Lower train.lr"):
        train(digits_config(tmp_path), log=quiet)


@pytest.mark.parametrize("mode", ["bp", "local"])
def test_other_modes_train(tmp_path, mode):
    results = train(digits_config(tmp_path, **{"train.mode": mode, "train.epochs": 3}), log=quiet)
    assert results["test_error"] < 0.11  # 1.5x: measured 0.07; chance is 0.9


def test_lean_memory_trains_like_plain_caps(tmp_path):
    plain = train(digits_config(tmp_path / "plain", **{"model.dropout": 0.2}), log=quiet)
    lean = train(digits_config(tmp_path / "lean", **{"model.dropout": 0.2, "train.memory": "lean"}), log=quiet)
    a, b = read_metrics(tmp_path / "plain"), read_metrics(tmp_path / "lean")
    assert [m["train_loss"] for m in b] == pytest.approx([m["train_loss"] for m in a], rel=1e-4)
    assert lean["test_error"] == pytest.approx(plain["test_error"], abs=0.01)


def test_auto_adam_is_fused_on_cpu_and_pytorchs_default_elsewhere():
    from capsmm.strategies import make_adam

    assert make_adam([torch.nn.Parameter(torch.ones(3))], lr=1e-3).defaults["fused"] is True
    assert not make_adam([torch.nn.Parameter(torch.ones(3, device="meta"))], lr=1e-3).defaults["fused"]
    with pytest.raises(ConfigError, match="valid: auto, foreach, fused, for-loop"):
        make_adam([torch.nn.Parameter(torch.ones(3))], lr=1e-3, impl="default")


@pytest.mark.parametrize("option, rel", [
    ({"train.adam_impl": "foreach"}, 1e-3), ({"train.adam_impl": "for-loop"}, 1e-3), ({"train.channels_last": True}, 1e-3),
    ({"train.compile": True}, 1e-3),
    ({"train.amp": "bf16"}, 0.05),  # bf16 keeps 8 bits of mantissa: the same training, coarser numbers
])
def test_speed_options_do_not_change_the_result(tmp_path, option, rel):
    # no dropout: a channels-last tensor draws its dropout mask in memory order, i.e. another mask,
    # and compiled code draws its masks with its own generator
    base = {"model.backbone": "vgg6", "model.hidden": None, "model.width_mult": 0.125, "model.dropout": 0.0,
            "data.train_subset": 256, "train.epochs": 1}
    reference = train(digits_config(tmp_path / "ref", **base), log=quiet)
    other = train(digits_config(tmp_path / "opt", **base, **option), log=quiet)
    assert other["test_error"] == pytest.approx(reference["test_error"], abs=0.02 if rel < 0.01 else 0.1)
    a, b = read_metrics(tmp_path / "ref"), read_metrics(tmp_path / "opt")
    assert b[0]["train_loss"] == pytest.approx(a[0]["train_loss"], rel=rel)
    if rel > 1e-3:
        assert b[0]["train_loss"] != a[0]["train_loss"]  # the option did change the arithmetic


@pytest.mark.parametrize("flags, expected", [({}, "none"), ({"avx512_bf16": True}, "bf16"), ({"amx_bf16": True}, "bf16")])
def test_amp_auto_trains_in_bf16_exactly_where_the_cpu_computes_it(tmp_path, monkeypatch, flags, expected):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": False, "amx_bf16": False, "avx2": True, **flags})
    small = {"data.train_subset": 128, "data.test_subset": 64, "train.epochs": 1}
    runs = {"auto": "auto", "named": expected, "other": "bf16" if expected == "none" else "none"}
    results = {name: train(digits_config(tmp_path / name, **small, **{"train.amp": amp}), log=quiet) for name, amp in runs.items()}
    assert results["auto"]["amp"] == expected and results["auto"]["config"]["train"]["amp"] == "auto"  # the saved config keeps 'auto'
    losses = [read_metrics(tmp_path / name)[0]["train_loss"] for name in runs]
    assert losses[0] == losses[1] != losses[2]  # the arithmetic of the precision it resolved to, not of the other


def test_a_run_begun_in_bf16_by_auto_is_not_resumed_in_float32_on_another_device(tmp_path, monkeypatch):
    small = {"data.train_subset": 128, "data.test_subset": 64, "train.amp": "auto"}
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": True})
    train(digits_config(tmp_path, **small, **{"train.epochs": 1}), log=quiet)
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": False, "avx2": True})
    with pytest.raises(CheckpointError, match="its epochs ran in precision bf16, and train.amp=auto is none"):
        train(digits_config(tmp_path, **small, **{"train.epochs": 2}), resume=True, log=quiet)


def test_lean_rejects_modes_that_keep_the_gradient(tmp_path):
    with pytest.raises(ConfigError, match="lean needs caps, local or a layer-local peer"):
        train(digits_config(tmp_path, **{"train.memory": "lean", "train.mode": "caps:0.5,caps-full"}), log=quiet)
