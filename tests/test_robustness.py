"""capsmm.evaluation under shift: attacks through every block (the gradient-masking sanity check),
calibration and OOD figures cross-checked by hand and against scikit-learn, corruptions that grow
with severity, and scripts/evaluate.py with its one-line errors."""

import itertools
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import load_script, run_script
from PIL import Image
from sklearn.metrics import roc_auc_score, roc_curve
from test_inference import multimodal_run, vision_run  # noqa: F401 - the shared tiny trained runs

from capsmm import build_model, training_loss
from capsmm.data.vision import load_digits
from capsmm.encoder import gradient_kept
from capsmm.evaluation.attacks import fgsm, pgd
from capsmm.evaluation.calibration import calibration
from capsmm.evaluation.corruptions import (
    IMAGE,
    corrupt,
    corruption_registry,
    corruption_summary,
)
from capsmm.evaluation.ood import auroc, fpr_at_tpr
from capsmm.run_records import read_run

evaluate_script = load_script("evaluate")
MODES = ("bp", "caps", "caps-full", "local", "local-predsim", "ff")


@pytest.fixture(scope="module")
def digits():
    return load_digits(None, None)


def trained_model(mode, digits):
    """A tiny MLP of ``mode`` trained for 5 epochs on the 8x8 digits (batches of 128)."""
    torch.manual_seed(0)
    model = build_model("mlp", num_classes=10, in_shape=(1, 8, 8), mode=mode, hidden=32, depth=2, pattern_width=32)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    x, y = digits.train.images.float() / 255, digits.train.labels
    model.train()
    for _ in range(5):
        for start in range(0, len(y), 128):
            optimizer.zero_grad()
            batch = slice(start, start + 128)
            training_loss(model(x[batch], y[batch]), y[batch]).backward()  # the labels: ff writes them into its input
            optimizer.step()
    return model.eval()


