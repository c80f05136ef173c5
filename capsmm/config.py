"""Run configuration: a commented dataclass schema, YAML files, typed ``--set`` overrides, sweeps.

A config file is YAML with the sections ``data``, ``model``, ``train``, the key ``out`` and an
optional ``sweep``. Unknown keys and values of the wrong type are :class:`ConfigError` s that
name the valid keys. The resolved config is saved with every run and inside every checkpoint.

A **sweep** is a list of axes; each axis maps dotted keys to equal-length lists that vary
together, and the runs are the product of the axes::

    sweep:
      - {data.name: [mnist, fashion-mnist], train.epochs: [100, 200]}   # zipped
      - {train.mode: [bp, caps]}                                         # x 2 = 4 runs

A key fixed on the command line is taken out of the sweep: if its value is one of the axis'
values, that variant (with the values zipped with it) is kept; otherwise it applies to all.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError


def opt(help: str, default: Any = dataclasses.MISSING, *, factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field with its help text (shown by ``--help`` and :func:`describe_keys`)."""
    return field(default=default, default_factory=factory, metadata={"help": help})


@dataclass
class DataConfig:
    name: str = opt('data set: digits (offline, bundled with scikit-learn), mnist, fashion-mnist, kmnist, cifar10, cifar100, imagefolder', "digits")
    root: str | None = opt('data root; default $CAPSMM_DATA, else ./data. torchvision sets live in <root>/torchvision', None)
    path: str | None = opt('imagefolder only: folder with train/ and test/ (absolute, or relative to the data root; default: the root)', None)
    download: bool = opt('download torchvision data sets that are missing (needs internet)', True)
    train_subset: int | None = opt('use only the first N training samples', None)
    test_subset: int | None = opt('use only the first N test samples', None)
    image_size: int = opt('imagefolder only: images are resized to image_size x image_size', 32)
    augment: bool = opt('random crop (padding size/8) + horizontal flip on training batches; off in the paper', False)


@dataclass
class ModelConfig:
    backbone: str = opt('mlp, vgg6, vgg8, vgg11, vgg16, vgg19 (or a registered encoder)', "mlp")
    width_mult: float = opt("channel / unit multiplier (the paper's 1x, 2x, 4x)", 1.0)
    depth: int | None = opt('mlp only: number of hidden layers (default 3)', None)
    hidden: int | None = opt('mlp only: units per hidden layer before width_mult (default 3000)', None)
    dropout: float = opt('dropout at the end of every block', 0.2)
    pattern_width: int = opt("width of each block's CAP vector after pooling", 1024)
    readout_norm: str = opt('normalisation of each CAP vector: batchnorm, layernorm, none', "batchnorm")
    head: str = opt('class prototype scores: cosine (eq. 7, with temperature) or template (Algorithm 1)', "cosine")
    temperature: float = opt('tau of the cosine head', 0.1)

    def encoder_options(self) -> dict[str, Any]:
        """Options for the backbone builder (unset MLP-only options are left to its defaults)."""
        options: dict[str, Any] = {"width_mult": self.width_mult, "dropout": self.dropout}
        options.update({k: v for k, v in (("depth", self.depth), ("hidden", self.hidden)) if v is not None})
        return options


