"""scripts/train_multimodal.py: one-line errors, and small real runs (Fashion-MNIST x FSDD)."""

import json
from contextlib import nullcontext

import pytest

from capsmm.config import build_runs, multimodal_schema

from conftest import load_script, run_script

train_multimodal = load_script("train_multimodal")
probe = load_script("probe")


def run(argv, capsys):
    code = train_multimodal.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("argv, fragment", [
    (["--fusion", "early"], "unknown multimodal.fusion 'early'; valid: joint, late, concat-bp"),
    (["--audio-dataset", "librispeech"], "unknown audio.name 'librispeech'"),
    (["--fusion", "concat-bp", "--mode", "caps"], "fusion concat-bp is end-to-end bp: set --mode bp"),
    (["--set", "audio_model.backbone=vgg11"], "audio_model.backbone 'vgg11' encodes image, not audio"),
    (["--set", "multimodal.modalities=[image,smell]"], "unknown modality 'smell'; valid: audio, image"),
    (["--set", "multimodal.anchor=text"], "multimodal.anchor 'text' is not one of"),
    (["--set", "audio.sample_rate=fast"], "audio.sample_rate: expected an integer"),
    (["--set", "multimodal.modulation=ogmge"], "unknown multimodal.modulation 'ogmge' (did you mean 'ogm-ge'?); valid: none, ogm, ogm-ge"),
    (["--set", "multimodal.slice_loss_weight=-1"], "multimodal.slice_loss_weight must be a number in [0, 100] or 'auto', got -1"),
    (["--set", "multimodal.modulation_epochs=[5,2]"], "multimodal.modulation_epochs must be [first, last] epochs with 1 <= first <= last"),
    (["--fusion", "late", "--set", "multimodal.modulation=ogm-ge"], "late fusion trains each modality alone"),
    (["--mode", "local", "--set", "multimodal.slice_loss_weight=1"], "which train.mode local does not train"),
    (["--set", "multimodal.modalities=[audio]", "--set", "multimodal.slice_loss_weight=1"], "this run trains audio alone"),
])
def test_bad_input_exits_2_with_one_line(argv, fragment, capsys, tmp_path):
    code, _, err = run([*argv, "--out", str(tmp_path)], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and fragment in err and "Traceback" not in err


def test_unknown_speaker_and_missing_data(capsys, tmp_path, fsdd_root):
    code, _, err = run(["--audio-root", str(fsdd_root), "--image-dataset", "digits", "--test-speakers", "nobody", "--out", str(tmp_path)], capsys)
    assert code == 2 and "test speaker(s) nobody not in" in err and "george, jackson, lucas, yweweler" in err
    code, _, err = run(["--audio-root", str(tmp_path), "--image-dataset", "digits", "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "no FSDD recordings" in err


SMALL = ["--set", "image_model.hidden=64", "--set", "audio_model.width_mult=0.5", "--set", "model.pattern_width=64",
         "--batch-size", "32", "--lr", "2e-3", "--no-progress"]


@pytest.mark.parametrize("fusion, mode", [("joint", "caps"), ("late", "caps"), ("concat-bp", "bp")])
def test_fashion_x_fsdd_with_a_held_out_speaker(fusion, mode, data_root, fsdd_root, tmp_path, capsys):
    code, out, _ = run(["--image-root", str(data_root), "--audio-root", str(fsdd_root), "--test-speakers", "lucas",
                        "--fusion", fusion, "--mode", mode, "--epochs", "2", "--train-subset", "1000", "--test-subset", "200",
                        "--out", str(tmp_path), *SMALL], capsys)
    assert code == 0
    results = json.loads((tmp_path / "results.json").read_text())
    for key in ("dataset", "backbone", "mode", "params", "test_error", "train_error", "peak_memory_mib", "forward_ms",
                "backward_ms", "epochs", "wall_seconds", "config"):
        assert key in results
    errors = results["test_error_by_modality"]
    assert set(errors) == {"audio", "image", "audio+image"}
    assert errors["image"] < 0.5 and errors["audio+image"] < 0.6  # measured 0.24-0.31 and 0.26-0.45; chance 0.9, 2 short epochs
    assert set(results["retrieval"]) == {"audio->image", "image->audio"}
    assert all(0 <= v["map"] <= 1 and 0 <= v["recall@1"] <= 1 for v in results["retrieval"].values())
    assert f"{fusion}" in out and "R@1" in out


def test_add_audio_to_a_trained_image_model(data_root, fsdd_root, tmp_path, capsys):
    common = ["--image-root", str(data_root), "--audio-root", str(fsdd_root), "--test-speakers", "lucas", "--epochs", "1",
              "--train-subset", "600", "--test-subset", "200", *SMALL]
    code, _, _ = run([*common, "--set", "multimodal.modalities=[image]", "--set", "multimodal.anchor=image", "--out", str(tmp_path / "image")], capsys)
    assert code == 0
    # anchored on images again, the test items are the same images: the image error must not move
    code, _, err = run([*common, "--set", f"multimodal.extend_from={tmp_path / 'image'}", "--set", "multimodal.anchor=image",
                        "--out", str(tmp_path / "both")], capsys)
    assert code == 0, err
    results = json.loads((tmp_path / "both" / "results.json").read_text())
    assert results["frozen_modalities"] == ["image"] and results["frozen_predictions_unchanged"] is True
    image_alone = json.loads((tmp_path / "image" / "results.json").read_text())["test_error_by_modality"]["image"]
    assert results["test_error_by_modality"]["image"] == image_alone
    code, _, err = run([*common, "--set", f"multimodal.extend_from={tmp_path / 'nothing'}", "--out", str(tmp_path / "x")], capsys)
    assert code == 2 and "holds no checkpoint.safetensors" in err


def write_class_sorted_folders(root, sizes):
    """An image folder and an audio folder, classes of very different sizes (files sorted by class, as
    ImageFolder reads them; the audio classes in the reverse sizes): class c is a bright band at
    row 3c and a tone of 300 (c + 1) Hz."""
    import numpy as np
    import soundfile
    from PIL import Image

    for split, scale in (("train", 1), ("test", 0.5)):
        for c, size in enumerate(sizes):
            images = root / "images" / split / f"class{c}"
            clips = root / "audio" / split / f"class{c}"
            images.mkdir(parents=True)
            clips.mkdir(parents=True)
            for k in range(max(2, int(size * scale))):
                pixels = np.random.default_rng(k).integers(0, 40, (12, 12), dtype=np.uint8)
                pixels[3 * c:3 * c + 3] = 220
                Image.fromarray(pixels).save(images / f"{k}.png")
            for k in range(max(2, int(sizes[-1 - c] * scale))):
                t = np.arange(4000) / 16000
                tone = 0.4 * np.sin(2 * np.pi * 300 * (c + 1) * t) + 0.05 * np.random.default_rng(k).standard_normal(4000)
                soundfile.write(clips / f"{k}.wav", tone.astype(np.float32), 16000)


def test_class_sorted_unbalanced_folders_train_evaluate_and_extend(tmp_path, capsys):
    write_class_sorted_folders(tmp_path, sizes=[40, 12, 4])
    common = ["--image-dataset", "imagefolder", "--image-root", str(tmp_path / "images"), "--audio-dataset", "audiofolder",
              "--audio-root", str(tmp_path / "audio"), "--set", "image.image_size=12", "--set", "audio.duration=0.25",
              "--set", "train.diagnostics_samples=8", "--set", "train.diagnostics_every=1", "--epochs", "2", *SMALL]
    code, out, err = run([*common, "--out", str(tmp_path / "joint")], capsys)
    assert code == 0, err
    results = json.loads((tmp_path / "joint" / "results.json").read_text())
    assert set(results["test_error_by_modality"]) == {"audio", "image", "audio+image"}
    metrics = [json.loads(line) for line in (tmp_path / "joint" / "metrics.jsonl").read_text().splitlines()]
    assert "diagnostics" in metrics[-1]
    # the default slice_loss_weight=auto trained with slice losses, and the saved config holds the number
    assert results["config"]["multimodal"]["slice_loss_weight"] == 1.0 and "score" in metrics[-1]["modality_balance"]
    # subsets smaller than the folders keep every class; an image-only model then gains the audio
    code, _, err = run([*common, "--set", "multimodal.modalities=[image]", "--set", "multimodal.anchor=image",
                        "--train-subset", "10", "--out", str(tmp_path / "image")], capsys)
    assert code == 0, err
    code, _, err = run([*common, "--set", f"multimodal.extend_from={tmp_path / 'image'}", "--train-subset", "10",
                        "--out", str(tmp_path / "both")], capsys)
    assert code == 0, err
    extended = json.loads((tmp_path / "both" / "results.json").read_text())
    assert extended["frozen_predictions_unchanged"] is True and extended["config"]["multimodal"]["slice_loss_weight"] == 0.0


@pytest.mark.parametrize("settings, weight", [
    ([], 1.0),
    (["multimodal.fusion=concat-bp", "train.mode=bp"], 1.0),
    (["train.mode=caps:0.5,caps-full"], 1.0),
    (["multimodal.fusion=late"], 0.0),
    (["train.mode=local"], 0.0),
    (["multimodal.modalities=[image]", "multimodal.anchor=image"], 0.0),
    (["multimodal.extend_from=runs/an-image-model"], 0.0),
    (["multimodal.modulation=ogm-ge"], 0.0),
    (["multimodal.modality_dropout=0.3"], 0.0),
    (["multimodal.modulation=ogm-ge", "multimodal.slice_loss_weight=1"], 1.0),
    (["multimodal.slice_loss_weight=0.25"], 0.25),
    (["multimodal.slice_loss_weight=0"], 0.0),
])
def test_the_default_slice_loss_weight_is_one_exactly_where_slice_losses_apply(settings, weight):
    config = build_runs(None, settings, multimodal_schema())[0]
    assert config.multimodal.slice_loss_weight == ("auto" if not any("slice_loss" in s for s in settings) else weight)
    with pytest.raises(ValueError, match="validate the run config first") if config.multimodal.slice_loss_weight == "auto" else nullcontext():
        config.multimodal.balance()
    assert config.validate().multimodal.slice_loss_weight == weight == config.multimodal.balance().slice_loss_weight


def test_balanced_joint_training_and_linear_probes_of_its_encoders(tmp_path, capsys):
    """Slice losses and OGM-GE on, the per-epoch figures appear; probes of the joint run's encoders and
    of the late run's (the same encoders trained alone) are written and printed; the per-modality
    figure is drawn."""
    write_class_sorted_folders(tmp_path, sizes=[30, 20, 10])
    common = ["--image-dataset", "imagefolder", "--image-root", str(tmp_path / "images"), "--audio-dataset", "audiofolder",
              "--audio-root", str(tmp_path / "audio"), "--set", "image.image_size=12", "--set", "audio.duration=0.25", "--epochs", "2", *SMALL]
    code, _, err = run([*common, "--set", "multimodal.slice_loss_weight=0.5", "--set", "multimodal.modulation=ogm-ge",
                        "--out", str(tmp_path / "joint")], capsys)
    assert code == 0, err
    metrics = [json.loads(line) for line in (tmp_path / "joint" / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 2 and all(set(m["modality_balance"]["coefficient"]) == {"audio", "image"} for m in metrics)
    assert all(set(m["test_error_by_modality"]) == {"audio", "image", "audio+image"} for m in metrics)
    code, _, err = run([*common, "--fusion", "late", "--out", str(tmp_path / "late")], capsys)
    assert code == 0, err
    code, out, err = run_script(probe.main, [str(tmp_path / "joint"), str(tmp_path / "late"), "--max-train", "40"], capsys)
    assert code == 0, err
    for run_dir in ("joint", "late"):
        figures = json.loads((tmp_path / run_dir / "evaluation" / "probe-patterns.json").read_text())
        for modality in ("audio", "image"):
            assert 0 <= figures[modality]["test_error"] <= 1 and figures[modality]["train_samples"] <= 40
    assert out.count("| audio |") == 2 and out.count("| image |") == 2
    code, _, err = run_script(probe.main, [str(tmp_path / "nothing")], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    code, out, err = run_script(load_script("plot_runs").main, [str(tmp_path / "joint"), str(tmp_path / "late"), "--out", str(tmp_path / "fig")],
                                capsys)
    assert code == 0 and (tmp_path / "fig" / "modality_errors.png").is_file(), err