@pytest.mark.parametrize("mode", MODES)
def test_pgd_through_every_block_breaks_every_mode(mode, digits):
    """Carlini et al.'s sanity check: with eps covering the whole pixel range every mode's error
    reaches 99%; the attack's logits are the model's, and its gradient is not the cut one."""
    model = trained_model(mode, digits)
    x, y = digits.test.images[:100].float() / 255, digits.test.labels[:100]
    with torch.no_grad():
        logits = model(x).logits
        with gradient_kept():
            assert torch.equal(model(x).logits, logits)
    assert (logits.argmax(1) != y).float().mean() < 0.5  # it learned something
    logits_of = lambda inputs: model(inputs).logits
    adversarial = pgd(logits_of, x, y, 1.0, (0.0, 1.0), steps=10, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (model(adversarial).logits.argmax(1) != y).float().mean() >= 0.99
    cut = x.clone().requires_grad_(True)
    F.cross_entropy(model(cut).logits, y).backward()
    kept = x.clone().requires_grad_(True)
    with gradient_kept():
        F.cross_entropy(model(kept).logits, y).backward()
    masked = cut.grad is None or not torch.allclose(cut.grad, kept.grad)  # caps cuts even block 0's input: no gradient at all
    assert masked == (mode not in ("bp", "caps-full"))


def test_fgsm_and_pgd_find_the_known_optimum_of_a_linear_model():
    """For two classes and logits W x, the loss of class 0 rises fastest along sign(w1 - w0): the
    L-inf optimum is x + eps sign(w1 - w0) (within the bounds)."""
    weight = torch.tensor([[1.0, -2.0, 0.5, 3.0], [-1.0, 1.0, 2.0, 3.5]])
    x = torch.full((5, 4), 0.5)
    y = torch.zeros(5, dtype=torch.long)
    logits_of = lambda inputs: inputs @ weight.T
    optimum = x + 0.1 * (weight[1] - weight[0]).sign()
    assert torch.allclose(fgsm(logits_of, x, y, 0.1, (0.0, 1.0)), optimum)
    assert torch.allclose(pgd(logits_of, x, y, 0.1, (0.0, 1.0), generator=torch.Generator().manual_seed(1)), optimum)
    assert torch.allclose(pgd(logits_of, x, y, 0.7, (0.0, 1.0)), (x + 0.7 * (weight[1] - weight[0]).sign()).clamp(0, 1))


def test_calibration_by_hand():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(500, 4, generator=generator) * 3
    labels = torch.randint(0, 4, (500,), generator=generator)
    figures = calibration(logits, labels)
    p = logits.double().softmax(1).numpy()
    confidence, correct = p.max(1), p.argmax(1) == labels.numpy()
    ece = 0.0
    for b in range(15):  # bin b holds the confidences in [b/15, (b+1)/15)
        inside = (confidence >= b / 15) & (confidence < (b + 1) / 15)
        if inside.any():
            ece += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    assert figures["ece"] == pytest.approx(ece, abs=1e-9)
    assert figures["nll"] == pytest.approx(-np.log(p[np.arange(500), labels.numpy()]).mean())
    assert figures["brier"] == pytest.approx(((p - np.eye(4)[labels.numpy()]) ** 2).sum(1).mean())
    assert sum(figures["reliability"]["count"]) == 500


def test_auroc_and_fpr_match_scikit_learn():
    generator = torch.Generator().manual_seed(0)
    inside = (torch.randn(300, generator=generator) + 1).round(decimals=1)  # rounded: ties count one half
    outside = torch.randn(200, generator=generator).round(decimals=1)
    truth = np.r_[np.ones(300), np.zeros(200)]
    scores = torch.cat([inside, outside]).numpy()
    assert auroc(inside, outside) == pytest.approx(roc_auc_score(truth, scores))
    fpr, tpr, _ = roc_curve(truth, scores, drop_intermediate=False)
    assert fpr_at_tpr(inside, outside) == pytest.approx(fpr[np.argmax(tpr >= 0.95)])


@pytest.mark.parametrize("channels", [1, 3])
def test_corruptions_on_28x28_grow_with_severity(channels, digits):
    from torchvision.transforms.v2 import functional as TF

    images = TF.resize(digits.test.images[:32], [28, 28], antialias=True).expand(-1, channels, -1, -1).contiguous()
    for name in IMAGE.names():
        corrupted = [corrupt("image", name, images, s, {}) for s in range(1, 6)]
        assert all(c.dtype == torch.uint8 and c.shape == images.shape for c in corrupted), name
        assert torch.equal(corrupted[0], corrupt("image", name, images, 1, {})), name  # seeded
        change = [(c.float() - images.float()).abs().mean().item() for c in corrupted]
        assert 0 < change[0] and all(a <= b + 0.05 for a, b in itertools.pairwise(change)), (name, change)


def test_audio_corruptions_grow_with_severity():
    t = torch.arange(2000) / 8000
    waves = 0.4 * torch.sin(2 * torch.pi * torch.tensor([[300.0], [900.0], [1800.0]]) * t)
    for name in ("noise", "gain", "band_limit"):
        corrupted = [corrupt("audio", name, waves, s, {"sample_rate": 8000}) for s in range(1, 6)]
        change = [(c - waves).abs().mean().item() for c in corrupted]
        assert all(a < b for a, b in itertools.pairwise(change)), (name, change)
    assert set(corruption_registry("audio").names()) == {"noise", "time_shift", "gain", "band_limit"}


def test_mean_corruption_error_and_against_a_baseline():
    errors = {"a": [0.2, 0.3, 0.4, 0.5, 0.6], "b": [0.1] * 5}
    baseline = {"clean_error": 0.05, "corruptions": {"a": [0.4] * 5, "b": [0.2] * 5}}
    summary = corruption_summary(errors, 0.1, baseline)
    assert summary["mce"] == pytest.approx((0.4 + 0.1) / 2)
    assert summary["mce_vs_baseline"] == pytest.approx((2.0 / 2.0 + 0.5 / 1.0) / 2)
    assert summary["relative_mce_vs_baseline"] == pytest.approx((1.5 / 1.75 + 0.0 / 0.75) / 2)
    assert summary["relative_mce_left_out"] == []
    # a corruption the baseline does not suffer from (JPEG at 28x28: its errors at or below its clean error) normalises
    # nothing: it is left out and named, not divided by ~0 (which gave relative mCEs of 1e9)
    baseline["corruptions"]["c"], errors["c"] = [0.05, 0.04, 0.05, 0.05, 0.06], [0.3] * 5
    summary = corruption_summary(errors, 0.1, baseline)
    assert summary["relative_mce_vs_baseline"] == pytest.approx((1.5 / 1.75 + 0.0 / 0.75) / 2)
    assert summary["relative_mce_left_out"] == ["c"]


def run(argv, capsys):
    return run_script(evaluate_script.main, argv, capsys)


def test_evaluate_writes_what_report_reads(vision_run, capsys):  # noqa: F811
    code, _, err = run([str(vision_run), "--corruptions", "contrast,occlusion", "--attack", "pgd", "--eps", "0.05,1", "--steps", "5",
                          "--ood-dataset", "digits", "--test-subset", "60", "--name", "shift"], capsys)
    assert code == 0, err
    result = json.loads((vision_run / "evaluation" / "shift.json").read_text())
    assert result["samples"] == 60 and set(result["corruptions"]) == {"contrast", "occlusion"}
    assert result["mce"] == pytest.approx(np.mean([np.mean(v) for v in result["corruptions"].values()]), abs=1e-5)
    assert result["adversarial"]["pgd"]["1"] >= 0.99 and set(result["ood"]["auroc"]) == {"msp", "energy", "cap_similarity"}
    assert result["ood"]["auroc"]["msp"] == pytest.approx(0.5)  # the test set against itself: indistinguishable
    assert (vision_run / "evaluation" / "shift-reliability.png").is_file()
    record = read_run(vision_run)
    assert record.value("evaluation.shift.adversarial.pgd.0.05") == result["adversarial"]["pgd"]["0.05"]
    report = load_script("report")
    assert report.main([str(vision_run), "--columns", "evaluation.shift.clean_error,evaluation.shift.mce"]) == 0
    assert f"{100 * result['mce']:.2f}" in capsys.readouterr().out


def test_another_set_of_other_sizes_is_matched_by_class_name(vision_run, tmp_path, capsys):  # noqa: F811
    digits = load_digits(None, None)
    for split in ("train", "test"):
        for c in (3, 7):
            folder = tmp_path / split / str(c)
            folder.mkdir(parents=True)
            for k in np.flatnonzero(digits.test.labels.numpy() == c)[:4]:
                Image.fromarray(digits.test.images[k, 0].numpy()).convert("RGB").resize((16, 16)).save(folder / f"{k}.png")
    code, out, err = run([str(vision_run), "--dataset", "imagefolder", "--data-root", str(tmp_path)], capsys)
    assert code == 0, err
    result = json.loads((vision_run / "evaluation" / "imagefolder.json").read_text())
    assert result["samples"] == 8 and "| clean error |" in out
    (tmp_path / "test" / "3").rename(tmp_path / "test" / "three")
    (tmp_path / "train" / "3").rename(tmp_path / "train" / "three")
    code, out, err = run([str(vision_run), "--dataset", "imagefolder", "--data-root", str(tmp_path)], capsys)
    assert code == 2 and out == "" and len(err.splitlines()) == 1 and "class 'three'" in err


@pytest.mark.parametrize("argv, fragment", [
    (["--corruptions", "fog"], "unknown image corruption 'fog'"),
    (["--attack", "pgd", "--eps", "-0.1"], "eps must be non-negative"),
    (["--attack", "pgd"], "--attack and --eps go together"),
    (["--attack", "cw", "--eps", "0.1"], "invalid choice: 'cw'"),
    (["--dataset", "svhn"], "unknown dataset 'svhn'"),
])
def test_bad_input_is_one_line_and_exit_2(vision_run, argv, fragment, capsys):  # noqa: F811
    code, out, err = run([str(vision_run), *argv], capsys)
    assert code == 2 and out == "" and len(err.splitlines()) == 1 and fragment in err, err


def test_a_multimodal_run_under_shift(multimodal_run, capsys):  # noqa: F811
    """Each modality corrupted in turn, the image attacked, an image OOD set scored by each modality's typicality."""
    code, _, err = run([str(multimodal_run), "--corruptions", "gaussian_noise,noise", "--attack", "fgsm", "--eps", "0.1",
                        "--ood-dataset", "image=digits", "--name", "mm"], capsys)
    assert code == 0, err
    result = json.loads((multimodal_run / "evaluation" / "mm.json").read_text())
    assert set(result["corruptions"]) == {"image:gaussian_noise", "audio:noise"}
    assert set(result["ood"]["auroc"]) >= {"msp", "energy", "cap_similarity", "typicality.audio", "typicality.image"}
    assert all(0 <= v <= 1 for v in result["ood"]["auroc"].values()) and 0 <= result["adversarial"]["fgsm"]["0.1"] <= 1
    code, out, err = run([str(multimodal_run), "--dataset", "fashion-mnist"], capsys)
    assert code == 2 and out == "" and "give --dataset MODALITY=VALUE" in err and len(err.splitlines()) == 1


def test_not_a_run_folder(tmp_path, capsys):
    code, out, err = run([str(tmp_path)], capsys)
    assert code == 2 and out == "" and len(err.splitlines()) == 1 and "is not a finished run" in err
