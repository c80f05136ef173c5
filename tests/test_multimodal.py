"""Multimodal CAPs: independent encoders in one prototype space, subsets, fusions, adding modalities,
and a plug-in encoder defined right here."""

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from capsmm import CAPEncoder, training_loss
from capsmm.config import TrainConfig
from capsmm.data import ModalSplit
from capsmm.encoder import build_encoder, register_encoder
from capsmm import gate as gate_module
from capsmm.gate import calibrate_gate
from capsmm.multimodal import EncoderSpec, LateFusion, build_fusion_model, evaluate_modalities, fit_multimodal, multimodal_loaders

SPECS = {
    "image": EncoderSpec("mlp", (1, 8, 8), {"hidden": 32, "dropout": 0.1}),
    "audio": EncoderSpec("audio-cnn", (800,), {"width_mult": 0.25, "sample_rate": 8000}),
}
HEAD = {"pattern_width": 24}


def joint(mode="caps", **head):
    torch.manual_seed(0)
    return build_fusion_model("joint", SPECS, num_classes=4, mode=mode, head_options=HEAD | head)


def batch(n=8):
    torch.manual_seed(1)
    return {"image": torch.randn(n, 1, 8, 8), "audio": torch.randn(n, 800)}, torch.arange(n) % 4


def test_encoders_share_no_parameter():
    model = joint()
    ids = {name: {id(p) for p in encoder.parameters()} for name, encoder in model.encoders.items()}
    assert ids["image"] and ids["audio"] and not ids["image"] & ids["audio"]
    readout_ids = {name: {id(p) for p in model.readouts[name].parameters()} for name in model.encoders}
    assert not readout_ids["image"] & readout_ids["audio"]


@pytest.mark.parametrize("mode", ["bp", "caps", "caps-full", "local"])
def test_no_gradient_path_between_modalities(mode):
    model = joint(mode)
    inputs, _ = batch()
    out = model(inputs)
    sources = [name for name in model.encoders for _ in model.read_blocks[name]]
    assert sorted(set(sources)) == ["audio", "image"]
    for source, pattern in zip(sources, out.patterns):
        own = torch.autograd.grad(pattern.sum(), list(model.encoders[source].parameters()), allow_unused=True, retain_graph=True)
        assert any(g is not None for g in own)
        for other in set(model.encoders) - {source}:
            grads = torch.autograd.grad(pattern.sum(), list(model.encoders[other].parameters()), allow_unused=True, retain_graph=True)
            assert all(g is None for g in grads), f"{source} pattern reaches the {other} encoder"


def test_caps_blocks_of_every_modality_learn_their_partial_derivative_of_the_joint_loss():
    model = joint("caps")
    inputs, y = batch()
    out = model(inputs)
    leaves = [p.detach().requires_grad_() for p in out.patterns]
    partials = torch.autograd.grad(F.cross_entropy(model.head(leaves), y), leaves)
    blocks = [(name, i, block) for name in model.encoders for i, block in enumerate(model.encoders[name].blocks)]
    expected = [torch.autograd.grad(out.patterns[k], list(block.parameters()), grad_outputs=partials[k], retain_graph=True)
                for k, (_, _, block) in enumerate(blocks)]
    training_loss(out, y).backward()
    for (name, i, block), grads in zip(blocks, expected):
        for p, g in zip(block.parameters(), grads):
            torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-7, msg=f"{name} block {i}")


def test_a_missing_modality_drops_its_slice():
    model = joint("caps").eval()
    inputs, _ = batch()
    full = model(inputs)
    image_only = model({"image": inputs["image"]})
    m = torch.cat(image_only.patterns, 1)
    mu = model.head.prototype_slices(model.slices["image"])
    torch.testing.assert_close(image_only.logits, F.normalize(m, dim=1) @ F.normalize(mu, dim=1).T / 0.1)
    assert len(image_only.patterns) == len(model.read_blocks["image"]) and not torch.allclose(image_only.logits, full.logits)
    with pytest.raises(ValueError, match="no input for any modality"):
        model({})


def test_late_fusion_averages_probabilities_and_trains_each_model_alone():
    torch.manual_seed(0)
    late = build_fusion_model("late", SPECS, num_classes=4, mode="caps", head_options=HEAD)
    assert isinstance(late, LateFusion)
    late.eval()
    inputs, y = batch()
    out = late(inputs)
    single = {name: late.models[name]({name: x}).logits for name, x in inputs.items()}
    expected = (single["audio"].softmax(1) + single["image"].softmax(1)) / 2
    torch.testing.assert_close(out.logits.exp(), expected)
    torch.testing.assert_close(training_loss(out, y), sum(F.cross_entropy(v, y) for v in single.values()))
    torch.testing.assert_close(late({"image": inputs["image"]}).logits.argmax(1), single["image"].argmax(1))


