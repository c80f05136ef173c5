"""The sections of a run config: data, encoder, head, training and multimodal settings.

Each section is a dataclass whose fields carry their help text and checks (:mod:`.fields`). The
choices a field accepts are imported from the module that implements them (``READOUT_NORMS`` from
:mod:`capsmm.readout`, the registries of encoders, data sets and strategies...), so a new choice is
added in one place. A modality's own sections (its data and encoder keys) are registered by its
package (:mod:`.modalities`); the core sections here name no modality.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..balance import MODULATIONS, BalanceSettings, auto_slice_loss_weight
from ..data import DATASETS
from ..encoder import ENCODERS, encoder_modality, encoder_options
from ..errors import ConfigError
from ..ff import FF_DEFAULTS, GOODNESS, PREDICTORS
from ..layers import ACTIVATIONS
from ..model import AMP_CHOICES
from ..modes import ModeSchedule
from ..prototypes import HEADS
from ..readout import READOUT_NORMS
from ..strategies import ADAM_IMPLS, MEMORY, OPTIMIZERS, PARALLEL
from .fields import at_least, check_fields, epoch_range, in_range, increasing_epochs, non_negative, one_of, opt
from .modalities import MODALITY_SECTIONS


@dataclass
class DataConfig:
    name: str = opt('data set: digits (offline, bundled with scikit-learn), mnist, fashion-mnist, kmnist, cifar10, cifar100, '
                    'imagefolder, hf-disk', "digits", check=one_of(DATASETS.names))
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
class EncoderConfig:
    backbone: str = opt('a registered encoder of the modality: image mlp, vgg6, vgg8, vgg11, vgg16, vgg19, vgg8b, vgg11b, '
                        'resnet20, resnet32, resnet56, resnet110, resnet18, vit-tiny; audio audio-cnn, audio-resnet', "mlp",
                        check=one_of(ENCODERS.names))
    width_mult: float = opt("channel / unit multiplier (the paper's 1x, 2x, 4x)", 1.0, check=in_range(1e-3, 64, open_high=False))
    depth: int | None = opt('mlp: hidden layers (default 3); vit-tiny: transformer layers (default 12)', None,
                            check=in_range(1, 1000, open_high=False))
    patch: int | None = opt('vit-tiny: patch side in pixels (default 4)', None, check=in_range(1, 1024, open_high=False))
    hidden: int | None = opt('mlp only: units per hidden layer before width_mult (default 3000)', None, check=in_range(1, 10**6, open_high=False))
    dropout: float = opt('dropout at the end of every block', 0.2, check=in_range(0, 1))
    activation: str | None = opt('mlp and vgg backbones: relu (default), leakyrelu (slope 0.01, local-loss\'s), or relu-full-grad '
                                 '(mlp: ReLU whose backward passes every gradient, the Forward-Forward reference\'s)', None,
                                 check=one_of(ACTIVATIONS))
    block_batchnorm: bool | None = opt('mlp only: batch norm after each linear layer (local-loss\'s MLP; default off, as in the paper)', None)
    source: str | None = opt('hf-* backbones: local directory of a transformers model (save_pretrained)', None)

    def encoder_options(self) -> dict[str, Any]:
        """Options for the backbone builder. Unset options (None) are left to the builder's defaults,
        and so are ``width_mult`` and ``dropout`` at their defaults when the builder has no such
        option (a transformers model); set to anything else, the builder must take them."""
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
        check_fields(self, prefix)
        found = encoder_modality(self.backbone)
        if found != modality:
            raise ConfigError(f"{prefix}.backbone '{self.backbone}' encodes {found}, not {modality}")
        taken = encoder_options(self.backbone)
        for key in sorted(set(self.encoder_options()) - set(taken)):
            raise ConfigError(f"{prefix}.{key} does not apply to backbone '{self.backbone}' (it takes: {', '.join(taken) or 'none'})")


@dataclass
class HeadConfig:
    pattern_width: int = opt("width of each block's CAP vector after pooling", 1024, check=in_range(1, 2**20, open_high=False))
    readout_norm: str = opt('normalisation of each CAP vector: batchnorm, layernorm, none', "batchnorm",
                            check=one_of(READOUT_NORMS))
    head: str = opt('class prototype scores: cosine (eq. 7, with temperature) or template (Algorithm 1)', "cosine",
                    check=one_of(HEADS))
    temperature: float = opt('tau of the cosine head', 0.1, check=in_range(1e-4, 1e4, open_high=False))
    dim_in_decoder: int = opt('local-pred, local-predsim: a block\'s output is average-pooled to at most this many features for its decoder', 4096,
                              check=in_range(1, 2**24, open_high=False))
    beta: float = opt('local-predsim: weight of the sim loss (1 - beta weighs pred and the output layer)', 0.99, check=in_range(0, 1, open_high=False))
    aux_convs: int = opt('dgl: 1x1 conv layers of each auxiliary network', 3, check=in_range(0, 16, open_high=False))
    aux_mlp_layers: int = opt('dgl: hidden linear layers of each auxiliary network', 3, check=in_range(0, 16, open_high=False))
    aux_width: int = opt('dgl: widest hidden layer of an auxiliary network', 1024, check=in_range(1, 2**16, open_high=False))
    ff_goodness: str = opt('ff: goodness of a layer, the sum (threshold: its width) or mean (threshold 1) of its squared activities',
                           FF_DEFAULTS["goodness"], check=one_of(GOODNESS))
    ff_peer_norm: float = opt('ff: weight of the peer-normalisation loss (0 = off)', FF_DEFAULTS["peer_norm"], check=in_range(0, 100))
    ff_peer_momentum: float = opt('ff: momentum of the running mean activities that peer normalisation reads', FF_DEFAULTS["peer_momentum"],
                                  check=in_range(0, 1))
    ff_predictor: str = opt('ff: the prediction (test_error): linear (a classifier on layers 2..L) or goodness (C passes); both are recorded',
                            FF_DEFAULTS["predictor"], check=one_of(PREDICTORS))
    ff_classifier_lr: float = opt('ff: learning rate of the linear classifier', FF_DEFAULTS["classifier_lr"], check=in_range(0, 10))
    ff_classifier_weight_decay: float = opt('ff: weight decay of the linear classifier', FF_DEFAULTS["classifier_weight_decay"],
                                            check=in_range(0, 10))

    def head_options(self) -> dict[str, Any]:
        """What the model's readouts and head take (CAP readouts and prototypes, or a peer's heads)."""
        peer = {"dim_in_decoder": self.dim_in_decoder, "beta": self.beta, "aux_convs": self.aux_convs,
                "aux_mlp_layers": self.aux_mlp_layers, "aux_width": self.aux_width}
        ff = {key: getattr(self, f"ff_{key}") for key in FF_DEFAULTS}
        return {"pattern_width": self.pattern_width, "readout_norm": self.readout_norm, "head": self.head, "temperature": self.temperature,
                "peer_options": peer, "ff_options": ff}

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


def _segments_check(key: str, value: Any) -> str | None:
    ok = value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 2**20)
    return None if ok else f"{key} must be an integer in [1, 1048576] or 'auto', got {value!r}"


def _slice_weight_check(key: str, value: Any) -> str | None:
    ok = value == "auto" or (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 100)
    return None if ok else f"{key} must be a number in [0, 100] or 'auto', got {value!r}"


@dataclass
class TrainConfig:
    mode: str = opt('bp, caps, caps-full, local, the layer-local peers local-pred, local-sim, local-predsim, dgl, Forward-Forward ff, or a schedule '
                    'such as caps:0.9,caps-full', "caps", check=_mode_check)
    epochs: int = opt('number of epochs', 10, check=in_range(1, 10**6, open_high=False))
    batch_size: int = opt('training batch size (the global batch under torchrun; at least 2: batch statistics need two samples)', 128,
                          check=in_range(2, 2**24, open_high=False))
    optimizer: str = opt('adam, or sgd (with momentum; the Forward-Forward reference\'s)', "adam", check=one_of(OPTIMIZERS))
    lr: float = opt('learning rate', 5e-4, check=in_range(1e-12, 10, open_high=False))
    weight_decay: float = opt('weight decay (L2, added to the gradient)', 0.0, check=in_range(0, 10, open_high=False))
    momentum: float = opt('optimizer=sgd: momentum', 0.9, check=in_range(0, 1))
    lr_milestones: list[int] = opt('epochs at which the learning rate is multiplied by lr_gamma (MultiStepLR)', factory=list,
                                   check=increasing_epochs)
    lr_gamma: float = opt('learning-rate factor at each milestone', 0.1, check=in_range(1e-6, 1, open_high=False))
    lr_cooldown: bool = opt('linear cool-down of the learning rate over the second half of the epochs (the Forward-Forward reference\'s)', False)
    seed: int = opt('seed of initialisation, batch order, pairing, dropout and augmentation', 0, check=in_range(0, 2**32))
    device: str = opt('auto (CUDA when available), cpu, cuda, cuda:N', "auto", check=_device_check)
    memory: str = opt('standard, or lean: exact caps/local gradients recomputing one block at a time (less memory)', "standard",
                      check=one_of(MEMORY.names))
    lean_keep: int = opt('with memory=lean: the last N blocks of each encoder keep their graphs instead of being recomputed (faster, a little more memory)', 0,
                         check=non_negative)
    lean_segments: int | str = opt('with memory=lean: recompute the largest block over N micro-batches, and any block that would exceed '
                                   'that share (same gradients, less memory, more passes); auto: split only blocks that would set the '
                                   'peak, as far as the rest of a step needs anyway (measured per block)', 1, check=_segments_check)
    adam_impl: str = opt('Adam kernel: auto (fused on CPU and CUDA, the fastest measured), foreach, fused, for-loop', "auto",
                         check=one_of(ADAM_IMPLS))
    channels_last: bool = opt('channels-last memory format for conv backbones', False)
    compile: bool = opt('torch.compile the model (standard memory only)', False)
    amp: str = opt('autocast dtype of blocks, readouts and head: none, bf16, or auto (bf16 where the device computes it natively: '
                   'a CPU with AVX512-BF16 or AMX, a CUDA GPU with bf16; else none). Default auto: on such a CPU bf16 trained the MLP '
                   'and the narrow VGG8b in 0.66-0.75x the time per epoch at the same test error (docs/performance.md)', "auto",
                   check=one_of(AMP_CHOICES))
    eval_batch_size: int = opt('batch size for evaluation', 1000, check=in_range(1, 2**24, open_high=False))
    diagnostics_every: int = opt('every N epochs (and at the last), write diagnostics (orthogonality, sparsity, gradient cosine, scale, per-block accuracy) to metrics.jsonl; 0 = off', 0,
                                 check=non_negative)
    diagnostics_samples: int = opt('size of the fixed test batch the diagnostics read (N test samples, stratified by class)', 512,
                                   check=in_range(2, 2**20, open_high=False))
    progress: bool = opt('show a tqdm progress bar per epoch (its loss: the running mean over the epoch)', True)
    tensorboard: bool = opt('also write TensorBoard event files to <run>/tensorboard (pip install capsmm[tensorboard]); metrics.jsonl stays the record', False)
    parallel: str = opt('under torchrun: data (each rank a share of every batch) or blocks (each rank a run of blocks: '
                        'block-parallel for caps/local, a pipeline for bp)', "data", check=one_of(PARALLEL.names))
    micro_batches: int = opt('parallel=blocks: micro-batches per batch, so that the ranks work at the same time '
                             '(batch norm then sees micro-batch statistics)', 1, check=in_range(1, 2**20, open_high=False))
    sync_batchnorm: bool = opt('parallel=data on CUDA: batch statistics over the global batch (SyncBatchNorm)', False)
    dist_timeout: float = opt('under torchrun: seconds a rank waits for the others before failing', 300.0, check=in_range(1, 86_400, open_high=False))

    def validate(self, prefix: str = "train") -> None:
        check_fields(self, prefix)
        if self.lean_segments != 1 and self.memory != "lean":
            raise ConfigError(f"{prefix}.lean_segments applies to {prefix}.memory=lean (it is {self.memory!r})")


FUSIONS = ("joint", "late", "concat-bp")


@dataclass
class MultimodalConfig:
    fusion: str = opt("joint: one prototype space over every modality's CAP blocks; late: independent single-modality models, "
                      "mean of their class probabilities; concat-bp: end-to-end bp, last blocks concatenated, linear head", "joint",
                      check=one_of(FUSIONS))
    modalities: list[str] = opt("modalities to train on (one of them alone = a single-modality baseline); default: every registered "
                                "modality (capsmm's own: audio, image)", factory=lambda: MODALITY_SECTIONS.names())
    anchor: str = opt("the modality whose training samples make an epoch; the others are paired to them by class "
                      "(default: the first registered modality in alphabetical order, audio)", factory=lambda: MODALITY_SECTIONS.names()[0])
    pairing: str = opt("class: a random same-class partner (redrawn each training epoch, fixed for test); row: sample i with sample i", "class",
                       check=one_of(("class", "row")))
    modality_dropout: float = opt("probability that a training batch shows one randomly chosen modality only (joint fusion)", 0.0,
                                  check=in_range(0, 1))
    slice_loss_weight: float | str = opt("joint or concat-bp: weight of each modality's slice loss (its cross-entropy scored on its own "
                                         "prototype slices alone) added to the joint loss; 0 = off. Default auto: 1 where it applies (fusion "
                                         "joint or concat-bp, two or more modalities, mode caps, caps-full or bp, no other balancing method (modulation, "
                                         "modality_dropout), not extend_from), else 0: the best method of docs/multimodal.md's balance study",
                                         "auto", check=_slice_weight_check)
    modulation: str = opt("joint or concat-bp: on-the-fly gradient modulation (Peng et al. 2022): ogm scales the leading modality's encoder "
                          "gradients down by its lead in true-class probability; ogm-ge also adds Gaussian noise; none = off", "none",
                          check=one_of(MODULATIONS))
    modulation_alpha: float = opt("ogm, ogm-ge: how strongly a lead slows the leading modality: its gradients times 1 - tanh(alpha * max(ratio - 1, 0)), "
                                  "ratio = its true-class probability over the others' mean", 0.8,
                                  check=in_range(1e-6, 100, open_high=False))
    modulation_epochs: list[int] = opt("ogm, ogm-ge: [first, last] epoch of the modulation (1-based, inclusive)", factory=lambda: [1, 50],
                                       check=epoch_range)
    gate: bool = opt("joint fusion: each modality's weight in the joint score follows how typical its pattern is (docs/multimodal.md)", True)
    extend_from: str | None = opt("run folder of a trained joint model: freeze it and train only the modalities it lacks", None)

    def resolve_slice_loss_weight(self, modes: Sequence[str]) -> None:
        """Replace ``slice_loss_weight=auto`` by the number it means for this run's fusion, modalities and
        ``modes`` (:func:`capsmm.balance.auto_slice_loss_weight`), so that the config a run saves holds
        the weight it trained with, whatever a later release's ``auto`` means."""
        if self.slice_loss_weight == "auto":
            self.slice_loss_weight = auto_slice_loss_weight(
                fusion=self.fusion, modalities=self.modalities, modes=modes, extending=bool(self.extend_from),
                other_method=self.modulation != "none" or self.modality_dropout > 0)

    def balance(self) -> BalanceSettings:
        """The balancing settings these keys make (:mod:`capsmm.balance`); ``slice_loss_weight`` resolved first."""
        if self.slice_loss_weight == "auto":
            raise ValueError("multimodal.slice_loss_weight is still 'auto': validate the run config first")
        return BalanceSettings(float(self.slice_loss_weight), self.modulation, self.modulation_alpha, tuple(self.modulation_epochs))

    def validate(self, prefix: str) -> None:
        check_fields(self, prefix)
        if not self.modalities or len(set(self.modalities)) != len(self.modalities):
            raise ConfigError(f"{prefix}.modalities must name distinct modalities, got {self.modalities}")
        for modality in self.modalities:
            MODALITY_SECTIONS.get(modality)  # an unknown modality: one line naming the registered ones


