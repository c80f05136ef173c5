"""Class-incremental learning: tasks of classes, masks, frozen prototypes, replay, and metrics that match
a hand computation from the saved per-task accuracies."""

import json
import re
import statistics

import pytest
import torch

import capsmm.incremental
from capsmm import build_model
from capsmm.checkpoint import load_checkpoint
from capsmm.config import DataConfig, build_runs
from capsmm.data import load_image_dataset
from capsmm.incremental import IncrementalConfig, incremental_metrics, task_classes
from conftest import ROOT, load_script

train_incremental = load_script("train_incremental")


def test_tasks_split_the_classes_in_order_or_all_at_once():
    assert task_classes(10, IncrementalConfig(tasks=5)) == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    assert task_classes(4, IncrementalConfig(tasks=2, class_order=[3, 1, 0, 2])) == [[3, 1], [0, 2]]
    assert task_classes(4, IncrementalConfig(tasks=2, joint=True)) == [[0, 1, 2, 3]]
    with pytest.raises(Exception, match="do not split into 3 equal tasks"):
        task_classes(10, IncrementalConfig(tasks=3))


def test_metrics_by_hand():
    accuracy = [[0.9, 0.0, 0.0], [0.6, 0.8, 0.0], [0.3, 0.5, 0.95]]
    metrics = incremental_metrics(accuracy, [0.9, 0.7, 0.58])
    assert metrics["forgetting"] == pytest.approx([0.9 - 0.3, 0.8 - 0.5])
    assert metrics["backward_transfer"] == pytest.approx(((0.3 - 0.9) + (0.5 - 0.8)) / 2)
    assert metrics["average_incremental_accuracy"] == pytest.approx((0.9 + 0.7 + 0.58) / 3)


def test_unseen_classes_are_out_of_the_softmax_and_their_prototypes_untouched():
    torch.manual_seed(0)
    model = build_model("mlp", num_classes=6, in_shape=(1, 8, 8), mode="caps", hidden=16, pattern_width=8)
    model.set_class_mask([0, 1])
    out = model(torch.randn(5, 1, 8, 8))
    assert torch.isinf(out.logits[:, 2:]).all() and torch.isfinite(out.logits[:, :2]).all()
    torch.nn.functional.cross_entropy(out.logits, torch.tensor([0, 1, 0, 1, 0])).backward()
    grad = model.head.chunks[0].grad
    assert grad[2:].abs().sum() == 0 and grad[:2].abs().sum() > 0


def test_the_script_prints_what_its_saved_accuracies_give(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = train_incremental.main(["--config", str(ROOT / "configs" / "incremental_digits.yaml"), "--epochs", "3", "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    for mode in ("bp", "caps"):
        [folder] = (tmp_path / "runs" / "incremental_digits").glob(f"{mode}_*/seed-0")
        results = json.loads((folder / "results.json").read_text())
        r = results["accuracy"]
        last = len(r) - 1
        forgetting = statistics.mean(max(r[t][j] for t in range(j, last)) - r[last][j] for j in range(last))
        transfer = statistics.mean(r[last][j] - r[j][j] for j in range(last))
        average = statistics.mean(results["seen_accuracy"])
        row = next(line for line in printed.splitlines() if line.startswith(f"| {mode} |"))
        numbers = [float(x) for x in re.findall(r"-?\d+\.\d+", row)]
        assert numbers[:4] == pytest.approx([100 * average, 100 * results["seen_accuracy"][-1], 100 * forgetting, 100 * transfer], abs=0.006)
        assert len(results["accuracy"]) == 5 and all(len(row_) == 5 for row_ in results["accuracy"])
        assert all((folder / f"task-{t}" / "checkpoint.safetensors").is_file() for t in range(5))
    # the same command again: every task is loaded from its finished run, and the figures come out the same
    saved = {p: p.read_text() for p in (tmp_path / "runs").rglob("results.json")}
    assert train_incremental.main(["--config", str(ROOT / "configs" / "incremental_digits.yaml"), "--epochs", "3", "--no-progress"]) == 0
    assert {p: p.read_text() for p in (tmp_path / "runs").rglob("results.json")} == saved


def test_freeze_prototypes_freeze_blocks_and_replay_each_do_what_they_say(tmp_path, monkeypatch):
    """Two tasks of 5 digits: after the second, the first task's prototypes (no weight decay here)
    and the first block are the first task's, and the second task trained on 3 replayed samples of
    each old class besides its own."""
    trained_on = []

    class RecordingLoader(capsmm.incremental.BatchLoader):
        def __init__(self, split, *args, shuffle=False, **kwargs):
            if shuffle:
                trained_on.append(split)
            super().__init__(split, *args, shuffle=shuffle, **kwargs)

    monkeypatch.setattr(capsmm.incremental, "BatchLoader", RecordingLoader)
    overrides = {"data.name": "digits", "model.backbone": "mlp", "model.hidden": 32, "model.pattern_width": 16, "train.mode": "caps",
                 "train.epochs": 1, "train.batch_size": 64, "train.weight_decay": 0.0, "train.progress": False, "train.device": "cpu",
                 "incremental.tasks": 2, "incremental.replay": 3, "incremental.freeze_prototypes": True, "incremental.freeze_blocks": 1,
                 "out": str(tmp_path)}
    [config] = build_runs(None, list(overrides.items()), capsmm.incremental.IncrementalRunConfig)
    capsmm.incremental.run_incremental(config, log=lambda _: None)
    first, second = (load_checkpoint(next(tmp_path.rglob(f"task-{t}/checkpoint.safetensors")))["model"] for t in range(2))
    chunks = [k for k in first if k.startswith("head.chunks.")]
    assert chunks and all(torch.equal(first[k][:5], second[k][:5]) and not torch.equal(first[k][5:], second[k][5:]) for k in chunks)
    block = lambda k: k.split(".blocks.")[1].split(".")[0] if ".blocks." in k else None  # noqa: E731
    assert [k for k in first if block(k) == "0"] and all(torch.equal(first[k], second[k]) for k in first if block(k) == "0")
    assert any(not torch.equal(first[k], second[k]) for k in first if block(k) == "1")
    # replay: task 1 saw all of its classes' training samples and 3 of each old class, all real training samples
    digits = load_image_dataset(DataConfig(name="digits")).train
    counts = torch.bincount(digits.labels, minlength=10)
    assert torch.bincount(trained_on[1].labels, minlength=10).tolist() == [3] * 5 + counts[5:].tolist()
    rows = {(tuple(x.flatten().tolist()), int(y)) for x, y in zip(digits.images, digits.labels)}
    assert all((tuple(x.flatten().tolist()), int(y)) in rows for x, y in zip(trained_on[1].inputs, trained_on[1].labels))