def test_concat_bp_is_end_to_end_bp_with_a_linear_head_on_the_last_blocks():
    torch.manual_seed(0)
    model = build_fusion_model("concat-bp", SPECS, num_classes=4, mode="bp", head_options=HEAD)
    assert model.mode == "bp" and model.head.kind == "template"
    inputs, _ = batch()
    out = model.eval()(inputs)
    assert len(out.patterns) == 2
    torch.testing.assert_close(out.logits, torch.cat(out.patterns, 1) @ model.head.weight.T)


def paired_parts(n_train=96, n_test=48):
    """Toy paired data: class c is visible in both modalities (image brightness pattern, audio tone)."""
    generator = torch.Generator().manual_seed(0)

    def images(n):
        labels = torch.arange(n) % 4
        pixels = torch.zeros(n, 1, 8, 8, dtype=torch.uint8)
        for c in range(4):
            pixels[labels == c, 0, 2 * c:2 * c + 2] = 200
        pixels += torch.randint(0, 40, pixels.shape, generator=generator, dtype=torch.uint8)
        return ModalSplit(pixels, labels, lambda x: x.float() / 255)

    def audio(n):
        labels = torch.arange(n) % 4
        t = torch.arange(800) / 8000
        waves = torch.stack([torch.sin(2 * torch.pi * 300 * (1 + int(c)) * t) for c in labels]) + 0.3 * torch.randn(n, 800, generator=generator)
        return ModalSplit(waves, labels)

    return {"image": images(n_train), "audio": audio(n_train)}, {"image": images(n_test), "audio": audio(n_test)}


def small_train(**overrides):
    config = TrainConfig(epochs=3, batch_size=16, lr=3e-3, progress=False, device="cpu", eval_batch_size=64, diagnostics_every=0)
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def test_adding_a_modality_leaves_the_old_predictions_bit_identical(tmp_path):
    train, test = paired_parts()
    torch.manual_seed(0)
    model = build_fusion_model("joint", {"image": SPECS["image"]}, num_classes=4, mode="caps", head_options=HEAD)
    fit_multimodal(model, {"image": train["image"]}, {"image": test["image"]}, small_train(), tmp_path / "image",
                   run_config={}, summary={}, anchor="image", log=lambda _: None)
    _, loader = multimodal_loaders(test, test, batch_size=16, eval_batch_size=64, device=torch.device("cpu"), seed=0, anchor="image")
    model.eval()
    before = torch.cat([model({"image": x["image"]}).logits for x, _ in loader])
    model.freeze()
    model.add_modality("audio", SPECS["audio"].build(), SPECS["audio"].in_shape)
    frozen = {n: p.clone() for n, p in model.named_parameters() if not p.requires_grad}
    results = fit_multimodal(model, train, test, small_train(), tmp_path / "both", run_config={}, summary={}, anchor="image",
                             log=lambda _: None)
    model.eval()
    after = torch.cat([model({"image": x["image"]}).logits for x, _ in loader])
    assert torch.equal(before, after)
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    assert any(p.requires_grad for p in model.encoders["audio"].parameters())
    assert results["test_error_by_modality"]["audio"] < 0.13  # the new modality learned: 0.08 measured, chance 0.75


class ToySequenceEncoder(CAPEncoder):
    """A plug-in encoder for a new modality: 'toy' vectors, two linear blocks."""

    modality = "toy"

    def __init__(self, features: int, width: int) -> None:
        super().__init__([nn.Sequential(nn.Linear(features, width), nn.ReLU()), nn.Sequential(nn.Linear(width, width), nn.ReLU())])


@register_encoder("toy-mlp-test", modality="toy")
def toy_mlp(*, in_shape, width_mult=1.0, dropout=0.0):
    return ToySequenceEncoder(in_shape[0], int(32 * width_mult))


