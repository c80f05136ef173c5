"""capsmm.load_run and scripts/predict.py: trained runs of every script applied to new files (other
sizes, modes, sample rates, channel counts), and one line with exit status 2 for every bad input."""

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import load_script, run_script
from PIL import Image
from test_multimodal_cli import write_class_sorted_folders

import capsmm
from capsmm.config import DataConfig, build_runs
from capsmm.data import load_image_dataset
from capsmm.data.vision import load_digits
from capsmm.errors import CheckpointError
from capsmm.inference import INPUT_KINDS, read_image
from capsmm.pipeline import PIPELINE
from capsmm.training import train

predict = load_script("predict")
train_multimodal = load_script("train_multimodal")
train_incremental = load_script("train_incremental")
TINY = ["model.hidden=32", "model.depth=2", "model.pattern_width=32", "train.epochs=1", "train.progress=false"]


@pytest.fixture(scope="session")
def vision_run(tmp_path_factory):
    """A caps MLP trained one epoch on the bundled 8x8 digits."""
    out = tmp_path_factory.mktemp("vision") / "run"
    [config] = build_runs(None, ["data.name=digits", "train.mode=caps", f"out={out}", *TINY])
    train(config, log=lambda line: None)
    return out


def run(argv, capsys):
    return run_script(predict.main, argv, capsys)


def digit_image(index=0):
    return (load_digits(None, None).test.images[index, 0].numpy())


def test_a_run_trained_in_bf16_is_loaded_in_bf16_and_reproduces_its_test_error(tmp_path):
    [config] = build_runs(None, ["data.name=digits", "train.mode=caps", f"out={tmp_path}", "train.amp=bf16", *TINY])
    recorded = train(config, log=lambda line: None)
    trained, digits = capsmm.load_run(tmp_path), load_digits(None, None)
    probabilities = trained.predict({"image": digits.test.images})["probabilities"]
    assert recorded["amp"] == "bf16" and trained.model.amp == "bf16"
    assert (probabilities.argmax(1) != digits.test.labels).float().mean().item() == pytest.approx(recorded["test_error"], abs=1e-6)
    trained.model.set_precision("none")  # float32 would predict differently: the precision is what makes them equal
    assert not torch.equal(trained.predict({"image": digits.test.images})["probabilities"], probabilities)


def test_load_run_gives_the_trained_model_and_its_pipeline(vision_run):
    trained = capsmm.load_run(vision_run)
    assert trained.kind == "vision" and trained.modalities == ("image",) and not trained.model.training
    assert trained.classes == [str(c) for c in range(10)]
    digits = load_digits(None, None)
    mean, std = digits.channel_stats()
    assert trained.pipelines["image"]["mean"] == pytest.approx(mean) and trained.pipelines["image"]["std"] == pytest.approx(std)
    # its predictions are those of the run: the test error it recorded
    result = trained.predict({"image": digits.test.images})
    error = (result["probabilities"].argmax(1) != digits.test.labels).float().mean().item()
    assert error == pytest.approx(json.loads((vision_run / "results.json").read_text())["test_error"], abs=1e-6)  # results: 6 decimals
    # a run written before input_pipeline.json existed: the pipeline is recomputed from its training set
    older = vision_run.parent / "older"
    shutil.copytree(vision_run, older)
    (older / PIPELINE).unlink()
    assert capsmm.load_run(older).pipelines == trained.pipelines


def test_images_of_any_size_and_mode_are_prepared_as_in_training(vision_run, tmp_path, capsys):
    pixels = digit_image()
    folder = tmp_path / "class-sorted" / "zero"
    folder.mkdir(parents=True)
    Image.fromarray(pixels).save(folder / "grey.png")
    Image.fromarray(pixels).convert("RGB").save(folder / "rgb.png")
    Image.fromarray(pixels).convert("RGBA").save(folder / "rgba.png")
    Image.fromarray(pixels).convert("P").save(folder / "palette.png")
    Image.fromarray(pixels).resize((40, 40), Image.NEAREST).save(folder / "large.png")
    code, out, err = run([str(vision_run), str(tmp_path / "class-sorted"), "--json", "--top-k", "3"], capsys)
    assert code == 0 and err == ""
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["input"].rsplit("/", 1)[1] for r in records] == ["grey.png", "large.png", "palette.png", "rgb.png", "rgba.png"]
    expected = capsmm.load_run(vision_run).predict({"image": torch.from_numpy(pixels)[None, None]})
    for record in records:
        assert len(record["top"]) == 3 and record["top"][0]["probability"] >= record["top"][1]["probability"]
    same_size = [r for r in records if not r["input"].endswith("large.png")]  # the others decode to the very same pixels
    for record in same_size:
        assert record["top"][0]["probability"] == pytest.approx(expected["probabilities"][0].max().item(), abs=1e-6)
        assert record["similarity"] == pytest.approx(expected["similarity"][0, expected["probabilities"][0].argmax()].item(), abs=1e-6)


