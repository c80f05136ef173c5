"""Diagnostics on constructed inputs with known answers, and plots/reports from real runs."""

import json

import pytest
import torch

from capsmm import build_model
from capsmm.config import build_runs
from capsmm.diagnostics import block_accuracy, gradient_consistency, orthogonality, scale, sparsity
from capsmm.prototypes import PrototypeHead
from capsmm.training import train
from conftest import load_script


def one_hot_patterns(classes=4, per_class=5, dim=8):
    labels = torch.arange(classes).repeat_interleave(per_class)
    patterns = torch.zeros(len(labels), dim)
    patterns[torch.arange(len(labels)), labels] = torch.rand(len(labels)) + 0.5  # positive multiples of e_c
    return patterns, labels


def test_orthogonal_class_means_have_zero_inter_class_cosine():
    patterns, labels = one_hot_patterns()
    result = orthogonality(patterns, labels, 4)
    assert result["inter"] == pytest.approx(0.0, abs=1e-7)
    assert result["intra"] == pytest.approx(1.0)
    assert result["between_means"] == pytest.approx(0.0, abs=1e-7)


def test_identical_classes_have_inter_class_cosine_one():
    labels = torch.arange(3).repeat(4)
    patterns = torch.ones(12, 6) * torch.rand(12, 1)
    assert orthogonality(patterns, labels, 3)["inter"] == pytest.approx(1.0)


def test_orthogonality_ignores_absent_classes():
    patterns, labels = one_hot_patterns(classes=3)
    assert orthogonality(patterns, labels, 10)["inter"] == pytest.approx(0.0, abs=1e-7)


def test_sparsity_bounds():
    d = 64
    one_hot = torch.zeros(3, d)
    one_hot[:, 5] = 2.0
    assert sparsity(one_hot) == pytest.approx(1 / d ** 0.5)
    assert sparsity(torch.ones(3, d) * 7) == pytest.approx(1.0)


def test_scale_norms():
    patterns = [torch.full((2, 4), 1.0), torch.full((2, 9), 2.0)]  # norms 2 and 6
    result = scale(patterns)
    assert result["block_norms"] == pytest.approx([2.0, 6.0])
    assert result["m_norm"] == pytest.approx((4 + 36) ** 0.5)


def test_a_separating_slice_has_accuracy_one_a_useless_one_chance():
    head = PrototypeHead(4, [8, 8])
    patterns, labels = one_hot_patterns(classes=4, dim=8)
    with torch.no_grad():
        head.weight.zero_()
        head.weight[:, :8] = torch.eye(4, 8)  # slice 0: prototype c = e_c
    useless = torch.ones(len(labels), 8)
    accuracy = block_accuracy(head, [patterns, useless], labels, [0, 1])
    assert accuracy[0] == 1.0 and accuracy[1] == pytest.approx(0.25)


def test_gradient_cosine_is_one_for_a_single_block_and_for_the_last_block():
    torch.manual_seed(0)
    x, y = torch.randn(16, 1, 8, 8), torch.arange(16) % 4
    single = build_model("mlp", num_classes=4, in_shape=(1, 8, 8), mode="caps", depth=1, hidden=32, pattern_width=16)
    assert gradient_consistency(single, x, y) == pytest.approx([1.0])
    deep = build_model("mlp", num_classes=4, in_shape=(1, 8, 8), mode="caps", depth=3, hidden=32, pattern_width=16)
    cosines = gradient_consistency(deep, x, y)
    assert cosines[-1] == pytest.approx(1.0)
    assert all(-1 <= c < 0.9999 for c in cosines[:-1])  # the indirect terms matter


def test_gradient_consistency_leaves_the_model_and_rng_untouched():
    torch.manual_seed(0)
    model = build_model("vgg6", num_classes=4, in_shape=(1, 12, 12), mode="local", width_mult=1 / 16, pattern_width=16)
    x, y = torch.randn(8, 1, 12, 12), torch.arange(8) % 4
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5)
    buffers = [b.clone() for b in model.buffers()]
    torch.manual_seed(3)
    expected_next = torch.rand(2)
    torch.manual_seed(3)
    assert gradient_consistency(model, x, y) is not None
    assert torch.equal(torch.rand(2), expected_next)
    assert model.mode == "local" and model.training
    assert all(torch.equal(p.grad, torch.full_like(p, 0.5)) for p in model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(buffers, model.buffers()))
    assert gradient_consistency(build_model("vgg6", num_classes=4, in_shape=(1, 12, 12), mode="bp", width_mult=1 / 16), x, y) is None


def tiny_run(out, **overrides):
    base = {"data.name": "digits", "model.hidden": 64, "model.pattern_width": 64, "train.epochs": 2, "train.batch_size": 64,
            "train.lr": 2e-3, "train.progress": False, "train.device": "cpu", "out": str(out)}
    base.update(overrides)
    [config] = build_runs(None, list(base.items()))
    return train(config, log=lambda line: None)


def test_diagnostics_are_recorded_and_do_not_change_training(tmp_path):
    tiny_run(tmp_path / "plain")
    tiny_run(tmp_path / "diag", **{"train.diagnostics_every": 1})
    plain = [json.loads(l) for l in (tmp_path / "plain" / "metrics.jsonl").read_text().splitlines()]
    diag = [json.loads(l) for l in (tmp_path / "diag" / "metrics.jsonl").read_text().splitlines()]
    assert [r["train_loss"] for r in diag] == [r["train_loss"] for r in plain]
    d = diag[-1]["diagnostics"]
    assert set(d) >= {"orthogonality", "sparsity", "sparsity_by_block", "scale", "block_accuracy", "gradient_cosine"}
    assert len(d["gradient_cosine"]) == len(d["block_accuracy"]) == len(d["sparsity_by_block"]) == 3
    assert d["gradient_cosine"][-1] == pytest.approx(1.0, abs=1e-5)
    assert max(d["block_accuracy"]) > 0.5  # trained blocks beat chance (0.1)


def test_plots_and_report_from_two_real_runs(tmp_path, capsys):
    tiny_run(tmp_path / "runs" / "bp", **{"train.mode": "bp", "train.diagnostics_every": 1})
    tiny_run(tmp_path / "runs" / "caps-nobn", **{"model.readout_norm": "none", "train.diagnostics_every": 1})
    plot_runs, report = load_script("plot_runs"), load_script("report")
    assert plot_runs.main([str(tmp_path / "runs" / "bp"), str(tmp_path / "runs" / "caps-nobn"), "--out", str(tmp_path / "fig")]) == 0
    names = sorted(p.name for p in (tmp_path / "fig").iterdir())
    assert names == ["block_accuracy.png", "errors.png", "gradient_cosine.png", "m_norm.png", "orthogonality_sparsity.png"]
    assert all((tmp_path / "fig" / n).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (tmp_path / "fig" / n).stat().st_size > 10_000 for n in names)
    capsys.readouterr()
    assert report.main([str(tmp_path / "runs"), "--markdown", str(tmp_path / "table.md")]) == 0
    table = (tmp_path / "table.md").read_text()
    assert "| readout_norm | mode |" in table  # labelled by the keys that vary, never by folder name
    assert "| batchnorm | bp | 1 |" in table and "| none | caps | 1 |" in table
    assert plot_runs.main([str(tmp_path / "nothing"), "--out", str(tmp_path / "fig")]) == 2