def test_a_plug_in_encoder_trains_jointly_with_an_image_encoder(tmp_path):
    train, test = paired_parts()
    toy = {split: ModalSplit(torch.nn.functional.one_hot(parts["image"].labels, 4).float() * 2 + 0.5 * torch.randn(len(parts["image"].labels), 4),
                             parts["image"].labels) for split, parts in (("train", train), ("test", test))}
    specs = {"image": SPECS["image"], "toy": EncoderSpec("toy-mlp-test", (4,), {})}
    assert isinstance(build_encoder("toy-mlp-test", in_shape=(4,)), ToySequenceEncoder)
    torch.manual_seed(0)
    model = build_fusion_model("joint", specs, num_classes=4, mode="caps", head_options=HEAD)
    results = fit_multimodal(model, {"image": train["image"], "toy": toy["train"]}, {"image": test["image"], "toy": toy["test"]},
                             small_train(), tmp_path, run_config={}, summary={}, anchor="toy", log=lambda _: None)
    errors = results["test_error_by_modality"]
    assert set(errors) == {"image", "toy", "image+toy"}
    assert errors["toy"] < 0.07 and errors["image+toy"] < 0.05  # measured 0.04 and 0 (1.5x, or 2 of 48 samples)
    assert set(results["retrieval"]) == {"image->toy", "toy->image"}
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["test_error_by_modality"] == errors


def test_joint_training_beats_chance_in_every_subset(tmp_path):
    train, test = paired_parts()
    model = joint("caps")
    results = fit_multimodal(model, train, test, small_train(epochs=4), tmp_path, run_config={}, summary={}, anchor="audio",
                             log=lambda _: None)
    assert results["test_error_by_modality"]["audio"] < 0.29  # measured 0.19 (chance 0.75)
    assert results["test_error_by_modality"]["image"] < 0.05 and results["test_error_by_modality"]["audio+image"] < 0.07  # measured 0 and 0.04
    assert results["retrieval"]["audio->image"]["map"] > 0.4  # chance is about 0.25
    evaluated = evaluate_modalities(model, multimodal_loaders(train, test, batch_size=16, eval_batch_size=64, device=torch.device("cpu"),
                                                              seed=0, anchor="audio")[1], ["audio", "image"])
    assert evaluated["test_error_by_modality"] == pytest.approx(results["test_error_by_modality"], abs=1e-6)  # results: rounded to 1e-6


# ---------------------------------------------------------------------------- gated fusion, corrupted modalities

def test_the_gated_score_is_the_joint_one_when_open_and_the_other_modality_alone_when_closed():
    model = joint().eval()
    inputs, labels = batch()
    model.gated = True  # uncalibrated gates stay open: the joint cosine itself
    torch.testing.assert_close(model(inputs).logits, joint().eval()(inputs).logits, rtol=1e-5, atol=1e-5)
    calibrate_gate(model, [(inputs, labels)])
    model.gate.low.fill_(-1e9)
    model.gate.high.fill_(-1e9 + 1)  # calibrated statistics, gates forced open again
    typical = model(inputs).typicality
    rows = {name: i for i, name in enumerate(model(inputs).modalities)}
    # shut the audio gate for the first half of the batch only: those samples score as image alone
    threshold = typical[rows["audio"]].sort().values[3:5].mean()
    model.gate.high[model.gate.modalities.index("audio")] = threshold + 1e-6
    model.gate.low[model.gate.modalities.index("audio")] = threshold
    gated, image_alone, ungated = model(inputs).logits, model({"image": inputs["image"]}).logits, joint().eval()(inputs).logits
    shut = typical[rows["audio"]] <= threshold
    assert shut.sum() == 4
    torch.testing.assert_close(gated[shut], image_alone[shut], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gated[~shut], ungated[~shut], rtol=1e-5, atol=1e-5)


def test_the_gate_calibration_is_the_same_whether_it_keeps_its_patterns_or_recomputes_them(monkeypatch):
    model, (train, _) = joint("caps"), paired_parts()
    loader = multimodal_loaders(train, train, batch_size=16, eval_batch_size=16, device=torch.device("cpu"), seed=0, anchor="audio")[1]
    forwards, patterns = [], gate_module._patterns_by_modality
    monkeypatch.setattr(gate_module, "_patterns_by_modality", lambda *a: forwards.append(1) or patterns(*a))
    calibrate_gate(model, loader)
    kept, passes_kept = {k: v.clone() for k, v in model.gate.state_dict().items()}, len(forwards)
    monkeypatch.setattr(gate_module, "CALIBRATION_CACHE_BYTES", 0)  # nothing fits: the second pass recomputes
    forwards.clear()
    calibrate_gate(model, loader)
    assert passes_kept == len(loader) and len(forwards) == 2 * len(loader)
    assert torch.isfinite(model.gate.high).all() and (model.gate.low < model.gate.high).all()  # calibrated, not the open defaults
    for name, value in model.gate.state_dict().items():
        torch.testing.assert_close(value, kept[name], rtol=0, atol=0, msg=name)