def mixed_images(folder, colour):
    """Files of other sizes (larger, smaller, not square) and modes (grey, RGB, RGBA, palette, grey
    with alpha); all grey in content unless ``colour``, which adds one colourful RGB file."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for k, (size, mode) in enumerate([((40, 40), "L"), ((17, 23), "RGB"), ((100, 60), "RGBA"), ((12, 12), "P"), ((8, 8), "LA"), ((31, 9), "L")]):
        Image.fromarray(rng.integers(0, 256, size, dtype=np.uint8)).convert(mode).save(folder / f"{k}.png")
    if colour:
        Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(folder / "colour.png")
    return sorted(folder.iterdir())


@pytest.mark.parametrize("colour", [False, True])
def test_a_resized_image_is_read_as_the_training_image_folder_reads_it(tmp_path, colour):
    """An image-folder training set resizes PIL images (torchvision's Resize on the PIL image); a tensor
    resize rounds some pixels differently, so predicting reads files exactly as that set holds them."""
    for split in ("train", "test"):
        files = mixed_images(tmp_path / split / "any", colour)
    data = load_image_dataset(DataConfig(name="imagefolder", root=str(tmp_path), image_size=12))
    assert data.in_shape == ((3 if colour else 1), 12, 12)
    pipeline = {"in_shape": list(data.in_shape)}
    for index, path in enumerate(files):  # ImageFolder reads a class's files in sorted order
        assert torch.equal(read_image(path, pipeline), data.test.images[index]), path.name


def test_a_corrupt_file_gets_one_line_and_the_others_are_predicted(vision_run, tmp_path, capsys):
    Image.fromarray(digit_image()).save(tmp_path / "good.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    code, out, err = run([str(vision_run), str(tmp_path / "bad.png"), str(tmp_path / "good.png"), str(tmp_path / "missing.png")], capsys)
    assert code == 2
    assert len(out.splitlines()) == 1 and out.startswith(str(tmp_path / "good.png"))
    lines = err.splitlines()
    assert len(lines) == 3 and "bad.png" in lines[0] and "missing.png" in lines[1] and "2 of 3 input(s)" in lines[2]


def test_reading_ahead_in_workers_changes_no_prediction(vision_run, tmp_path, capsys):
    """Worker processes that read the next batches (--workers) give the very lines and errors of
    reading each batch in turn, and each input the prediction it gets alone (a batch of one)."""
    folder = tmp_path / "mixed"
    good = mixed_images(folder, colour=True)
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    common = [str(vision_run), str(folder), "--json", "--top-k", "3", "--batch-size", "3", "--threads", "1"]
    ahead = run([*common, "--workers", "2"], capsys)
    in_turn = run([*common, "--workers", "0"], capsys)
    assert ahead == in_turn
    code, out, err = ahead
    assert code == 2 and len(err.splitlines()) == 2 and "corrupt.png" in err.splitlines()[0] and "1 of 8 input(s)" in err.splitlines()[1]
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["input"] for r in records] == [str(p) for p in good]
    trained = capsmm.load_run(vision_run)
    for record, path in zip(records, good):
        alone = trained.predict({"image": trained.read("image", path)[None]})
        best = alone["probabilities"][0].topk(3)
        assert [e["class"] for e in record["top"]] == [trained.classes[i] for i in best.indices.tolist()]
        assert [e["probability"] for e in record["top"]] == pytest.approx(best.values.tolist(), abs=1e-6)
        assert record["similarity"] == pytest.approx(alone["similarity"][0, best.indices[0]].item(), abs=1e-6)


def test_folders_expand_to_their_files_in_path_order(tmp_path):
    """Folders expand as ``sorted(rglob)`` of the files with the modality's suffixes (part by part:
    ``a/`` before ``a-b/``), not into linked folders."""
    for name in ["a/1.png", "a-b/1.png", "a/b/2.PNG", "a/b/.png", "A/3.jpg", "notes.txt", "c/d.e/f.webp", "ab/1.png"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "link").symlink_to(tmp_path / "a", target_is_directory=True)
    (tmp_path / "linked.png").symlink_to(tmp_path / "a" / "1.png")
    suffixes = INPUT_KINDS.get("image").suffixes
    expected = sorted(p for p in tmp_path.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
    assert predict.expand(tmp_path, suffixes) == expected
    assert [p.relative_to(tmp_path).as_posix() for p in expected] == ["A/3.jpg", "a/1.png", "a/b/2.PNG", "a-b/1.png", "ab/1.png", "c/d.e/f.webp", "linked.png"]


@pytest.mark.parametrize("mutate, fragment", [
    (lambda run: shutil.rmtree(run / "checkpoint.safetensors", ignore_errors=True) or (run / "results.json").unlink(), "is not a finished run"),
    (lambda run: (run / "checkpoint.safetensors").write_bytes(b"\0" * 100), "is unreadable"),
    (lambda run: (run / "results.json").write_text(json.dumps({"config": {"data": {"colour": 1}}})), "incompatible capsmm version"),
    (lambda run: (run / PIPELINE).write_text(json.dumps({"format": 99})), "incompatible capsmm version"),
])
def test_a_bad_run_folder_is_one_line_and_exit_2(vision_run, tmp_path, capsys, mutate, fragment):
    broken = tmp_path / "broken"
    shutil.copytree(vision_run, broken)
    mutate(broken)
    Image.fromarray(digit_image()).save(tmp_path / "x.png")
    code, out, err = run([str(broken), str(tmp_path / "x.png")], capsys)
    assert code == 2 and out == "" and len(err.splitlines()) == 1 and fragment in err
    with pytest.raises(CheckpointError):
        capsmm.load_run(broken)


def test_a_foreign_checkpoint_is_refused(vision_run, tmp_path):
    from capsmm.checkpoint import save_checkpoint

    foreign = tmp_path / "foreign"
    shutil.copytree(vision_run, foreign)
    save_checkpoint(foreign / "checkpoint.safetensors", {"model": {"weight": torch.zeros(3)}})
    with pytest.raises(CheckpointError, match="does not fit the model"):
        capsmm.load_run(foreign)


@pytest.fixture(scope="session")
def multimodal_run(tmp_path_factory):
    """A joint image + audio run (gated) trained one epoch on small class-sorted folders (3 classes)."""
    root = tmp_path_factory.mktemp("multimodal")
    write_class_sorted_folders(root, sizes=[8, 6, 4])
    code = train_multimodal.main([
        "--image-dataset", "imagefolder", "--image-root", str(root / "images"), "--audio-dataset", "audiofolder",
        "--audio-root", str(root / "audio"), "--set", "image.image_size=12", "--set", "audio.duration=0.25", "--epochs", "1",
        "--set", "image_model.hidden=32", "--set", "audio_model.width_mult=0.5", "--set", "model.pattern_width=32",
        "--no-progress", "--out", str(root / "run")])
    assert code == 0
    return root / "run"


def test_multimodal_pairs_and_either_modality_alone(multimodal_run, tmp_path, capsys):
    import soundfile

    capsys.readouterr()
    # a 20x20 RGB image and a stereo clip at 22.05 kHz (the run's rate is 8 kHz, its clips 0.25 s)
    image = np.zeros((20, 20, 3), dtype=np.uint8)
    image[5:10] = 220
    Image.fromarray(image).save(tmp_path / "a.png")
    t = np.arange(6615) / 22050
    tone = 0.4 * np.sin(2 * np.pi * 600 * t)
    soundfile.write(tmp_path / "a.wav", np.stack([tone, tone], axis=1).astype(np.float32), 22050)
    code, out, err = run([str(multimodal_run), "--image", str(tmp_path / "a.png"), "--audio", str(tmp_path / "a.wav"), "--json"], capsys)
    assert code == 0, err
    record = json.loads(out)
    assert set(record["modalities"]) == {"audio", "image"} and record["top"][0]["class"] in ("class0", "class1", "class2")
    assert all(0 <= own["gate"] <= 1 for own in record["modalities"].values())
    trained = capsmm.load_run(multimodal_run)
    assert trained.read("audio", tmp_path / "a.wav").shape == (2000,)
    code, out, err = run([str(multimodal_run), "--audio", str(tmp_path / "a.wav")], capsys)
    assert code == 0 and len(out.splitlines()) == 1 and "audio=" in out and "image:" not in out
    code, _, err = run([str(multimodal_run), "--image", str(tmp_path / "a.png"), "--image", str(tmp_path / "a.png"),
                        "--audio", str(tmp_path / "a.wav")], capsys)
    assert code == 2 and "as many files of each modality" in err and len(err.splitlines()) == 1


def test_a_class_incremental_run_loads_its_last_task(tmp_path, capsys):
    code = train_incremental.main(["--dataset", "digits", "--set", "incremental.tasks=2", "--set", "model.hidden=32",
                                   "--set", "model.pattern_width=32", "--epochs", "1", "--no-progress", "--out", str(tmp_path / "inc")])
    assert code == 0
    trained = capsmm.load_run(tmp_path / "inc")
    assert trained.kind == "incremental" and len(trained.classes) == 10
    digits = load_digits(None, None)
    accuracy = (trained.predict({"image": digits.test.images})["probabilities"].argmax(1) == digits.test.labels).float().mean().item()
    assert accuracy == pytest.approx(json.loads((tmp_path / "inc" / "results.json").read_text())["final_accuracy"], abs=1e-6)


def test_bench_predict_measures_each_part_side_by_side(capsys):
    code, out, err = run_script(load_script("bench_predict").main, ["--files", "30", "--hidden", "16", "--repeats", "2"], capsys)
    assert code == 0, err
    *repeats, spread = [json.loads(line) for line in out.splitlines()]
    assert len(repeats) == 2 and spread["repeats"] == 2 and spread["ratio_min"] <= spread["ratio_median"] <= spread["ratio_max"]
    for record in repeats:
        parts = ["bytes_s", "decode_s", "read_s", "load_s", "list_s", "forward_s", "lines_s", "sequential_s", "predict_s"]
        assert all(record[part] >= 0 for part in parts) and record["ratio"] > 0  # seconds to 3 decimals: 30 files may list in 0.000
