"""scripts/train_vision.py: one-line errors with exit status 2, --help, and the offline quickstart."""

import json
import statistics
import subprocess
import sys

import pytest
import scipy.stats
import yaml

from conftest import ROOT, load_script

train_vision = load_script("train_vision")


def run_main(argv, capsys):
    code = train_vision.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(err, *fragments):
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_loading_every_script_prints_nothing():
    """A one-line error must be the only line: nothing a script imports may print on its own (e.g.
    torch's C++ extension builder warns when imported on a CUDA build without a GPU). One fresh
    interpreter loads every script, as running it would, but without calling main."""
    scripts = sorted((ROOT / "scripts").glob("*.py"))
    code = "import runpy, sys\nfor path in sys.argv[1:]:\n    runpy.run_path(path, run_name='loaded')\n"
    done = subprocess.run([sys.executable, "-c", code, *map(str, scripts)], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0 and len(scripts) >= 10, done.stderr
    assert done.stdout == "" and done.stderr == "", done.stdout + done.stderr


@pytest.mark.parametrize("argv, fragments", [
    (["--dataset", "imagenet"], ["unknown data.name 'imagenet'", "valid: cifar10, cifar100, digits, fashion-mnist, hf-disk, imagefolder, kmnist, mnist"]),
    (["--backbone", "resnet50"], ["unknown model.backbone 'resnet50'", "mlp", "vgg19"]),
    (["--backbone", "audio-cnn"], ["model.backbone 'audio-cnn' encodes audio, not image"]),
    (["--mode", "sgd"], ["unknown mode 'sgd'", "valid: bp, caps, caps-full, local"]),
    (["--set", "train.lrr=0.1"], ["unknown config key 'train.lrr'", "did you mean 'train.lr'"]),
    (["--set", "train.epochs=many"], ["train.epochs: expected an integer, got 'many'"]),
    (["--set", "model.readout_norm=groupnorm"], ["valid: batchnorm, layernorm, none"]),
    (["--set", "noequals"], ["--set expects key=value"]),
])
def test_bad_input_exits_2_with_one_line(argv, fragments, capsys, tmp_path):
    code, out, err = run_main([*argv, "--out", str(tmp_path)], capsys)
    assert code == 2
    assert_one_line_error(err, *fragments)
    assert not list(tmp_path.iterdir()), "nothing is written for a rejected command"


def test_argparse_type_errors_are_one_line_too(capsys):
    with pytest.raises(SystemExit) as info:
        train_vision.main(["--epochs", "ten"])
    assert info.value.code == 2
    assert_one_line_error(capsys.readouterr().err, "argument --epochs: invalid int value: 'ten'")


def test_bad_config_file(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  backbone: mlp\n  widht_mult: 2\n")
    code, _, err = run_main(["--config", str(path)], capsys)
    assert code == 2
    assert_one_line_error(err, "unknown config key 'model.widht_mult'", "did you mean 'model.width_mult'")
    code, _, err = run_main(["--config", str(tmp_path / "missing.yaml")], capsys)
    assert code == 2 and "does not exist" in err


def test_missing_data_set_is_one_line_naming_the_files(tmp_path, capsys):
    code, _, err = run_main(["--dataset", "kmnist", "--data-root", str(tmp_path), "--set", "data.download=false", "--out", str(tmp_path / "o")], capsys)
    assert code == 2
    assert_one_line_error(err, "train-images-idx3-ubyte", str(tmp_path / "torchvision" / "KMNIST" / "raw"))


def test_errors_in_a_real_process_have_no_traceback():
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "train_vision.py"), "--backbone", "vgg99"],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "unknown model.backbone 'vgg99'", "did you mean 'vgg19'")


def test_help_documents_flags_and_config_keys(capsys):
    with pytest.raises(SystemExit) as info:
        train_vision.main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for flag in ["--dataset", "--backbone", "--mode", "--epochs", "--batch-size", "--lr", "--data-root", "--out", "--seed",
                 "--device", "--train-subset", "--test-subset", "--config", "--set", "--resume", "--force", "--seeds"]:
        assert flag in text
    for key in ["data.augment", "model.readout_norm", "model.head", "train.lr_milestones", "train.mode"]:
        assert key in text


def test_flags_train_and_record(tmp_path, capsys):
    code, out, _ = run_main(["--dataset", "digits", "--backbone", "mlp", "--mode", "local", "--epochs", "2", "--lr", "2e-3",
                             "--batch-size", "64", "--train-subset", "600", "--test-subset", "100", "--seed", "3",
                             "--device", "cpu", "--set", "model.hidden=64", "--out", str(tmp_path)], capsys)
    assert code == 0
    results = json.loads((tmp_path / "results.json").read_text())
    config = results["config"]
    assert (config["train"]["mode"], config["train"]["epochs"], config["train"]["lr"], config["train"]["batch_size"]) == ("local", 2, 2e-3, 64)
    assert (config["data"]["train_subset"], config["train"]["seed"], config["model"]["hidden"]) == (600, 3, 64)
    assert "params " in out  # the parameter count is printed at the start of the run
    code, _, err = run_main(["--dataset", "digits", "--epochs", "3", "--out", str(tmp_path)], capsys)
    assert code == 2 and "--resume" in err