def test_a_constant_input_shuts_its_gate_however_typical_its_pattern():
    model = joint("caps").eval()
    model.gated = True  # uncalibrated: on typicality alone every gate stays open
    inputs, _ = batch()
    blank = {"image": torch.full_like(inputs["image"], -0.8), "audio": inputs["audio"]}
    blank["image"][:2] = inputs["image"][:2]  # two samples keep a real image
    with torch.no_grad():
        joint_scores, audio_alone, both = model(blank).logits, model({"audio": inputs["audio"]}).logits, model(inputs).logits
    torch.testing.assert_close(joint_scores[2:], audio_alone[2:])  # the blank image no longer counts
    torch.testing.assert_close(joint_scores[:2], both[:2])  # a real one still does
    assert not torch.allclose(both[2:], audio_alone[2:])  # (and it would have changed the scores)


def test_a_corrupted_modality_leaves_the_joint_prediction_to_the_clean_one(tmp_path):
    train, test = paired_parts()
    results = fit_multimodal(joint("caps"), train, test, small_train(epochs=4), tmp_path, run_config={}, summary={}, anchor="audio",
                             log=lambda _: None)
    corrupted, alone = results["corrupted_error"], results["test_error_by_modality"]
    epochs = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert ["corrupted_error" in e for e in epochs] == [False, False, False, True]  # the trained model's figures: last epoch only
    (tmp_path / "results.json").unlink()  # killed after the last checkpoint, before its results: resuming trains nothing
    resumed = fit_multimodal(joint("caps"), train, test, small_train(epochs=4), tmp_path, run_config={}, summary={}, anchor="audio",
                             log=lambda _: None, resume=True)
    assert {k: resumed[k] for k in ("corrupted_error", "ungated_error", "test_error_by_modality", "retrieval")} == {
        k: results[k] for k in ("corrupted_error", "ungated_error", "test_error_by_modality", "retrieval")}
    assert set(corrupted) == {"audio=noise", "audio=silence", "audio=tones", "image=noise", "image=blank"}
    for name, error in corrupted.items():  # docs/multimodal.md: "exactly the clean modality's error alone"
        clean = alone["image" if name.startswith("audio") else "audio"]
        assert error == clean, f"{name}: joint {error:.3f} against the clean modality alone {clean:.3f}"
    # gates act at inference only: trained without them, the model is the same, so its single-modality
    # errors are the gated run's and its joint errors are the gated run's figures with the gates off
    ungated = fit_multimodal(joint("caps"), train, test, small_train(epochs=4), tmp_path / "ungated", run_config={}, summary={},
                             anchor="audio", log=lambda _: None, gate=False)
    by_modality = dict(results["test_error_by_modality"], **{"audio+image": results["ungated_error"]["clean"]})
    assert ungated["test_error_by_modality"] == by_modality
    assert ungated["corrupted_error"] == {name: results["ungated_error"][name] for name in corrupted}


# ---------------------------------------------------------------------------- balancing the modalities

def balanced(mode="caps", slice_loss_weight=0.0):
    """The joint model set to score each modality alone, as capsmm.balance.attach_balance does."""
    model = joint(mode).train()
    model.score_modalities, model.slice_loss_weight = True, slice_loss_weight
    return model


def hand_cross_entropy(logits, y):
    return (logits.logsumexp(1) - logits.gather(1, y[:, None]).squeeze(1)).mean()


def test_the_slice_loss_is_each_modalitys_own_slice_cross_entropy_added_with_its_weight():
    model = balanced(slice_loss_weight=0.3)
    inputs, y = batch()
    out = model(inputs)
    by_modality = {name: [p for p, owner in zip(out.patterns, [n for n in model.encoders for _ in model.read_blocks[n]]) if owner == name]
                   for name in model.encoders}
    own = {}
    for name, patterns in by_modality.items():
        m = torch.cat(patterns, 1)
        mu = model.head.prototype_slices(model.slices[name])
        own[name] = (m / m.norm(dim=1, keepdim=True)) @ (mu / mu.norm(dim=1, keepdim=True)).T / model.head.temperature
    expected = hand_cross_entropy(out.logits, y) + 0.3 * (hand_cross_entropy(own["audio"], y) + hand_cross_entropy(own["image"], y))
    torch.testing.assert_close(training_loss(out, y), expected, rtol=1e-5, atol=1e-6)
    for name, logits in own.items():  # the own-slice scores are the model's prediction from that modality alone
        torch.testing.assert_close(out.modality_logits[name], logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["caps", "bp"])