@dataclass
class TrainConfig:
    mode: str = opt('bp, caps, caps-full, local, or a schedule such as caps:0.9,caps-full', "caps")
    epochs: int = opt('number of epochs', 10)
    batch_size: int = opt('training batch size', 128)
    lr: float = opt('Adam learning rate', 5e-4)
    weight_decay: float = opt('Adam weight decay', 0.0)
    lr_milestones: list[int] = opt('epochs at which the learning rate is multiplied by lr_gamma (MultiStepLR)', factory=list)
    lr_gamma: float = opt('learning-rate factor at each milestone', 0.1)
    seed: int = opt('seed of initialisation, batch order, dropout and augmentation', 0)
    device: str = opt('auto (CUDA when available), cpu, cuda, cuda:N', "auto")
    memory: str = opt('standard, or lean: exact caps/local gradients recomputing one block at a time (less memory)', "standard")
    adam_impl: str = opt('Adam kernel: auto, foreach, fused, for-loop', "auto")
    channels_last: bool = opt('channels-last memory format for conv backbones', False)
    compile: bool = opt('torch.compile the model (standard memory only)', False)
    amp: str = opt('autocast dtype: none or bf16', "none")
    eval_batch_size: int = opt('batch size for evaluation', 1000)
    diagnostics_every: int = opt('every N epochs (and at the last), write diagnostics (orthogonality, sparsity, gradient cosine, scale, per-block accuracy) to metrics.jsonl; 0 = off', 0)
    diagnostics_samples: int = opt('size of the fixed test batch the diagnostics read (the first N test samples)', 512)
    progress: bool = opt('show a tqdm progress bar per epoch', True)


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    out: str | None = opt("output folder (default runs/<dataset>_<backbone>_<mode>; with a sweep, the sweep's parent folder)", None)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> "RunConfig":
        """Check values that the types alone do not (names, ranges); returns ``self``."""
        from .data import DATASETS
        from .encoder import ENCODERS
        from .modes import DETACHED_MODES, ModeSchedule
        from .prototypes import HEADS
        from .readout import READOUT_NORMS

        DATASETS.get(self.data.name)
        ENCODERS.get(self.model.backbone)
        schedule = ModeSchedule.parse(self.train.mode)
        if self.train.memory == "lean" and not set(schedule.modes) <= DETACHED_MODES:
            raise ConfigError(f"train.memory=lean needs caps or local throughout; train.mode is '{self.train.mode}'")
        if self.train.memory == "lean" and self.train.compile:
            raise ConfigError("train.compile applies to train.memory=standard only")
        from .step import ADAM_IMPLS, AMP_DTYPES

        choices = {
            "model.readout_norm": (self.model.readout_norm, READOUT_NORMS), "model.head": (self.model.head, HEADS),
            "train.memory": (self.train.memory, ("standard", "lean")), "train.adam_impl": (self.train.adam_impl, ADAM_IMPLS),
            "train.amp": (self.train.amp, AMP_DTYPES),
        }
        for key, (value, valid) in choices.items():
            if value not in valid:
                raise ConfigError(f"unknown {key} '{value}'; valid: {', '.join(valid)}")
        positive = {
            "train.epochs": self.train.epochs, "train.batch_size": self.train.batch_size,
            "train.eval_batch_size": self.train.eval_batch_size, "model.pattern_width": self.model.pattern_width,
            "data.image_size": self.data.image_size, "data.train_subset": self.data.train_subset,
            "data.test_subset": self.data.test_subset, "train.lr": self.train.lr, "model.width_mult": self.model.width_mult,
            "train.diagnostics_samples": self.train.diagnostics_samples,
        }
        for key, value in positive.items():
            if value is not None and not value > 0:
                raise ConfigError(f"{key} must be positive, got {value}")
        if self.train.diagnostics_every < 0:
            raise ConfigError(f"train.diagnostics_every must be >= 0 (0 = off), got {self.train.diagnostics_every}")
        if self.train.batch_size < 2:
            raise ConfigError("train.batch_size must be at least 2 (batch statistics need two samples)")
        if not 0 <= self.model.dropout < 1:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.model.dropout}")
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.train.device):
            raise ConfigError(f"train.device '{self.train.device}' is not one of auto, cpu, cuda, cuda:N, mps")
        return self

    def out_dir(self) -> Path:
        if self.out:
            return Path(self.out)
        return Path("runs") / slug(f"{self.data.name}_{self.model.backbone}_{self.train.mode}")


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")


# ---------------------------------------------------------------------------- typed values