def table_rows(text, first_cells):
    """The rows of the markdown tables in ``text`` whose first cell is one of ``first_cells``."""
    return {line.split("|")[1].strip(): line for line in text.splitlines()
            if line.startswith("|") and line.split("|")[1].strip() in first_cells}


#: the quickstart's config at a tenth of its cost (3 x 128 units, 8 epochs): what the test checks is the
#: command's behaviour (the no-argument default, the rerun, the 3-seed table), not the quickstart's figures
SMALL_QUICKSTART = {"data": {"name": "digits"}, "model": {"backbone": "mlp", "hidden": 128}, "train": {"epochs": 8},
                    "out": "runs/quickstart", "sweep": [{"train.mode": ["bp", "caps"]}]}


def test_quickstart_rerun_and_the_readme_three_seed_comparison(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    quickstart = tmp_path / "quickstart.yaml"
    quickstart.write_text(yaml.safe_dump(SMALL_QUICKSTART))
    shipped = yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text())
    assert {k: v for k, v in shipped.items() if k not in ("model", "train")} == {k: v for k, v in SMALL_QUICKSTART.items()
                                                                                 if k not in ("model", "train")}
    monkeypatch.setattr(train_vision, "QUICKSTART", quickstart)
    code, out, _ = run_main([], capsys)
    assert code == 0
    rows = table_rows(out, {"bp", "caps"})
    assert set(rows) == {"bp", "caps"}
    for mode in ("bp", "caps"):
        results = json.loads((tmp_path / "runs" / "quickstart" / mode / "seed-0" / "results.json").read_text())
        assert results["test_error"] < 0.1  # chance: 0.9
    # the same command again: the finished runs' table, nothing trained or written; --resume alone is the quickstart too
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("*") if p.is_file()}
    for argv in ([], ["--resume"]):
        code, again, _ = run_main(argv, capsys)
        assert code == 0 and table_rows(again, {"bp", "caps"}) == rows
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("*") if p.is_file()} == stamps
    # the README's 3-seed comparison (seed 0 is already there: only seeds 1 and 2 train)
    code, out, _ = run_main(["--config", str(quickstart), "--seeds", "0,1,2"], capsys)
    assert code == 0
    errors = {mode: [json.loads((tmp_path / "runs" / "quickstart" / mode / f"seed-{s}" / "results.json").read_text())["test_error"]
                     for s in range(3)] for mode in ("bp", "caps")}
    for mode, row in table_rows(out, {"bp", "caps"}).items():  # mean ± std and n, as computed by hand
        mean, std = statistics.mean(errors[mode]), statistics.stdev(errors[mode])
        assert f"| 3 | {100 * mean:.2f} ± {100 * std:.2f} |" in row
    report = load_script("report")
    assert report.main([str(tmp_path / "runs" / "quickstart"), "--compare", "train.mode=caps,bp"]) == 0
    text = capsys.readouterr().out
    differences = [c - b for c, b in zip(errors["caps"], errors["bp"])]
    half = scipy.stats.t.ppf(0.975, 2) * statistics.stdev(differences) / 3 ** 0.5
    expected = (f"{100 * statistics.mean(differences):+.2f} ± {100 * statistics.stdev(differences):.2f} | 3 | "
                f"[{100 * (statistics.mean(differences) - half):+.2f}, {100 * (statistics.mean(differences) + half):+.2f}]")
    assert expected in text


def test_an_unexpected_failure_is_one_line_and_a_log_with_the_traceback(monkeypatch, capsys, tmp_path):
    import capsmm.training

    def explode(*args, **kwargs):
        raise RuntimeError("allocator: out of memory\nsecond line of detail")

    monkeypatch.setattr(capsmm.training, "load_image_dataset", explode)
    monkeypatch.setenv("CAPSMM_LOG_DIR", str(tmp_path / "logs"))
    code, _, err = run_main(["--dataset", "digits", "--out", str(tmp_path / "run")], capsys)
    assert code == 1
    assert_one_line_error(err, "unexpected RuntimeError: allocator: out of memory", str(tmp_path / "run"))
    [log] = (tmp_path / "run").glob("capsmm-error-*.log")  # in the run folder, where the user looks; no second one
    assert not (tmp_path / "logs").exists()
    assert log.name in err
    assert "Traceback" in log.read_text() and "second line of detail" in log.read_text() and "explode" in log.read_text()
