import re
from pathlib import Path

import pytest

from capsmm.config import MultimodalRunConfig, RunConfig, Sweep, build_runs, parse_assignment, set_value
from capsmm.errors import ConfigError
from capsmm.modes import ModeSchedule

CONFIGS = sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.yaml"))


def test_set_values_are_typed():
    config = RunConfig()
    for text in ["train.lr=1e-3", "train.epochs=7", "train.lr_milestones=[3, 6]", "data.augment=true", "data.train_subset=null", "model.width_mult=2"]:
        set_value(config, *parse_assignment(text))
    assert config.train.lr == 0.001 and isinstance(config.train.lr, float)
    assert config.train.epochs == 7 and config.train.lr_milestones == [3, 6]
    assert config.data.augment is True and config.data.train_subset is None
    assert config.model.width_mult == 2.0 and isinstance(config.model.width_mult, float)


@pytest.mark.parametrize("text, message", [
    ("train.epochs=abc", "train.epochs: expected an integer, got 'abc'"),
    ("train.epochs=2.5", "expected an integer"),
    ("data.augment=maybe", "expected true/false"),
    ("train.lr_milestones=3", "expected a list of an integer"),
    ("train.lrr=1", "unknown config key 'train.lrr' (did you mean 'train.lr'?)"),
    ("optim.lr=1", "unknown config key 'optim.lr'"),
])
def test_bad_values_and_keys_are_one_line_errors(text, message):
    with pytest.raises(ConfigError) as info:
        set_value(RunConfig(), *parse_assignment(text))
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("value, message", [
    ("0", "train.lean_segments must be an integer in [1, 1048576] or 'auto', got 0"),
    ("two", "got 'two'"),
    ("2.5", "got '2.5'"),
    ("true", "got True"),
])
def test_lean_segments_is_a_count_or_auto(value, message):
    config = RunConfig()
    set_value(config, "train.memory", "lean")
    with pytest.raises(ConfigError) as info:
        set_value(config, *parse_assignment(f"train.lean_segments={value}"))
        config.validate()
    assert message in str(info.value) and "\n" not in str(info.value)
    for good in ("auto", "4"):
        set_value(config, *parse_assignment(f"train.lean_segments={good}"))
        config.validate()
    assert config.train.lean_segments == 4
    set_value(config, "train.memory", "standard")
    with pytest.raises(ConfigError, match=r"^train.lean_segments applies to train.memory=lean \(it is 'standard'\)$"):
        config.validate()


def test_unknown_key_lists_the_valid_keys_of_its_section():
    with pytest.raises(ConfigError, match=r"valid: train\.mode, train\.epochs"):
        set_value(RunConfig(), "train.bogus", 1)


def test_validate_names_the_valid_choices():
    config = RunConfig()
    config.data.name = "imagenet"
    with pytest.raises(ConfigError, match="unknown data.name .imagenet.*valid: cifar10, cifar100, digits, fashion-mnist"):
        config.validate()
    config = RunConfig()
    config.model.readout_norm = "groupnorm"
    with pytest.raises(ConfigError, match="valid: batchnorm, layernorm, none"):
        config.validate()