def test_a_zero_slice_loss_weight_is_the_plain_joint_loss_exactly(mode):
    inputs, y = batch()
    plain, scored = joint(mode).train(), balanced(mode, slice_loss_weight=0.0)
    torch.manual_seed(3)
    plain_loss = training_loss(plain(inputs), y)
    torch.manual_seed(3)  # the same dropout masks
    out = scored(inputs)
    loss = training_loss(out, y)
    assert out.modality_logits is not None and torch.equal(loss, plain_loss)
    plain_loss.backward()
    loss.backward()
    for (name, p), q in zip(plain.named_parameters(), scored.parameters()):
        assert torch.equal(p.grad, q.grad), name


def test_with_slice_losses_each_caps_block_learns_the_whole_objective_at_its_own_pattern():
    model = balanced("caps", slice_loss_weight=0.5)
    inputs, y = batch()
    out = model(inputs)
    leaves = [p.detach().requires_grad_() for p in out.patterns]
    slices = [s for name in model.encoders for s in model.slices[name]]
    partials = torch.autograd.grad(training_loss(model.score(leaves, slices), y), leaves)
    blocks = [block for name in model.encoders for block in model.encoders[name].blocks]
    expected = [torch.autograd.grad(out.patterns[k], list(block.parameters()), grad_outputs=partials[k], retain_graph=True)
                for k, block in enumerate(blocks)]
    training_loss(out, y).backward()
    for k, (block, grads) in enumerate(zip(blocks, expected)):
        for p, g in zip(block.parameters(), grads):
            torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-7, msg=f"block {k}")


def test_a_modalitys_slice_loss_reaches_no_other_encoder():
    model = balanced("caps-full", slice_loss_weight=1.0)
    inputs, y = batch()
    out = model(inputs)
    for name, logits in out.modality_logits.items():
        loss = F.cross_entropy(logits, y)
        for other in set(model.encoders) - {name}:
            grads = torch.autograd.grad(loss, list(model.encoders[other].parameters()) + list(model.readouts[other].parameters()),
                                        allow_unused=True, retain_graph=True)
            assert all(g is None for g in grads), f"{name}'s slice loss reaches the {other} encoder"
        assert any(g is not None for g in torch.autograd.grad(loss, list(model.encoders[name].parameters()), allow_unused=True,
                                                              retain_graph=True))


def test_the_modulation_coefficient_by_hand():
    from capsmm.balance import discrepancy_coefficients

    lead = 1 - torch.tanh(torch.tensor(0.8 * (2.0 - 1)))  # rho = 3 / 1.5 = 2
    torch.testing.assert_close(discrepancy_coefficients(torch.tensor([3.0, 1.5]), 0.8), torch.stack([lead, torch.tensor(1.0)]))
    # three modalities: each against the mean of the others; 3 / mean(1, 2) = 2, 1 / 2.5, 2 / 2 = 1 (no lead)
    torch.testing.assert_close(discrepancy_coefficients(torch.tensor([3.0, 1.0, 2.0]), 0.8), torch.stack([lead, torch.tensor(1.0), torch.tensor(1.0)]))


