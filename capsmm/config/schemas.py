"""The run-config schemas: a vision run, and a multimodal run built from the registered modalities.

A schema is a dataclass of sections (:mod:`.sections`) plus ``out``; ``validate()`` checks what the
types alone do not (names, ranges, combinations) before any data is loaded, including the training
strategies' refusals (:func:`capsmm.strategies.check_setup`).
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..balance import refusal as balance_refusal
from ..errors import ConfigError
from ..modes import LABELLED_INPUT_MODES, PEER_MODES, ModeSchedule
from ..strategies import Setup, check_setup
from .fields import opt
from .folders import run_folder
from .modalities import MODALITY_SECTIONS
from .sections import DataConfig, HeadConfig, ModelConfig, MultimodalConfig, TrainConfig

OUT_HELP = "run folder when given on the command line; from a config file: the folder of its runs (README, Run folders)"


@dataclass
class RunConfig:
    """A vision run (``scripts/train_vision.py``)."""

    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    out: str | None = opt(OUT_HELP, None)

    #: the keys that name a run when no config file does (their values start the folder's name)
    identity_keys = ("data.name", "model.backbone", "train.mode")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> "RunConfig":
        """Check what the types alone do not (names, ranges, combinations), before any data is
        loaded; the first problem is a one-line :class:`ConfigError`. Returns ``self``."""
        self.data.validate("data")
        self.model.validate("model")
        self.train.validate("train")
        if set(ModeSchedule.parse(self.train.mode).modes) & LABELLED_INPUT_MODES and self.model.backbone != "mlp":
            raise ConfigError(f"mode ff trains the mlp backbone (the label is written over the first input values, which "
                              f"a convolution would read as image); got model.backbone={self.model.backbone}")
        check_setup(Setup.of(self.train))
        return self

    def out_dir(self) -> Path:
        """The run folder: ``out`` (set by :func:`build_runs`), else the rule of :func:`run_folder`."""
        return Path(self.out) if self.out else run_folder(self, "runs", [], [], explicit_out=False, from_file=False)


class MultimodalRun:
    """What every multimodal run config does; its sections come from :func:`multimodal_schema`
    (``scripts/train_multimodal.py``): a data and an encoder section per registered modality, the
    shared head (``model``), ``train``, ``multimodal`` and ``out``."""

    model: HeadConfig
    train: TrainConfig
    multimodal: MultimodalConfig
    out: str | None

    identity_keys = ("multimodal.modalities", "multimodal.fusion", "train.mode")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    def validate(self) -> "MultimodalRun":
        """As :meth:`RunConfig.validate`, for every modality of the run and the fusion's combinations."""
        mm = self.multimodal
        mm.validate("multimodal")
        self.train.validate("train")
        self.model.validate("model")
        for modality in mm.modalities:
            getattr(self, modality).validate(modality)
            getattr(self, f"{modality}_model").validate(f"{modality}_model", modality)
        if mm.anchor not in mm.modalities:
            raise ConfigError(f"multimodal.anchor '{mm.anchor}' is not one of multimodal.modalities {mm.modalities}")
        modes = set(ModeSchedule.parse(self.train.mode).modes)
        if mm.fusion == "concat-bp" and modes != {"bp"}:
            raise ConfigError(f"fusion concat-bp is end-to-end bp: set --mode bp (got '{self.train.mode}')")
        if mm.extend_from and mm.fusion != "joint":
            raise ConfigError("multimodal.extend_from adds modalities to a joint model: set multimodal.fusion=joint")
        if modes & LABELLED_INPUT_MODES:
            raise ConfigError("mode ff trains single-encoder mlp models: use scripts/train_vision.py")
        peers = sorted(modes & PEER_MODES)
        if peers and (len(mm.modalities) > 1 and mm.fusion != "late" or mm.extend_from):
            raise ConfigError(f"mode {peers[0]} (a layer-local peer) trains single-encoder models: use --fusion late, one modality, "
                              "or scripts/train_vision.py")
        mm.resolve_slice_loss_weight(sorted(modes))
        balancing = balance_refusal(mm.balance(), fusion=mm.fusion, modalities=mm.modalities, modes=sorted(modes))
        if balancing:
            raise ConfigError(balancing)
        check_setup(Setup.of(self.train, encoders=len(mm.modalities), frozen=bool(mm.extend_from), fusion=mm.fusion))
        return self

    def out_dir(self) -> Path:
        """The run folder: ``out`` (set by :func:`build_runs`), else the rule of :func:`run_folder`."""
        return Path(self.out) if self.out else run_folder(self, "runs", [], [], explicit_out=False, from_file=False)


def multimodal_schema() -> type:
    """The multimodal run-config class for the modalities registered now (the plugins are loaded first)."""
    return _schema_for(tuple(MODALITY_SECTIONS.names()))


@functools.cache
def _schema_for(names: tuple[str, ...]) -> type:
    fields: list[tuple[str, Any, Any]] = []
    for name in names:
        sections = MODALITY_SECTIONS.get(name)
        fields += [(name, sections.data, dataclasses.field(default_factory=sections.new_data)),
                   (f"{name}_model", sections.encoder, dataclasses.field(default_factory=sections.new_encoder))]
    fields += [("model", HeadConfig, dataclasses.field(default_factory=HeadConfig)),
               ("train", TrainConfig, dataclasses.field(default_factory=TrainConfig)),
               ("multimodal", MultimodalConfig, dataclasses.field(default_factory=MultimodalConfig)),
               ("out", str | None, opt(OUT_HELP, None))]
    return dataclasses.make_dataclass("MultimodalRunConfig", fields, bases=(MultimodalRun,), namespace={"__module__": "capsmm.config"})