def test_yaml_sections_and_unknown_sections(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("data: {name: digits}\ntrain: {epochs: 3, mode: local}\nout: somewhere\n")
    [run] = build_runs(good, [])
    assert (run.data.name, run.train.epochs, run.train.mode, run.out) == ("digits", 3, "local", str(Path("somewhere/seed-0")))
    bad = tmp_path / "bad.yaml"
    bad.write_text("trian: {epochs: 3}\n")
    with pytest.raises(ConfigError, match="unknown config key 'trian'"):
        build_runs(bad, [])


def test_sweep_zips_within_an_axis_and_multiplies_across(tmp_path):
    path = tmp_path / "table.yaml"
    path.write_text(
        "out: runs/t\nsweep:\n"
        "  - {data.name: [mnist, fashion-mnist], train.epochs: [100, 200]}\n"
        "  - {train.mode: [bp, caps]}\n"
    )
    runs = build_runs(path, [])
    assert [(r.data.name, r.train.epochs, r.train.mode) for r in runs] == [
        ("mnist", 100, "bp"), ("mnist", 100, "caps"), ("fashion-mnist", 200, "bp"), ("fashion-mnist", 200, "caps")]
    assert runs[-1].out == str(Path("runs/t/fashion-mnist_caps/seed-0"))  # epochs may grow on resume: they name no folder
    # a flag that fixes a swept key selects the matching variant, keeping its zipped values ...
    runs = build_runs(path, [("data.name", "fashion-mnist")])
    assert [(r.data.name, r.train.epochs) for r in runs] == [("fashion-mnist", 200)] * 2
    # ... and one whose value is not in the sweep applies to every run
    runs = build_runs(path, [("train.epochs", 1)])
    assert [(r.data.name, r.train.epochs) for r in runs] == [("mnist", 1), ("mnist", 1), ("fashion-mnist", 1), ("fashion-mnist", 1)]


def test_the_same_cell_selected_three_ways_lands_in_one_folder(tmp_path):
    path = tmp_path / "table.yaml"
    path.write_text("out: runs/t\nsweep:\n  - {data.name: [digits, fashion-mnist]}\n  - {train.mode: [bp, caps]}\n")
    whole_sweep = {run.out for run in build_runs(path, []) if (run.data.name, run.train.mode) == ("fashion-mnist", "caps")}
    by_flags = {run.out for run in build_runs(path, [("data.name", "fashion-mnist"), ("train.mode", "caps")])}
    by_set = {run.out for run in build_runs(path, ["data.name=fashion-mnist", "train.mode=caps"])}
    assert whole_sweep == by_flags == by_set == {str(Path("runs/t/fashion-mnist_caps/seed-0"))}
    # a key the sweep does not vary, set on the command line, names its own folder; epochs never do
    [other] = build_runs(path, ["data.name=fashion-mnist", "train.mode=caps", "train.lr=0.001", "train.epochs=3"])
    assert other.out == str(Path("runs/t/fashion-mnist_caps_lr-0.001/seed-0"))
    # without a config file the identity keys name the run; --out is the run folder itself
    [plain] = build_runs(None, ["data.name=fashion-mnist", "model.dropout=0.1"])
    assert plain.out == str(Path("runs/fashion-mnist_mlp_caps_dropout-0.1/seed-0"))
    [mine] = build_runs(None, ["data.name=fashion-mnist", f"out={tmp_path / 'mine'}"])
    assert mine.out == str(tmp_path / "mine")


def test_seeds_are_a_sweep_axis_and_a_folder_level(tmp_path):
    runs = build_runs(Path(__file__).parent.parent / "configs" / "quickstart.yaml", [], seeds=[0, 1, 2])
    assert [(r.train.mode, r.train.seed) for r in runs] == [(m, s) for m in ("bp", "caps") for s in (0, 1, 2)]
    assert runs[4].out == str(Path("runs/quickstart/caps/seed-1"))
    [a, b] = build_runs(None, [f"out={tmp_path}"], seeds=[4, 5])
    assert (a.out, b.out) == (str(tmp_path / "seed-4"), str(tmp_path / "seed-5"))
    with pytest.raises(ConfigError, match="either --seed or --seeds"):
        build_runs(None, ["train.seed=1"], seeds=[0, 1])


def test_sweep_axis_lists_must_have_equal_length():
    with pytest.raises(ConfigError, match="equal length"):
        Sweep.from_yaml([{"data.name": ["a", "b"], "train.epochs": [1]}], "x")


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_resolves_and_validates(path):
    # each config names its script in its first comment lines; its sections say which schema it has
    from capsmm.incremental import IncrementalRunConfig

    text = path.read_text()
    schema = (IncrementalRunConfig if "incremental:" in text else
              MultimodalRunConfig if re.search(r"^(multimodal|audio|image):", text, re.M) else RunConfig)
    assert {IncrementalRunConfig: "train_incremental.py", MultimodalRunConfig: "train_multimodal.py", RunConfig: "train_vision.py"}[schema] in text
    runs = build_runs(path, [], schema)
    assert runs
    for run in runs:
        run.validate()


def test_schedule_switches_at_the_given_fraction():
    schedule = ModeSchedule.parse("caps:0.9,caps-full")
    assert [schedule.mode_at(e, 10) for e in range(10)] == ["caps"] * 9 + ["caps-full"]
    three = ModeSchedule.parse("local:0.25,caps:0.5,caps-full")
    assert [three.mode_at(e, 8) for e in range(8)] == ["local"] * 2 + ["caps"] * 2 + ["caps-full"] * 4


@pytest.mark.parametrize("text, message", [
    ("bp:0.5,caps", "bp and each layer-local peer train alone"),
    ("caps:0.5,local-pred", "need different heads"),
    ("caps:0.5,caps-full:0.9", "leave the last segment without an end"),
    ("caps,caps-full", "needs an end fraction"),
    ("caps:0.7,local:0.3,caps-full", "must increase"),
    ("sgd", "unknown mode 'sgd'"),
])
def test_bad_schedules(text, message):
    with pytest.raises(ConfigError, match=message):
        ModeSchedule.parse(text)
