"""Tables and figures of runs: cells by config (never by folder name), mean ± std over seeds, paired
comparisons with their 95% interval, the same folder trees for report.py and plot_runs.py, TensorBoard."""

import json
import math
import statistics

import pytest
import scipy.stats

from capsmm.config import build_runs
from capsmm.errors import ConfigError, DataError
from capsmm.reporting import comparison_report, paired_differences, record_of, summary_table
from capsmm.training import train
from capsmm.run_records import find_runs, varying_keys
from conftest import load_script


def fake(mode, seed, error, fusion=None):
    overrides = [f"train.mode={mode}", f"train.seed={seed}"]
    config = build_runs(None, overrides)[0].to_dict()
    if fusion:
        config["multimodal"] = {"fusion": fusion}
    return record_of({"test_error": error, "train_error": error / 2, "epochs": 3, "wall_seconds": 10.0, "config": config,
                      "test_error_by_modality": {"audio": error + 0.1, "image": error + 0.05}})


def test_summary_is_mean_and_std_per_cell_and_pairs_are_matched_by_seed():
    errors = {"bp": [0.10, 0.12, 0.11], "caps": [0.09, 0.13, 0.10]}
    runs = [fake(mode, seed, e) for mode, values in errors.items() for seed, e in enumerate(values)]
    runs.append(fake("caps", 7, 0.5))  # a seed bp lacks: in the cell's mean, not in the pairs
    assert varying_keys(runs) == ["train.mode"]
    table = summary_table(runs)
    caps = errors["caps"] + [0.5]
    assert f"| caps | 4 | {100 * statistics.mean(caps):.2f} ± {100 * statistics.stdev(caps):.2f} |" in table
    [pair] = paired_differences(runs, "train.mode", "caps", "bp")
    differences = [c - b for c, b in zip(errors["caps"], errors["bp"])]
    assert pair["replicates"] == [[0], [1], [2]] and pair["mean"] == pytest.approx(statistics.mean(differences))
    half = scipy.stats.t.ppf(0.975, 2) * statistics.stdev(differences) / math.sqrt(3)
    assert pair["ci95"] == pytest.approx((statistics.mean(differences) - half, statistics.mean(differences) + half))


def test_pooled_folds_make_one_row_and_pair_on_fold_and_seed():
    runs = []
    for fold, offset in (("ann", 0.0), ("bob", 0.1)):
        for mode, error in (("bp", 0.2), ("caps", 0.25)):
            run = fake(mode, 0, error + offset)
            run.config["audio.test_speakers"] = [fold]
            runs.append(run)
    table = summary_table(runs, pooled=["audio.test_speakers"])
    assert "| bp | 2 | 25.00 ± 7.07 |" in table and "| caps | 2 | 30.00 ± 7.07 |" in table
    [pair] = paired_differences(runs, "train.mode", "caps", "bp", pooled=["audio.test_speakers"])
    assert pair["replicates"] == [[0, ["ann"]], [0, ["bob"]]] and pair["differences"] == pytest.approx([0.05, 0.05])


def test_a_run_finished_before_a_key_existed_reads_as_made_with_its_default():
    """The comparison printed after training reads finished runs' saved configs: one written before
    train.lean_segments and the optimiser keys existed must not seem to differ in them."""
    old, new = [fake("bp", seed, 0.1 + seed / 100) for seed in range(2)], [fake("caps", seed, 0.12) for seed in range(2)]
    for run in old:
        saved = {k: v for k, v in run.results["config"]["train"].items() if k not in ("lean_segments", "optimizer", "momentum")}
        run.results["config"]["train"] = saved
    records = [record_of(run.results) for run in old + new]
    assert records[0].config["train.lean_segments"] == 1 and records[0].config["train.optimizer"] == "adam"
    assert "also differ" not in comparison_report(records, ["train.mode=bp"])


