"""Fuzzing the config reader: no value, key or YAML text ends in anything but a one-line ConfigError,
and no accepted config holds a value outside the documented ranges (the spec below, written
independently of capsmm.config's checks)."""

import math

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import load_script

from capsmm.config import MultimodalRunConfig, RunConfig, build_runs, parse_assignment, set_value, valid_keys
from capsmm.data import DATASETS
from modalities.audio import AUDIO_DATASETS
from capsmm.encoder import ENCODERS
from capsmm.errors import ConfigError
from capsmm.incremental import IncrementalRunConfig

#: documented ranges: key suffix -> predicate on an accepted value
POSITIVE = {"train_subset", "test_subset", "image_size", "sample_rate", "duration", "width_mult", "depth", "hidden",
            "pattern_width", "temperature", "epochs", "lr", "eval_batch_size", "diagnostics_samples", "micro_batches", "dist_timeout",
            "lean_segments"}
NON_NEGATIVE = {"weight_decay", "seed", "lean_keep", "diagnostics_every"}
FRACTIONS = {"dropout", "modality_dropout"}  # [0, 1)
CHOICES = {
    "data.name": lambda: DATASETS.names(), "image.name": lambda: DATASETS.names(), "audio.name": lambda: AUDIO_DATASETS.names(),
    "model.backbone": lambda: ENCODERS.names(), "image_model.backbone": lambda: ENCODERS.names(),
    "audio_model.backbone": lambda: ENCODERS.names(), "train.memory": lambda: ["standard", "lean"],
    "train.parallel": lambda: ["data", "blocks"], "train.amp": lambda: ["none", "bf16", "auto"],
    "model.readout_norm": lambda: ["batchnorm", "layernorm", "none"], "model.head": lambda: ["cosine", "template"],
    "train.lean_segments": lambda: ["auto"],
}

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.sampled_from(["caps", "bp", "lean", "bf16", "mlp", "vgg8", "digits", "fsdd", "data", "blocks", "1e-3", "nan"]),
)
values = st.one_of(scalars, st.lists(scalars, max_size=4))


def flat(config):
    out = {}
    for section, body in config.to_dict().items():
        if isinstance(body, dict):
            out.update({f"{section}.{k}": v for k, v in body.items()})
        else:
            out[section] = body
    return out


def assert_within_documented_ranges(config):
    for key, value in flat(config).items():
        name = key.rsplit(".", 1)[-1]
        if value is None or isinstance(value, (bool, str, list)):
            if key in CHOICES:
                assert value in CHOICES[key](), (key, value)
            if key == "train.lr_milestones":
                assert all(isinstance(v, int) and v >= 1 for v in value) and value == sorted(set(value)), value
            if key == "train.batch_size":
                raise AssertionError("batch_size must be a number")
            continue
        assert math.isfinite(value), (key, value)
        if name in POSITIVE:
            assert value > 0, (key, value)
        if name in NON_NEGATIVE:
            assert value >= 0, (key, value)
        if name in FRACTIONS:
            assert 0 <= value < 1, (key, value)
        if key == "train.lr_gamma":
            assert 0 < value <= 1, (key, value)
        if key == "train.batch_size":
            assert value >= 2, value


def accepted_or_refused(schema, overrides):
    try:
        [config] = build_runs(None, overrides, schema)
        config.validate()
    except ConfigError as error:
        assert "\n" not in str(error) and str(error)
        return None
    assert_within_documented_ranges(config)
    return config


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(valid_keys(RunConfig)), values), min_size=1, max_size=3))
def test_any_vision_overrides_are_accepted_in_range_or_refused_in_one_line(overrides):
    accepted_or_refused(RunConfig, overrides)


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(valid_keys(MultimodalRunConfig)), values), min_size=1, max_size=3))
def test_any_multimodal_overrides_are_accepted_in_range_or_refused_in_one_line(overrides):
    accepted_or_refused(MultimodalRunConfig, overrides)


@FUZZ
@given(st.text(max_size=40))
def test_any_set_text_is_read_or_refused_in_one_line(text):
    try:
        key, value = parse_assignment(text)
        config = RunConfig()
        set_value(config, key, value)
        config.validate()
    except ConfigError as error:
        assert "\n" not in str(error)
        return
    assert_within_documented_ranges(config)


@FUZZ
@given(st.one_of(st.text(max_size=80), st.dictionaries(st.sampled_from(["data", "model", "train", "out", "sweep", "extra"]),
                                                      st.one_of(values, st.dictionaries(st.text(max_size=8), values, max_size=3)),
                                                      max_size=4).map(yaml.safe_dump)))
def test_any_yaml_file_is_read_or_refused_in_one_line(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("yaml") / "config.yaml"
    path.write_text(text)
    try:
        runs = build_runs(path, [])
        for run in runs:
            run.validate()
    except ConfigError as error:
        assert "\n" not in str(error)
        return
    for run in runs:
        assert_within_documented_ranges(run)


#: script -> (the function it trains with, which the fuzz replaces by a no-op, and the keys it accepts)
SCRIPTS = {"train_vision": ("train", RunConfig), "train_multimodal": ("train_multimodal", MultimodalRunConfig),
           "train_incremental": ("run_incremental", IncrementalRunConfig)}
flag_values = st.one_of(st.integers(-3, 10**6).map(str), st.sampled_from(["", "0", "nan", "-1", "1e-3", "x", "caps", "bp", "mlp", "[1]"]),
                        st.text(max_size=6))


@pytest.mark.parametrize("script", sorted(SCRIPTS))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzing_the_command_line_gives_exit_0_or_one_line_and_exit_2_never_a_traceback(script, data, capsys, monkeypatch):
    module = load_script(script)
    trainer, schema = SCRIPTS[script]
    def stop_where_training_begins(run, **_):
        assert type(run) is schema
        raise SystemExit(0)

    monkeypatch.setattr(module, trainer, stop_where_training_begins)
    keys = st.sampled_from(valid_keys(schema))
    argv = []
    for key, value in data.draw(st.lists(st.tuples(keys, flag_values), min_size=1, max_size=3)):
        argv += ["--set", f"{key}={value}"]
    argv += data.draw(st.lists(st.sampled_from(["--epochs", "--seed", "--batch-size", "--lr", "--mode"]), max_size=2).map(
        lambda flags: [part for flag in flags for part in (flag, data.draw(flag_values))]))
    capsys.readouterr()
    try:
        status = module.main(argv)
    except SystemExit as exit_:  # argparse's usage errors, or a valid config reaching training
        status = exit_.code
    err = capsys.readouterr().err
    assert status in (0, 2), (argv, status, err)
    if status == 2:
        assert err.count("\n") == 1 and err.startswith(("error: ", f"{script}.py: error: ")), (argv, err)
    else:
        assert err == "", (argv, err)