@pytest.mark.parametrize("modulation", ["ogm", "ogm-ge"])
def test_modulation_scales_only_the_leading_modalitys_encoder_gradients(modulation):
    from capsmm.balance import BalanceSettings, attach_balance, branch_weights, discrepancy_coefficients
    from capsmm.strategies import build_strategy

    model = joint("caps")
    strategy = build_strategy(model, small_train(), torch.device("cpu"))
    seen = {}

    def before_modulation(output, labels):
        seen["grads"] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        seen["scores"] = torch.stack([l.softmax(1).gather(1, labels[:, None]).sum() for l in output.modality_logits.values()])
        seen["names"] = list(output.modality_logits)

    strategy.add_after_backward(before_modulation)
    balance = attach_balance(strategy, BalanceSettings(modulation=modulation, alpha=2.0), seed=0)
    strategy.step(*batch(64))
    k = dict(zip(seen["names"], discrepancy_coefficients(seen["scores"], 2.0)))
    leader = min(k, key=k.get)
    assert k[leader] < 0.99 and all(v == 1 for name, v in k.items() if name != leader)
    branch = {id(p): name for name in model.modalities for p in branch_weights(model, name)}
    for n, p in model.named_parameters():
        before = seen["grads"][n]
        if id(p) not in branch:  # prototypes, biases, normalisation: untouched
            assert torch.equal(p.grad, before), n
        elif modulation == "ogm":
            torch.testing.assert_close(p.grad, k[branch[id(p)]] * before, msg=n)
        elif p.numel() >= 500:  # ogm-ge: scaled, plus noise with the gradient's own spread
            noise = p.grad - k[branch[id(p)]] * before
            assert 0.8 < (noise.std() / before.std()).item() < 1.25 and abs(noise.mean().item()) < 0.2 * before.std().item(), n
    figures = balance.epoch_figures()["modality_balance"]
    assert set(figures["score"]) == {"audio", "image"} and figures["coefficient"][leader] == pytest.approx(k[leader].item())
    balance.start_epoch(60)  # past multimodal.modulation_epochs' default last epoch (50): scored, not modulated
    strategy.step(*batch(64))
    assert all(torch.equal(p.grad, seen["grads"][n]) for n, p in model.named_parameters())
    assert set(balance.epoch_figures()["modality_balance"]) == {"score"}


def test_balancing_records_its_figures_every_epoch(tmp_path):
    from capsmm.balance import BalanceSettings

    train, test = paired_parts()
    fit_multimodal(joint("caps"), train, test, small_train(epochs=2), tmp_path, run_config={}, summary={}, anchor="audio",
                   log=lambda _: None, balance=BalanceSettings(slice_loss_weight=0.5, modulation="ogm-ge"))
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    for record in records:
        assert set(record["test_error_by_modality"]) == {"audio", "image", "audio+image"}
        assert set(record["modality_balance"]["score"]) == set(record["modality_balance"]["coefficient"]) == {"audio", "image"}
        assert all(0 < v < 1 for v in record["modality_balance"]["score"].values())


def test_a_linear_probe_reads_what_the_features_hold():
    from capsmm.probe import fit_probe

    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(400) % 4
    informative = F.one_hot(labels, 4).double() * 5 + torch.randn(400, 4, generator=generator, dtype=torch.float64)
    noise = torch.randn(400, 6, generator=generator, dtype=torch.float64)
    separable = fit_probe(torch.cat([informative, noise], 1)[:300], labels[:300], torch.cat([informative, noise], 1)[300:], labels[300:],
                          num_classes=4)
    assert separable["test_error"] < 0.03 and separable["dim"] == 10  # class means 7 std apart: Bayes error about 0.1%
    blind = fit_probe(noise[:300], labels[:300], noise[300:], labels[300:], num_classes=4)
    assert blind["test_error"] > 0.55  # chance is 0.75


def test_probe_features_are_a_modalitys_patterns_or_its_last_block():
    from capsmm.probe import encoder_features

    train, _ = paired_parts()
    model = joint("caps")
    (patterns,), labels = encoder_features(model, "image", train["image"], batch_size=32)
    assert patterns.shape == (96, sum(model.pattern_widths["image"].values())) and torch.equal(labels, train["image"].labels)
    (last,), _ = encoder_features(model, "audio", train["audio"], features="last", batch_size=32)
    assert last.ndim == 2 and last.shape[0] == 96 and model.training  # the model's training state is restored
    blocks, _ = encoder_features(model, "audio", train["audio"], features="blocks", batch_size=32)
    assert len(blocks) == len(model.encoders["audio"].blocks) and torch.equal(blocks[-1], last)


def test_concat_bp_scores_each_modality_with_its_part_of_the_linear_head():
    torch.manual_seed(0)
    model = build_fusion_model("concat-bp", SPECS, num_classes=4, mode="bp", head_options=HEAD).train()
    model.score_modalities, model.slice_loss_weight = True, 1.0
    inputs, y = batch()
    out = model(inputs)
    own = {name: out.patterns[i] @ model.head.prototype_slices(model.slices[name]).T
           for i, name in enumerate(model.encoders)}  # bp reads each encoder's last block: one pattern per modality
    for name, logits in own.items():
        torch.testing.assert_close(out.modality_logits[name], logits)
    torch.testing.assert_close(out.logits, own["audio"] + own["image"])  # the linear head is the sum of its parts
    torch.testing.assert_close(training_loss(out, y), hand_cross_entropy(out.logits, y) + sum(hand_cross_entropy(v, y) for v in own.values()))