def test_a_key_set_together_with_the_compared_one_travels_with_it():
    """A sweep that zips each mode with its own activation (the peers' recipes): the pairs are
    caps against predsim on the same seed, and that table (not caps against bp) says that they
    differ in activation too."""
    runs = []
    for mode, activation, errors in (("caps", "relu", [0.15, 0.16, 0.14]), ("local-predsim", "leakyrelu", [0.17, 0.15, 0.16]),
                                     ("bp", "relu", [0.14, 0.15, 0.13])):
        for seed, error in enumerate(errors):
            run = fake(mode, seed, error)
            run.config["model.activation"] = activation
            runs.append(run)
    [pair] = paired_differences(runs, "train.mode", "caps", "local-predsim")
    assert pair["cell"] == {} and pair["differences"] == pytest.approx([-0.02, 0.01, -0.02])
    report = comparison_report(runs, ["train.mode=caps"])
    assert report.count("The pairs also differ in what is set together with train.mode: model.activation relu vs leakyrelu.") == 1
    assert "(no runs of both" not in report
    unasked = comparison_report(runs)  # every mode against the first, none of activation alone
    assert "mode=local-predsim − mode=caps" in unasked and "activation=" not in unasked and "(no runs of both" not in unasked
    crossed = runs + [fake("caps", seed, 0.3) for seed in range(3)]  # caps also with the default activation: not set together
    for run in crossed[-3:]:
        run.config["model.activation"] = "gelu"
    assert paired_differences(crossed, "train.mode", "caps", "local-predsim") == []


def test_rows_name_what_differs_joint_and_late_fusion_apart():
    runs = [fake("caps", 0, 0.2, fusion="joint"), fake("caps", 0, 0.3, fusion="late")]
    table = summary_table(runs)
    assert "| fusion | n | test error (%) | audio (%) | image (%) |" in table
    assert "| joint | 1 | 20.00 |" in table and "| late | 1 | 30.00 |" in table


def test_compare_names_the_missing_value():
    runs = [fake("caps", 0, 0.1), fake("bp", 0, 0.2)]
    with pytest.raises(ConfigError, match="no run has train.mode=local; values here: caps, bp"):
        comparison_report(runs, ["train.mode=local,bp"])
    assert "−" in comparison_report(runs, ["train.mode=caps"])


def tiny(out, **overrides):
    settings = {"data.name": "digits", "model.hidden": 32, "model.pattern_width": 32, "train.epochs": 2, "train.batch_size": 128,
                "train.progress": False, "train.device": "cpu", "data.train_subset": 400, "data.test_subset": 100, "out": str(out)}
    [config] = build_runs(None, list({**settings, **overrides}.items()))
    return train(config, log=lambda _: None)


def test_report_and_plots_accept_the_same_folder_trees(tmp_path, capsys):
    for mode in ("bp", "caps"):
        for seed in (0, 1):
            tiny(tmp_path / "sweep" / mode / f"seed-{seed}", **{"train.mode": mode, "train.seed": seed})
    report, plot_runs = load_script("report"), load_script("plot_runs")
    for paths in ([tmp_path / "sweep"], [tmp_path / "sweep" / "bp", tmp_path / "sweep" / "caps" / "seed-0", tmp_path / "sweep" / "caps" / "seed-1"]):
        capsys.readouterr()
        assert report.main([str(p) for p in paths]) == 0
        rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith(("| bp", "| caps"))]
        assert [row.split("|")[2].strip() for row in rows[:2]] == ["2", "2"]  # n per cell
        assert plot_runs.main([*map(str, paths), "--out", str(tmp_path / "fig")]) == 0
    assert report.main([str(tmp_path / "nowhere")]) == 2
    with pytest.raises(DataError, match="no finished run"):
        find_runs([tmp_path / "fig"], finished=True)


def test_tensorboard_mirrors_the_metrics(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tiny(tmp_path, **{"train.tensorboard": True, "train.diagnostics_every": 1})
    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"scalars": 0, "histograms": 0}).Reload()
    tags = events.Tags()
    assert [e.value for e in events.Scalars("test_error")] == pytest.approx([m["test_error"] for m in metrics])
    assert len(events.Scalars("train/loss_step")) == 2 * 4  # every step of both epochs (400 samples: 3 batches of 128 and one of 16)
    assert "diagnostics/block_accuracy" in tags["histograms"] and "diagnostics/scale/m_norm" in tags["scalars"]
    assert "diagnostics/gradient_cosine/block_2" in tags["scalars"]


def test_every_metric_name_a_run_writes_has_one_documented_meaning(tmp_path):
    from capsmm.metrics import METRIC_NAMES
    from conftest import ROOT

    results = tiny(tmp_path)
    metrics = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    # every key is a documented figure or one of these descriptions of the run: no filter lets a new name through
    described = {"amp", "backbone", "config", "dataset", "device", "epoch", "epochs", "lr", "mode", "params_by_part", "peak_memory_method", "torch"}
    assert (set(results) | set(metrics)) - described == set(METRIC_NAMES)
    assert results["step_ms"] >= results["forward_ms"] + results["optimizer_ms"]  # the whole step, not the optimiser's part
    documented = (ROOT / "docs" / "metrics.md").read_text()
    assert all(f"| `{name}` | {meaning} |" in documented for name, meaning in METRIC_NAMES.items())