def _describe(tp: Any) -> str:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is list:
        return f"a list of {_describe(typing.get_args(tp)[0])}"
    return {type(None): "null", bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (converting int->float, '1e-3'->float)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return coerce(value, option, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: expected {_describe(tp)}, got {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected {_describe(tp)}, got {value!r}")
        return [coerce(v, typing.get_args(tp)[0], key) for v in value]
    if tp is type(None):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    raise ConfigError(f"{key}: expected {_describe(tp)}, got {value!r}")


SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}
TOP_LEVEL = {"out": str | None}


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def describe_keys() -> str:
    """Every config key with its type, default and help, one per line (for ``--help``)."""
    lines = []
    for section, cls in [*SECTIONS.items(), ("", RunConfig)]:
        hints = _field_types(cls)
        for f in dataclasses.fields(cls):
            if "help" not in f.metadata:
                continue
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            key = f"{section}.{f.name}" if section else f.name
            lines.append(f"  {key:22s} {_describe(hints[f.name])}, default {default!r}: {f.metadata['help']}")
    return "\n".join(lines)


def valid_keys() -> list[str]:
    keys = [f"{section}.{name}" for section, cls in SECTIONS.items() for name in _field_types(cls)]
    return keys + list(TOP_LEVEL)


def _unknown_key(key: str) -> ConfigError:
    close = difflib.get_close_matches(key, valid_keys(), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    section = key.split(".")[0]
    if section in SECTIONS:
        valid = ", ".join(f"{section}.{k}" for k in _field_types(SECTIONS[section]))
    else:
        valid = "data.*, model.*, train.*, out, sweep"
    return ConfigError(f"unknown config key '{key}'{hint}; valid: {valid}")


def set_value(config: RunConfig, key: str, value: Any) -> None:
    """Set the dotted ``key`` (e.g. ``train.lr``) to ``value``, checking its type."""
    if key in TOP_LEVEL:
        setattr(config, key, coerce(value, TOP_LEVEL[key], key))
        return
    section, _, name = key.partition(".")
    if section not in SECTIONS or name not in _field_types(SECTIONS[section]):
        raise _unknown_key(key)
    setattr(getattr(config, section), name, coerce(value, _field_types(SECTIONS[section])[name], key))


def parse_assignment(text: str) -> tuple[str, Any]:
    """``key=value`` from ``--set``; the value is read as YAML (``3``, ``1e-3``, ``[30, 60]``, ``null``)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects key=value (e.g. train.lr=1e-3), got '{text}'")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def flatten_mapping(data: dict[str, Any], source: str) -> dict[str, Any]:
    """``{train: {lr: 1}}`` -> ``{"train.lr": 1}``; non-mapping sections are errors."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if key in SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: section '{key}' must be a mapping of keys to values")
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[str(key)] = value
    return flat


@dataclass
class Sweep:
    """A product of zipped axes of overrides (see the module docstring)."""

    axes: list[dict[str, list[Any]]] = field(default_factory=list)

    @classmethod
    def from_yaml(cls, raw: Any, source: str) -> "Sweep":
        if raw is None:
            return cls()
        if isinstance(raw, dict):
            raw = [raw]
        if not isinstance(raw, list):
            raise ConfigError(f"{source}: 'sweep' must be a list of axes, each mapping keys to lists of values")
        axes = []
        for axis in raw:
            if not isinstance(axis, dict) or not axis:
                raise ConfigError(f"{source}: each sweep axis must map keys to lists of values, got {axis!r}")
            lengths = set()
            for key, values in axis.items():
                if not isinstance(values, list) or not values:
                    raise ConfigError(f"{source}: sweep key '{key}' needs a non-empty list of values")
                lengths.add(len(values))
            if len(lengths) != 1:
                raise ConfigError(f"{source}: keys of one sweep axis vary together and need lists of equal length ({list(axis)})")
            axes.append({str(k): list(v) for k, v in axis.items()})
        return cls(axes)

    def fix(self, key: str, value: Any) -> None:
        """Take ``key`` out of the sweep because the command line fixed it to ``value``."""
        for axis in self.axes:
            if key not in axis:
                continue
            keep = [i for i, v in enumerate(axis[key]) if v == value or str(v) == str(value)]
            if keep:
                for k in axis:
                    axis[k] = [axis[k][i] for i in keep]
            del axis[key]
        self.axes = [axis for axis in self.axes if axis]

    def runs(self) -> list[dict[str, Any]]:
        """One dict of overrides per run."""
        variants = []
        for axis in self.axes:
            n = len(next(iter(axis.values())))
            variants.append([{k: v[i] for k, v in axis.items()} for i in range(n)])
        return [dict(kv for part in combo for kv in part.items()) for combo in itertools.product(*variants)]


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file '{path}' does not exist") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"config file '{path}' is not valid YAML: {str(error).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping with sections data/model/train")
    return data


def build_runs(config_file: str | Path | None, overrides: list[tuple[str, Any]]) -> list[RunConfig]:
    """The run configs of a command: defaults <- file <- sweep variant <- command-line overrides.

    With a sweep, every run gets ``out`` = ``<out>/<variant slug>``.
    """
    base: dict[str, Any] = {}
    sweep = Sweep()
    source = str(config_file) if config_file else "command line"
    if config_file is not None:
        data = load_yaml(config_file)
        sweep = Sweep.from_yaml(data.pop("sweep", None), source)
        base = flatten_mapping(data, source)
    for key, value in overrides:
        sweep.fix(key, value)
    default_out = Path("runs") / Path(config_file).stem if config_file else None
    runs = []
    for variant in sweep.runs():
        config = RunConfig()
        for key, value in itertools.chain(base.items(), variant.items(), overrides):
            set_value(config, key, value)
        if sweep.axes:
            root = Path(config.out) if config.out else default_out
            config.out = str(root / slug("_".join(str(v) for v in variant.values())))
        runs.append(config)
    return runs
