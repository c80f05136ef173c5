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
import importlib
import itertools
import math
import re
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError
from .modes import PEER_MODES, ModeSchedule


Check = Callable[[str, Any], "str | None"]
"""A value check: ``check(key, value)`` is None when the value is valid, else the one-line error."""


def opt(help: str, default: Any = dataclasses.MISSING, *, factory: Any = dataclasses.MISSING, check: Check | None = None) -> Any:
    """A dataclass field with its help text (shown by ``--help``) and the check its values must pass."""
    return field(default=default, default_factory=factory, metadata={"help": help, "check": check})


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def at_least(low: float, *, open_low: bool = False) -> Check:
    sign = ">" if open_low else ">="

    def check(key: str, value: Any) -> str | None:
        ok = _finite(value) and (value > low if open_low else value >= low)
        return None if ok else f"{key} must be a finite number {sign} {low:g}, got {value!r}"
    return check


def in_range(low: float, high: float, *, open_high: bool = True) -> Check:
    bracket = ")" if open_high else "]"

    def check(key: str, value: Any) -> str | None:
        ok = _finite(value) and low <= value and (value < high if open_high else value <= high)
        return None if ok else f"{key} must be in [{low:g}, {high:g}{bracket}, got {value!r}"
    return check


non_negative = at_least(0)


