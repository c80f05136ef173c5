"""Fuzzing the config reader: no value, key or YAML text ends in anything but a one-line ConfigError,
and no accepted config holds a value outside the documented ranges (the spec below, written
independently of capsmm/config.py's checks)."""

import math

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from capsmm.config import MultimodalRunConfig, RunConfig, build_runs, parse_assignment, set_value, valid_keys
from capsmm.data import DATASETS
from modalities.audio import AUDIO_DATASETS
from capsmm.encoder import ENCODERS
from capsmm.errors import ConfigError

#: documented ranges: key suffix -> predicate on an accepted value
POSITIVE = {"train_subset", "test_subset", "image_size", "sample_rate", "duration", "width_mult", "depth", "hidden",
            "pattern_width", "temperature", "epochs", "lr", "eval_batch_size", "diagnostics_samples", "micro_batches", "dist_timeout"}
NON_NEGATIVE = {"weight_decay", "seed", "lean_keep", "diagnostics_every"}
FRACTIONS = {"dropout", "modality_dropout"}  # [0, 1)
CHOICES = {
    "data.name": lambda: DATASETS.names(), "image.name": lambda: DATASETS.names(), "audio.name": lambda: AUDIO_DATASETS.names(),
    "model.backbone": lambda: ENCODERS.names(), "image_model.backbone": lambda: ENCODERS.names(),
    "audio_model.backbone": lambda: ENCODERS.names(), "train.memory": lambda: ["standard", "lean"],
    "train.parallel": lambda: ["data", "blocks"], "train.amp": lambda: ["none", "bf16"],
    "model.readout_norm": lambda: ["batchnorm", "layernorm", "none"], "model.head": lambda: ["cosine", "template"],
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
