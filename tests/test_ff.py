"""Forward-Forward (mode ``ff``): its loss against a hand computation, its locality, its two
predictors against direct computations, its settings, and that it learns."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from capsmm import build_model
from capsmm.errors import ConfigError
from capsmm.ff import wrong_labels
from capsmm.objectives import training_loss

C, B, IN_SHAPE = 4, 6, (1, 3, 4)


def tiny(predictor: str = "linear", **options):
    torch.manual_seed(0)
    ff = {"predictor": predictor, **options}
    return build_model("mlp", num_classes=C, in_shape=IN_SHAPE, mode="ff", depth=3, hidden=5, dropout=0.0, ff_options=ff)


def rms_normalised(x: torch.Tensor) -> torch.Tensor:
    flat = x.reshape(len(x), -1)
    return flat / (flat.pow(2).mean(1, keepdim=True).sqrt() + 1e-8)


def layers(model):
    return [block[1][1] if isinstance(block[1][0], torch.nn.Flatten) else block[1][0] for block in model.encoders["image"].blocks]


def by_hand_activations(model, x: torch.Tensor, label_rows: torch.Tensor) -> list[torch.Tensor]:
    """The reference's forward written out: the label over the first C values, then per layer
    length-normalise, linear, ReLU."""
    z = x.reshape(len(x), -1).clone()
    z[:, :C] = label_rows
    activations = []
    for linear in layers(model):
        z = torch.relu(rms_normalised(z) @ linear.weight.T + linear.bias)
        activations.append(z)
    return activations


def test_the_loss_equals_a_hand_computation_of_the_reference_objective():
    model = tiny(peer_norm=0.03).train()
    with torch.no_grad():  # a trained classifier: at its zero start its cross-entropy is log C whatever it reads
        model.ff.classifier.weight.normal_()
    x, y = torch.randn(B, *IN_SHAPE), torch.tensor([0, 1, 2, 3, 0, 1])
    torch.manual_seed(5)
    loss = training_loss(model(x, y), y)
    torch.manual_seed(5)
    wrong = wrong_labels(y, C)
    assert (wrong != y).all()

    hand = torch.zeros(())
    positive = by_hand_activations(model, x, F.one_hot(y, C).float())
    negative = by_hand_activations(model, x, F.one_hot(wrong, C).float())
    for pos, neg in zip(positive, negative):
        width = pos.shape[1]
        logits = torch.cat([pos.pow(2).sum(1), neg.pow(2).sum(1)]) - width
        target = torch.cat([torch.ones(B), torch.zeros(B)])
        hand = hand + F.binary_cross_entropy_with_logits(logits, target)
        running = 0.9 * 0.5 + 0.1 * pos.mean(0)  # the first step: running means start at 0.5
        hand = hand + 0.03 * ((running.mean() - running) ** 2).mean()
    neutral = by_hand_activations(model, x, torch.full((B, C), 1 / C))
    features = torch.cat([rms_normalised(a) for a in neutral[1:]], dim=1)
    hand = hand + F.cross_entropy(features @ model.ff.classifier.weight.T, y)
    assert loss.item() == pytest.approx(hand.item(), rel=1e-5)


def test_negative_labels_are_every_other_class_uniformly():
    torch.manual_seed(0)
    y = torch.zeros(40_000, dtype=torch.long)
    counts = torch.bincount(wrong_labels(y, 5), minlength=5)
    assert counts[0] == 0
    assert counts[1:].min() > 0.23 * len(y) and counts[1:].max() < 0.27 * len(y)


def test_no_gradient_crosses_a_layer_and_the_classifier_trains_only_itself():
    model = tiny().train()
    x, y = torch.randn(B, *IN_SHAPE), torch.arange(B) % C
    output = model(x, y)
    output.parts[1]["goodness"].sum().backward(retain_graph=True)
    first, second, third = layers(model)
    assert first.weight.grad is None and third.weight.grad is None
    assert second.weight.grad.abs().sum() > 0
    model.zero_grad()
    F.cross_entropy(output.logits, y).backward()
    assert all(layer.weight.grad is None for layer in layers(model))
    assert model.ff.classifier.weight.grad.abs().sum() > 0


def test_both_predictors_equal_a_direct_computation():
    model = tiny()
    with torch.no_grad():
        model.ff.classifier.weight.normal_()
    model.eval()
    x = torch.randn(B, *IN_SHAPE)
    with torch.no_grad():
        neutral = by_hand_activations(model, x, torch.full((B, C), 1 / C))
        linear = torch.cat([rms_normalised(a) for a in neutral[1:]], dim=1) @ model.ff.classifier.weight.T
        goodness = torch.stack([
            sum(a.pow(2).sum(1) - a.shape[1] for a in by_hand_activations(model, x, F.one_hot(torch.full((B,), c), C).float())[1:])
            for c in range(C)], dim=1)
        assert torch.allclose(model(x).logits, linear, atol=1e-5)
        assert torch.allclose(model.ff_scores(x, "goodness"), goodness, atol=1e-4)
        assert torch.allclose(tiny("goodness").eval()(x).logits, goodness, atol=1e-4)


def test_mean_goodness_is_the_sum_over_the_width_with_threshold_one():
    summed, mean = tiny(), tiny(goodness="mean")
    activation = torch.randn(B, 5)
    assert torch.allclose(mean.ff.goodness(activation), summed.ff.goodness(activation) / 5, atol=1e-6)


def test_the_classifier_has_its_own_learning_rate_and_weight_decay_under_sgd():
    from capsmm.config import TrainConfig
    from capsmm.strategies import build_strategy

    model = tiny(classifier_lr=0.02, classifier_weight_decay=0.5)
    train = TrainConfig(mode="ff", optimizer="sgd", lr=1e-3, weight_decay=3e-4, momentum=0.8)
    optimizer = build_strategy(model, train, torch.device("cpu")).optimizer
    assert isinstance(optimizer, torch.optim.SGD)
    groups = {len(g["params"]): g for g in optimizer.param_groups}
    classifier = next(g for g in optimizer.param_groups if any(p is model.ff.classifier.weight for p in g["params"]))
    layers_group = next(g for g in optimizer.param_groups if g is not classifier)
    assert (classifier["lr"], classifier["weight_decay"]) == (0.02, 0.5)
    assert (layers_group["lr"], layers_group["weight_decay"], layers_group["momentum"]) == (1e-3, 3e-4, 0.8)
    assert len(groups) == 2


def test_the_linear_cool_down_is_the_reference_schedule_capped_at_one():
    from capsmm.config import TrainConfig
    from capsmm.trainer import lr_factor

    def reference(epoch: int, epochs: int) -> float:  # loeweX/Forward-Forward src/utils.py get_linear_cooldown_lr
        return 2 * (1 + epochs - epoch) / epochs if epoch > epochs // 2 else 1.0

    train = TrainConfig(epochs=100, lr_cooldown=True)
    assert [lr_factor(train, e) for e in range(100)] == pytest.approx([reference(e, 100) for e in range(100)])
    assert lr_factor(TrainConfig(epochs=3, lr_cooldown=True), 2) == 1.0  # the reference's would be 1.33
    assert lr_factor(TrainConfig(epochs=100), 99) == 1.0


def test_relu_full_grad_is_relu_forward_and_identity_backward():
    from capsmm.layers import activation

    x = torch.tensor([-2.0, -0.5, 0.5, 2.0], requires_grad=True)
    y = activation("relu-full-grad")(x)
    y.backward(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert torch.equal(y, torch.relu(x.detach()))
    assert torch.equal(x.grad, torch.tensor([1.0, 2.0, 3.0, 4.0]))


@pytest.mark.parametrize("settings, message", [
    ({"model.backbone": "vgg8b"}, "mode ff trains the mlp backbone"),
    ({"model.depth": 1}, "at least 2 blocks"),
    ({"train.memory": "lean"}, "mode ff builds its inputs from the labels"),
    ({"model.ff_predictor": "energy"}, "model.ff_predictor"),
    ({"train.optimizer": "rmsprop"}, "train.optimizer"),
])
def test_unfit_settings_are_one_line_errors(settings, message):
    from capsmm.config import RunConfig, set_value
    from capsmm.training import model_from_config

    config = RunConfig()
    for key, value in {"train.mode": "ff", "data.name": "digits", **settings}.items():
        set_value(config, key, value)
    with pytest.raises(ConfigError) as error:
        config.validate()
        model_from_config(config, 10, (1, 8, 8))
    assert message in str(error.value) and "\n" not in str(error.value)


def test_multimodal_runs_refuse_ff_in_one_line():
    from capsmm.config import MultimodalRunConfig, set_value

    config = MultimodalRunConfig()
    set_value(config, "train.mode", "ff")
    with pytest.raises(ConfigError, match="single-encoder mlp models"):
        config.validate()


@pytest.fixture(scope="module")
def ff_run(tmp_path_factory):
    from capsmm.config import RunConfig, set_value
    from capsmm.training import train

    out = tmp_path_factory.mktemp("ff-digits")
    config = RunConfig()
    for key, value in {"data.name": "digits", "train.mode": "ff", "model.hidden": 200, "model.dropout": 0.0, "train.lr": 1e-3,
                       "train.batch_size": 32, "train.epochs": 3, "train.progress": False, "train.device": "cpu", "out": str(out)}.items():
        set_value(config, key, value)
    return out, train(config, log=lambda line: None)


def test_ff_learns_the_digits_and_records_both_predictors(ff_run):
    out, results = ff_run
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert results["test_error"] == results["test_error_linear"] == metrics[-1]["test_error"]
    # 10 classes: chance is 90% error; both predictors learn from the layers FF trained (measured: 7% and 55%)
    assert results["test_error_linear"] < 0.2 and results["test_error_goodness"] < 0.75
    assert all(0 < m["train_seconds"] <= m["epoch_seconds"] for m in metrics)


def test_probes_read_every_layer_and_a_cap_readout_of_a_frozen_ff_network(ff_run, capsys):
    from conftest import load_script

    out, results = ff_run
    probe = load_script("probe")
    assert probe.main([str(out), "--features", "blocks", "--cap-readout", "2,3"]) == 0
    figures = json.loads((out / "evaluation" / "probe-blocks.json").read_text())["image"]
    assert set(figures) == {"block_1", "block_2", "block_3", "cap_readout"} and figures["cap_readout"]["blocks"] == [2, 3]
    assert all(figures[f"block_{i}"]["test_error"] < 0.2 for i in (1, 2, 3))  # the digits are linearly separable from every layer
    assert figures["cap_readout"]["test_error"] < 0.3
    assert "CAP readout, blocks 2,3" in capsys.readouterr().out
    assert probe.main([str(out), "--cap-readout", "4"]) == 2
    error = capsys.readouterr().err
    assert "blocks 1..3" in error and error.count("\n") == 1


def test_a_training_forward_without_labels_is_refused_and_diagnostics_read_the_neutral_input():
    from capsmm.diagnostics import activation_patterns, model_diagnostics, sparsity

    model = tiny().train()
    x, y = torch.randn(B, *IN_SHAPE), torch.arange(B) % C
    with pytest.raises(ConfigError, match="model\\(x, labels\\)"):
        model(x)
    with torch.no_grad():
        assert model(x).logits.shape == (B, C)  # without gradient (a benchmark's dry run): the scores
    figures = model_diagnostics(model, x, y)
    assert model.training
    model.eval()
    with torch.no_grad():
        read = lambda inputs: [sparsity(a) for a in activation_patterns(model, inputs, model.pattern_width)]  # noqa: E731
        assert figures["sparsity_by_block"] == read(model.ff.neutral(x)) != read(x)