class one_of:  # noqa: N801 - used like the other check factories
    """Check: the value must be one of ``values`` (a callable is asked when checking: registries fill
    late). ``--help`` lists the choices."""

    def __init__(self, values: Sequence[str] | Callable[[], Sequence[str]]) -> None:
        self.values = values

    def choices(self) -> list[str]:
        return list(self.values() if callable(self.values) else self.values)

    def __call__(self, key: str, value: Any) -> str | None:
        valid = self.choices()
        if value in valid:
            return None
        close = difflib.get_close_matches(str(value), valid, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return f"unknown {key} '{value}'{hint}; valid: {', '.join(valid)}"


def increasing_epochs(key: str, values: Any) -> str | None:
    ok = all(isinstance(v, int) and v >= 1 for v in values) and all(a < b for a, b in zip(values, values[1:]))
    return None if ok else f"{key} must be increasing epoch numbers >= 1, got {values!r}"


def _registry_names(module: str, name: str) -> Callable[[], list[str]]:
    """The names of a registry, looked up when checked (importing it at config time would be a cycle)."""
    def names() -> list[str]:
        return getattr(importlib.import_module(module), name).names()
    return names


def check_fields(section: Any, prefix: str) -> None:
    """Run every field's check on ``section``; the first failure is a one-line :class:`ConfigError`."""
    for f in dataclasses.fields(section):
        check, value = f.metadata.get("check"), getattr(section, f.name)
        if check is not None and value is not None:
            problem = check(f"{prefix}.{f.name}", value)
            if problem:
                raise ConfigError(problem)


@dataclass
class DataConfig:
    name: str = opt('data set: digits (offline, bundled with scikit-learn), mnist, fashion-mnist, kmnist, cifar10, cifar100, '
                    'imagefolder, hf-disk', "digits", check=one_of(_registry_names("capsmm.data", "DATASETS")))
    root: str | None = opt('data root; default $CAPSMM_DATA, else ./data. torchvision sets live in <root>/torchvision', None)
    path: str | None = opt('imagefolder, hf-disk: folder of the set (absolute, or relative to the data root; default: the root)', None)
    download: bool = opt('download torchvision data sets that are missing (needs internet)', True)
    train_subset: int | None = opt('use N training samples, stratified by class', None, check=at_least(1))
    test_subset: int | None = opt('use N test samples, stratified by class', None, check=at_least(1))
    image_size: int = opt('imagefolder, hf-disk: images are resized to image_size x image_size', 32, check=in_range(1, 4096, open_high=False))
    augment: bool = opt('random crop (padding: crop_padding) + horizontal flip on training batches; off in the paper', False)
    crop_padding: int | None = opt('augment: pixels of zero padding around the random crop (default: a side / 8; local-loss: 2)', None,
                                   check=in_range(0, 1024, open_high=False))
    cutout: int = opt('side of one square cut out (set to the mean pixel) of every training image at a random place; 0 = off', 0,
                      check=in_range(0, 4096, open_high=False))

    def validate(self, prefix: str) -> None:
        check_fields(self, prefix)


@dataclass
class AudioDataConfig:
    name: str = opt("audio data set: fsdd (Free Spoken Digit Dataset), audiofolder, hf-disk", "fsdd",
                    check=one_of(_registry_names("capsmm.data", "AUDIO_DATASETS")))
    root: str | None = opt("data root; default $CAPSMM_DATA, else ./data. fsdd lives in <root>/fsdd", None)
    path: str | None = opt("folder of the set (absolute, or relative to the root); fsdd default <root>/fsdd, audiofolder default <root>", None)
    test_speakers: list[str] | None = opt("fsdd: speakers held out for testing (all their recordings); default: the take rule (takes 0-4 test)", None)
    sample_rate: int = opt("waveforms are resampled to this rate (Hz)", 8000, check=in_range(100, 384_000, open_high=False))
    duration: float = opt("seconds per clip: longer ones are centre-cropped, shorter ones zero-padded at the end", 1.0,
                          check=in_range(0.01, 600, open_high=False))
    train_subset: int | None = opt("use N training clips, stratified by class", None, check=at_least(1))
    test_subset: int | None = opt("use N test clips, stratified by class", None, check=at_least(1))
    shift: float = opt("training batches: each clip shifted by up to this many seconds, either way (0 = off)", 0.0,
                       check=in_range(0, 10, open_high=False))
    gain_db: float = opt("training batches: each clip's gain changed by up to this many dB, either way (0 = off)", 0.0,
                         check=in_range(0, 60, open_high=False))
    noise_snr: float | None = opt("training batches: white noise at a random SNR from this many dB to 20 dB more (null = off)", None,
                                  check=in_range(-20, 100, open_high=False))
    speed: float = opt("training batches: each clip played faster or slower by up to this fraction (0 = off; 0.1 = 0.9x to 1.1x)", 0.0,
                       check=in_range(0, 0.5, open_high=False))
    augment_p: float = opt("training batches: each waveform augmentation above applies to a clip with this probability (1 = to every "
                           "clip; below 1 the model also hears clean clips, which noise with utterance normalisation needs)", 1.0,
                           check=in_range(0, 1, open_high=False))

    def validate(self, prefix: str) -> None:
        check_fields(self, prefix)

    @property
    def length(self) -> int:
        return max(1, round(self.sample_rate * self.duration))


@dataclass
class EncoderConfig:
    backbone: str = opt('a registered encoder of the modality: image mlp, vgg6, vgg8, vgg11, vgg16, vgg19, vgg8b, vgg11b, '
                        'resnet20, resnet32, resnet56, resnet110, resnet18, vit-tiny; audio audio-cnn, audio-resnet', "mlp",
                        check=one_of(_registry_names("capsmm.encoder", "ENCODERS")))
    width_mult: float = opt("channel / unit multiplier (the paper's 1x, 2x, 4x)", 1.0, check=in_range(1e-3, 64, open_high=False))
    depth: int | None = opt('mlp: hidden layers (default 3); vit-tiny: transformer layers (default 12)', None,
                            check=in_range(1, 1000, open_high=False))
    patch: int | None = opt('vit-tiny: patch side in pixels (default 4)', None, check=in_range(1, 1024, open_high=False))
    hidden: int | None = opt('mlp only: units per hidden layer before width_mult (default 3000)', None, check=in_range(1, 10**6, open_high=False))
    dropout: float = opt('dropout at the end of every block', 0.2, check=in_range(0, 1))
    activation: str | None = opt('mlp and vgg backbones: relu (default) or leakyrelu (slope 0.01, local-loss\'s)', None,
                                 check=one_of(("relu", "leakyrelu")))
    block_batchnorm: bool | None = opt('mlp only: batch norm after each linear layer (local-loss\'s MLP; default off, as in the paper)', None)
    source: str | None = opt('hf-* backbones: local directory of a transformers model (save_pretrained)', None)

    def encoder_options(self) -> dict[str, Any]:
        """Options for the backbone builder. Unset options (None) are left to the builder's defaults,
        and so are ``width_mult`` and ``dropout`` at their defaults when the builder has no such
        option (a transformers model); set to anything else, the builder must take them."""
        from .encoder import encoder_options

        accepted = encoder_options(self.backbone)
        defaults = type(self)()
        options: dict[str, Any] = {}
        head_keys = {f.name for f in dataclasses.fields(HeadConfig)}
        for key in (f.name for f in dataclasses.fields(self) if f.name != "backbone" and f.name not in head_keys):
            value = getattr(self, key)
            if value is not None and (key in accepted or value != getattr(defaults, key)):
                options[key] = value
        return options

    def validate(self, prefix: str, modality: str) -> None:
        from .encoder import encoder_modality, encoder_options

        check_fields(self, prefix)
        found = encoder_modality(self.backbone)
        if found != modality:
            raise ConfigError(f"{prefix}.backbone '{self.backbone}' encodes {found}, not {modality}")
        taken = encoder_options(self.backbone)
        for key in sorted(set(self.encoder_options()) - set(taken)):
            raise ConfigError(f"{prefix}.{key} does not apply to backbone '{self.backbone}' (it takes: {', '.join(taken) or 'none'})")


@dataclass
class AudioEncoderConfig(EncoderConfig):
    """An audio encoder: the keys of every encoder, and its front end's (unset: the backbone's defaults)."""

    n_mels: int | None = opt("audio: mel bins (MFCC: half as many coefficients)", None, check=in_range(4, 512, open_high=False))
    features: str | None = opt("audio: logmel or mfcc", None, check=one_of(("logmel", "mfcc")))
    normalize: str | None = opt("audio: batch (one BatchNorm over the features) or utterance (each bin over the clip's frames)", None,
                                check=one_of(("batch", "utterance")))
    time_mask: int | None = opt("audio: SpecAugment, one mask of up to this many frames per training clip (0 = off)", None,
                                check=in_range(0, 1000, open_high=False))
    freq_mask: int | None = opt("audio: SpecAugment, one mask of up to this many bins per training clip (0 = off)", None,
                                check=in_range(0, 512, open_high=False))


@dataclass
class HeadConfig:
    pattern_width: int = opt("width of each block's CAP vector after pooling", 1024, check=in_range(1, 2**20, open_high=False))
    readout_norm: str = opt('normalisation of each CAP vector: batchnorm, layernorm, none', "batchnorm",
                            check=one_of(("batchnorm", "layernorm", "none")))
    head: str = opt('class prototype scores: cosine (eq. 7, with temperature) or template (Algorithm 1)', "cosine",
                    check=one_of(("cosine", "template")))
    temperature: float = opt('tau of the cosine head', 0.1, check=in_range(1e-4, 1e4, open_high=False))
    dim_in_decoder: int = opt('local-pred, local-predsim: a block\'s output is average-pooled to at most this many features for its decoder', 4096,
                              check=in_range(1, 2**24, open_high=False))
    beta: float = opt('local-predsim: weight of the sim loss (1 - beta weighs pred and the output layer)', 0.99, check=in_range(0, 1, open_high=False))
    aux_convs: int = opt('dgl: 1x1 conv layers of each auxiliary network', 3, check=in_range(0, 16, open_high=False))
    aux_mlp_layers: int = opt('dgl: hidden linear layers of each auxiliary network', 3, check=in_range(0, 16, open_high=False))
    aux_width: int = opt('dgl: widest hidden layer of an auxiliary network', 1024, check=in_range(1, 2**16, open_high=False))

    def head_options(self) -> dict[str, Any]:
        """What the model's readouts and head take (CAP readouts and prototypes, or a peer's heads)."""
        peer = {"dim_in_decoder": self.dim_in_decoder, "beta": self.beta, "aux_convs": self.aux_convs,
                "aux_mlp_layers": self.aux_mlp_layers, "aux_width": self.aux_width}
        return {"pattern_width": self.pattern_width, "readout_norm": self.readout_norm, "head": self.head, "temperature": self.temperature,
                "peer_options": peer}

    def validate(self, prefix: str) -> None:
        check_fields(self, prefix)


@dataclass
class ModelConfig(EncoderConfig, HeadConfig):
    """One encoder and its head (the vision runs): the keys of both."""

    def validate(self, prefix: str, modality: str = "image") -> None:
        EncoderConfig.validate(self, prefix, modality)
        HeadConfig.validate(self, prefix)


def _mode_check(key: str, value: Any) -> str | None:
    try:
        ModeSchedule.parse(value)
    except ConfigError as error:
        return f"{key}: {error}"
    return None


def _device_check(key: str, value: Any) -> str | None:
    return None if re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", value) else f"{key} '{value}' is not one of auto, cpu, cuda, cuda:N, mps"


@dataclass
class TrainConfig:
    mode: str = opt('bp, caps, caps-full, local, the layer-local peers local-pred, local-sim, local-predsim, dgl, or a schedule '
                    'such as caps:0.9,caps-full', "caps", check=_mode_check)
    epochs: int = opt('number of epochs', 10, check=in_range(1, 10**6, open_high=False))
    batch_size: int = opt('training batch size (the global batch under torchrun; at least 2: batch statistics need two samples)', 128,
                          check=in_range(2, 2**24, open_high=False))
    lr: float = opt('Adam learning rate', 5e-4, check=in_range(1e-12, 10, open_high=False))
    weight_decay: float = opt('Adam weight decay', 0.0, check=in_range(0, 10, open_high=False))
    lr_milestones: list[int] = opt('epochs at which the learning rate is multiplied by lr_gamma (MultiStepLR)', factory=list,
                                   check=increasing_epochs)
    lr_gamma: float = opt('learning-rate factor at each milestone', 0.1, check=in_range(1e-6, 1, open_high=False))
    seed: int = opt('seed of initialisation, batch order, pairing, dropout and augmentation', 0, check=in_range(0, 2**32))
    device: str = opt('auto (CUDA when available), cpu, cuda, cuda:N', "auto", check=_device_check)
    memory: str = opt('standard, or lean: exact caps/local gradients recomputing one block at a time (less memory)', "standard",
                      check=one_of(_registry_names("capsmm.strategies", "MEMORY")))
    lean_keep: int = opt('with memory=lean: the last N blocks of each encoder keep their graphs instead of being recomputed (faster, a little more memory)', 0,
                         check=non_negative)
    adam_impl: str = opt('Adam kernel: auto (fused on CPU and CUDA, the fastest measured), foreach, fused, for-loop', "auto",
                         check=one_of(("auto", "foreach", "fused", "for-loop")))
    channels_last: bool = opt('channels-last memory format for conv backbones', False)
    compile: bool = opt('torch.compile the model (standard memory only)', False)
    amp: str = opt('autocast dtype of blocks, readouts and head: none or bf16', "none", check=one_of(("none", "bf16")))
    eval_batch_size: int = opt('batch size for evaluation', 1000, check=in_range(1, 2**24, open_high=False))
    diagnostics_every: int = opt('every N epochs (and at the last), write diagnostics (orthogonality, sparsity, gradient cosine, scale, per-block accuracy) to metrics.jsonl; 0 = off', 0,
                                 check=non_negative)
    diagnostics_samples: int = opt('size of the fixed test batch the diagnostics read (N test samples, stratified by class)', 512,
                                   check=in_range(2, 2**20, open_high=False))
    progress: bool = opt('show a tqdm progress bar per epoch (its loss: the running mean over the epoch)', True)
    tensorboard: bool = opt('also write TensorBoard event files to <run>/tensorboard (pip install capsmm[tensorboard]); metrics.jsonl stays the record', False)
    parallel: str = opt('under torchrun: data (each rank a share of every batch) or blocks (each rank a run of blocks: '
                        'block-parallel for caps/local, a pipeline for bp)', "data", check=one_of(_registry_names("capsmm.strategies", "PARALLEL")))
    micro_batches: int = opt('parallel=blocks: micro-batches per batch, so that the ranks work at the same time '
                             '(batch norm then sees micro-batch statistics)', 1, check=in_range(1, 2**20, open_high=False))
    sync_batchnorm: bool = opt('parallel=data on CUDA: batch statistics over the global batch (SyncBatchNorm)', False)
    dist_timeout: float = opt('under torchrun: seconds a rank waits for the others before failing', 300.0, check=in_range(1, 86_400, open_high=False))

    def validate(self, prefix: str = "train") -> None:
        check_fields(self, prefix)


@dataclass
class RunConfig:
    """A vision run (``scripts/train_vision.py``)."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    out: str | None = opt("run folder when given on the command line; from a config file: the folder of its runs (README, Run folders)", None)

    #: the keys that name a run when no config file does (their values start the folder's name)
    identity_keys = ("data.name", "model.backbone", "train.mode")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> "RunConfig":
        """Check what the types alone do not (names, ranges, combinations), before any data is
        loaded; the first problem is a one-line :class:`ConfigError`. Returns ``self``."""
        from .strategies import Setup, check_setup

        self.data.validate("data")
        self.model.validate("model")
        self.train.validate("train")
        check_setup(Setup.of(self.train))
        return self

    def out_dir(self) -> Path:
        """The run folder: ``out`` (set by :func:`build_runs`), else the rule of :func:`run_folder`."""
        return Path(self.out) if self.out else run_folder(self, "runs", [], [], explicit_out=False, from_file=False)


FUSIONS = ("joint", "late", "concat-bp")


@dataclass
class MultimodalConfig:
    fusion: str = opt("joint: one prototype space over every modality's CAP blocks; late: independent single-modality models, "
                      "mean of their class probabilities; concat-bp: end-to-end bp, last blocks concatenated, linear head", "joint",
                      check=one_of(FUSIONS))
    modalities: list[str] = opt("modalities to train on (one of them alone = a single-modality baseline)", factory=lambda: ["audio", "image"])
    anchor: str = opt("the modality whose training samples make an epoch; the others are paired to them by class", "audio")
    pairing: str = opt("class: a random same-class partner (redrawn each training epoch, fixed for test); row: sample i with sample i", "class",
                       check=one_of(("class", "row")))
    modality_dropout: float = opt("probability that a training batch shows one randomly chosen modality only (joint fusion)", 0.0,
                                  check=in_range(0, 1))
    gate: bool = opt("joint fusion: each modality's weight in the joint score follows how typical its pattern is (docs/multimodal.md)", True)
    extend_from: str | None = opt("run folder of a trained joint model: freeze it and train only the modalities it lacks", None)

    def validate(self, prefix: str) -> None:
        check_fields(self, prefix)
        if not self.modalities or len(set(self.modalities)) != len(self.modalities):
            raise ConfigError(f"{prefix}.modalities must name distinct modalities, got {self.modalities}")


@dataclass
class MultimodalRunConfig:
    """An image + audio run (``scripts/train_multimodal.py``)."""

    image: DataConfig = field(default_factory=lambda: DataConfig(name="fashion-mnist"))
    audio: AudioDataConfig = field(default_factory=AudioDataConfig)
    image_model: EncoderConfig = field(default_factory=EncoderConfig)
    audio_model: AudioEncoderConfig = field(default_factory=lambda: AudioEncoderConfig(backbone="audio-cnn"))
    model: HeadConfig = field(default_factory=HeadConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    multimodal: MultimodalConfig = field(default_factory=MultimodalConfig)
    out: str | None = opt("run folder when given on the command line; from a config file: the folder of its runs (README, Run folders)", None)

    identity_keys = ("multimodal.modalities", "multimodal.fusion", "train.mode")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> "MultimodalRunConfig":
        """As :meth:`RunConfig.validate`, for every modality of the run and the fusion's combinations."""
        from .strategies import Setup, check_setup

        mm = self.multimodal
        mm.validate("multimodal")
        self.train.validate("train")
        self.model.validate("model")
        for modality in mm.modalities:
            if modality not in ("image", "audio"):
                raise ConfigError(f"multimodal.modalities: '{modality}' is not image or audio (other modalities: use the Python API)")
            getattr(self, modality).validate(modality)
            getattr(self, f"{modality}_model").validate(f"{modality}_model", modality)
        if mm.anchor not in mm.modalities:
            raise ConfigError(f"multimodal.anchor '{mm.anchor}' is not one of multimodal.modalities {mm.modalities}")
        if mm.fusion == "concat-bp" and _schedule_modes(self.train.mode) != {"bp"}:
            raise ConfigError(f"fusion concat-bp is end-to-end bp: set --mode bp (got '{self.train.mode}')")
        if mm.extend_from and mm.fusion != "joint":
            raise ConfigError("multimodal.extend_from adds modalities to a joint model: set multimodal.fusion=joint")
        peers = sorted(_schedule_modes(self.train.mode) & PEER_MODES)
        if peers and (len(mm.modalities) > 1 and mm.fusion != "late" or mm.extend_from):
            raise ConfigError(f"mode {peers[0]} (a layer-local peer) trains single-encoder models: use --fusion late, one modality, "
                              "or scripts/train_vision.py")
        check_setup(Setup.of(self.train, encoders=len(mm.modalities), frozen=bool(mm.extend_from), fusion=mm.fusion))
        return self

    def out_dir(self) -> Path:
        """The run folder: ``out`` (set by :func:`build_runs`), else the rule of :func:`run_folder`."""
        return Path(self.out) if self.out else run_folder(self, "runs", [], [], explicit_out=False, from_file=False)


def _schedule_modes(mode: str) -> set[str]:
    return set(ModeSchedule.parse(mode).modes)



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


def _is_section(tp: Any) -> bool:
    return dataclasses.is_dataclass(tp)


def sections(schema: type) -> dict[str, type]:
    """Section name -> dataclass of a run-config schema (``data``, ``model``, ``train``...)."""
    return {name: tp for name, tp in typing.get_type_hints(schema).items() if _is_section(tp)}


def top_level(schema: type) -> dict[str, Any]:
    return {name: tp for name, tp in typing.get_type_hints(schema).items() if not _is_section(tp)}


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def describe_keys(schema: type = RunConfig) -> str:
    """Every config key with its type, default and help, one per line (for ``--help``)."""
    lines = []
    defaults = schema()
    for section, cls in [*sections(schema).items(), ("", schema)]:
        hints = _field_types(cls)
        instance = getattr(defaults, section) if section else defaults
        for f in dataclasses.fields(cls):
            if "help" not in f.metadata:
                continue
            key = f"{section}.{f.name}" if section else f.name
            check = f.metadata.get("check")
            choices = f" [{', '.join(check.choices())}]" if isinstance(check, one_of) else ""
            lines.append(f"  {key:26s} {_describe(hints[f.name])}, default {getattr(instance, f.name)!r}: {f.metadata['help']}{choices}")
    return "\n".join(lines)


def valid_keys(schema: type = RunConfig) -> list[str]:
    keys = [f"{section}.{name}" for section, cls in sections(schema).items() for name in _field_types(cls)]
    return keys + list(top_level(schema))


def _unknown_key(key: str, schema: type) -> ConfigError:
    close = difflib.get_close_matches(key, valid_keys(schema), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    section = key.split(".")[0]
    if section in sections(schema):
        valid = ", ".join(f"{section}.{k}" for k in _field_types(sections(schema)[section]))
    else:
        valid = ", ".join([*(f"{s}.*" for s in sections(schema)), *top_level(schema), "sweep"])
    return ConfigError(f"unknown config key '{key}'{hint}; valid: {valid}")


def set_value(config: Any, key: str, value: Any) -> None:
    """Set the dotted ``key`` (e.g. ``train.lr``) of a run config to ``value``, checking its type."""
    schema = type(config)
    if key in top_level(schema):
        setattr(config, key, coerce(value, top_level(schema)[key], key))
        return
    section, _, name = key.partition(".")
    if section not in sections(schema) or name not in _field_types(sections(schema)[section]):
        raise _unknown_key(key, schema)
    setattr(getattr(config, section), name, coerce(value, _field_types(sections(schema)[section])[name], key))


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


def flatten_mapping(data: dict[str, Any], source: str, schema: type = RunConfig) -> dict[str, Any]:
    """``{train: {lr: 1}}`` -> ``{"train.lr": 1}``; non-mapping sections are errors."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if key in sections(schema):
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


#: keys (by suffix) that may differ between a run and its resumption, so they do not name its folder
RESUMABLE_SUFFIXES = (".epochs", ".device", ".progress", ".tensorboard", ".eval_batch_size", ".root", ".dist_timeout")
#: of those, the ones that do not change what a finished run computed (a rerun with them changed is the same run)
INCIDENTAL_SUFFIXES = tuple(s for s in RESUMABLE_SUFFIXES if s != ".epochs")


def flatten_dict(nested: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1}}`` -> ``{"train.lr": 1}`` (any depth)."""
    flat: dict[str, Any] = {}
    for key, value in nested.items():
        if isinstance(value, dict):
            flat.update(flatten_dict(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def flat_config(config: Any) -> dict[str, Any]:
    """A run config as ``{"section.key": value}`` (top-level keys as they are)."""
    return flatten_dict(config.to_dict())


def shown(value: Any) -> str:
    """A config value as it appears in folder names and tables (lists joined by ``+``)."""
    return "+".join(map(str, value)) if isinstance(value, list) else str(value)


def run_folder(config: Any, base: str | Path, sweep_keys: Sequence[str], cli_keys: Sequence[str], *, explicit_out: bool,
               from_file: bool) -> Path:
    """The folder of a run: a function of its config, so the same run always lands in the same folder.

    ``<base>/<name>/seed-<seed>``, where ``<name>`` joins, in this order: the values of the run's
    identity keys (dataset, backbone, mode) when no config file names the runs; the values of every
    key the config file's sweep varies (always, also when flags select one cell); ``key-value`` for
    every other key set on the command line. Keys that a resumed run may change (epochs, device,
    data root...) never name a folder, so an extended run is found where it was. ``--out DIR`` on the command line is the run folder itself (the sweep's values and
    seeds below it when there are several).
    """
    flat = flat_config(config)
    seeded = "train.seed" in sweep_keys
    parts = [] if from_file or explicit_out else [shown(flat[k]) for k in config.identity_keys]
    parts += [shown(flat[k]) for k in dict.fromkeys(sweep_keys)
              if k != "train.seed" and not k.endswith(RESUMABLE_SUFFIXES) and flat[k] is not None]  # None: unset
    if not explicit_out:
        named = set(sweep_keys) | (set() if from_file else set(config.identity_keys)) | {"out", "train.seed"}
        parts += [f"{k.rsplit('.', 1)[-1]}-{shown(flat[k])}" for k in dict.fromkeys(cli_keys)
                  if k not in named and not k.endswith(RESUMABLE_SUFFIXES)]
    folder = Path(base) / slug("_".join(parts)) if parts else Path(base)
    return folder / f"seed-{config.train.seed}" if seeded or not explicit_out else folder


def build_runs(config_file: str | Path | None, overrides: Sequence[tuple[str, Any] | str], schema: type = RunConfig,
               seeds: Sequence[int] | None = None) -> list[Any]:
    """The run configs of a command: defaults <- file <- sweep variant <- command-line overrides.

    ``overrides`` are ``(key, value)`` pairs or ``"key=value"`` strings as ``--set`` takes them
    (the value read as YAML): ``build_runs("configs/quickstart.yaml", ["train.epochs=2"])``.
    ``seeds`` runs every cell under each seed (a sweep axis of ``train.seed``). Every run's ``out``
    is its folder (:func:`run_folder`).
    """
    overrides = [parse_assignment(o) if isinstance(o, str) else tuple(o) for o in overrides]
    base: dict[str, Any] = {}
    sweep = Sweep()
    source = str(config_file) if config_file else "command line"
    if config_file is not None:
        data = load_yaml(config_file)
        sweep = Sweep.from_yaml(data.pop("sweep", None), source)
        base = flatten_mapping(data, source, schema)
    if seeds:
        if any(key == "train.seed" for key, _ in overrides):
            raise ConfigError("give either --seed or --seeds, not both")
        sweep.axes = [axis for axis in sweep.axes if "train.seed" not in axis] + [{"train.seed": list(seeds)}]
    sweep_keys = [key for axis in sweep.axes for key in axis]
    for key, value in overrides:
        sweep.fix(key, value)
    cli_keys = [key for key, _ in overrides]
    explicit_out = "out" in cli_keys
    default_base = Path("runs") / Path(config_file).stem if config_file else Path("runs")
    runs = []
    for variant in sweep.runs():
        config = schema()
        for key, value in itertools.chain(base.items(), variant.items(), overrides):
            set_value(config, key, value)
        config.out = str(run_folder(config, config.out or default_base, sweep_keys, cli_keys, explicit_out=explicit_out,
                                    from_file=config_file is not None))
        runs.append(config)
    return runs
