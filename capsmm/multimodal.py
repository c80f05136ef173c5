"""Multimodal CAP models: independent encoders, one shared prototype space, and the baselines.

- ``joint``: one :class:`~capsmm.model.CAPModel` over every modality; each modality owns its slice
  of every prototype; a missing modality drops its slice.
- ``late``: :class:`LateFusion` of independent single-modality models (mean class probability).
- ``concat-bp``: joint end-to-end bp, the last blocks' vectors concatenated and scored by a linear
  (template) head.

Plus per-modality evaluation, cross-modal retrieval and adding a modality to a trained model.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .balance import BalanceSettings, attach_balance
from .checkpoint import atomic_write_json, load_checkpoint
from .corruption import corrupted_splits
from .data import BatchLoader, ModalSplit
from .distributed import DistContext
from .encoder import build_encoder
from .evaluation import predictions
from .errors import CheckpointError, ConfigError
from .gate import calibrate_gate
from .model import CAPModel, CAPOutput
from .modes import ModeSchedule
from .retrieval import class_profile, retrieval_metrics
from .strategies import build_strategy
from .streams import Purpose, stream
from .trainer import CHECKPOINT, RESULTS, Trainer


@dataclass
class EncoderSpec:
    """What to build for one modality: a registered backbone, its options and the input shape."""

    backbone: str
    in_shape: tuple[int, ...]
    options: dict[str, Any]

    def build(self) -> nn.Module:
        return build_encoder(self.backbone, in_shape=self.in_shape, **self.options)


class LateFusion(nn.Module):
    """Independent single-modality CAP models; the prediction averages their class probabilities.

    Training sums the models' own losses (``block_logits``), which trains each one alone: they
    share no parameter and Adam's update is per parameter.
    """

    def __init__(self, models: Mapping[str, CAPModel]) -> None:
        super().__init__()
        self.models = nn.ModuleDict({name: models[name] for name in sorted(models)})

    @property
    def mode(self) -> str:
        return next(iter(self.models.values())).mode

    def set_mode(self, mode: str) -> None:
        for model in self.models.values():
            model.set_mode(mode)

    def set_precision(self, amp: str) -> None:
        for model in self.models.values():
            model.set_precision(amp)

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.models)

    @property
    def encoders(self) -> nn.ModuleDict:
        return nn.ModuleDict({name: model.encoders[name] for name, model in self.models.items()})

    def forward(self, inputs: Mapping[str, Tensor], labels: Tensor | None = None) -> CAPOutput:
        """``labels`` go to every model (as :meth:`CAPModel.forward` reads them)."""
        outputs = [self.models[name]({name: x}, labels) for name, x in inputs.items()]
        probabilities = torch.stack([out.logits.softmax(dim=1) for out in outputs]).mean(0)
        losses = [logits for out in outputs for logits in (out.block_logits or [out.logits])]
        return CAPOutput(probabilities.clamp_min(1e-12).log(), [p for out in outputs for p in out.patterns], losses)


def build_fusion_model(fusion: str, specs: Mapping[str, EncoderSpec], *, num_classes: int, mode: str,
                       head_options: dict[str, Any]) -> nn.Module:
    """The model of a fusion strategy over the modalities of ``specs`` (see the module docstring)."""
    first_mode = ModeSchedule.parse(mode).first

    def joint(names: Sequence[str], **overrides: Any) -> CAPModel:
        options = head_options | overrides
        return CAPModel({n: specs[n].build() for n in names}, {n: specs[n].in_shape for n in names},
                        num_classes=num_classes, mode=overrides.get("mode", first_mode), **{k: v for k, v in options.items() if k != "mode"})

    if fusion == "joint":
        return joint(list(specs))
    if fusion == "late":
        return LateFusion({name: joint([name]) for name in specs})
    if fusion == "concat-bp":
        return joint(list(specs), mode="bp", head="template")
    raise ConfigError(f"unknown fusion '{fusion}'; valid: joint, late, concat-bp")


def modality_subsets(modalities: Sequence[str]) -> list[tuple[str, ...]]:
    """Every non-empty subset, singletons first: ('audio',), ('image',), ('audio', 'image')."""
    return [combo for size in range(1, len(modalities) + 1) for combo in itertools.combinations(sorted(modalities), size)]


def collect_logits(model: nn.Module, loader: BatchLoader, subsets: Sequence[tuple[str, ...]]) -> tuple[dict[tuple[str, ...], Tensor], Tensor]:
    """Logits of every modality subset over a (paired) test loader, and the labels."""
    def every_subset(inputs: Mapping[str, Tensor]) -> dict[tuple[str, ...], Tensor]:
        return {subset: model({name: inputs[name] for name in subset}).logits.float() for subset in subsets}

    batches = list(predictions(every_subset, model, loader))
    return {subset: torch.cat([logits[subset] for logits, _ in batches]) for subset in subsets}, torch.cat([y for _, y in batches])


def subset_name(subset: Sequence[str]) -> str:
    return "+".join(subset)


def evaluate_modalities(model: nn.Module, loader: BatchLoader, modalities: Sequence[str]) -> dict[str, Any]:
    """One pass over the test pairs: the error of every non-empty modality subset
    (``test_error_by_modality``: 'image', 'audio', 'audio+image', the missing-modality cases) and,
    with two or more modalities, cross-modal ``retrieval``: for every ordered pair ``a->b``, each
    test item of modality a queries the items of modality b through their class-probability
    profiles (recall@1, mAP)."""
    logits, labels = collect_logits(model, loader, modality_subsets(modalities))
    result: dict[str, Any] = {"test_error_by_modality": {
        subset_name(subset): (values.argmax(1) != labels).float().mean().item() for subset, values in logits.items()}}
    if len(modalities) > 1:
        profiles = {m: class_profile(logits[(m,)]) for m in modalities}
        result["retrieval"] = {f"{a}->{b}": retrieval_metrics(profiles[a], labels, profiles[b], labels)
                               for a, b in itertools.permutations(sorted(modalities), 2)}
    return result


def evaluate_under_shift(model: nn.Module, loader: BatchLoader, modalities: Sequence[str],
                         corrupted: Mapping[str, BatchLoader]) -> dict[str, Any]:
    """The joint error with one modality corrupted (``corrupted_error``: ``audio=noise``: 0.12;
    ``corrupted`` from :func:`capsmm.corruption.corrupted_splits`) and, for a gated joint model, its
    joint errors without the gates (``ungated_error``: ``clean`` and each corruption). A pass over
    the test pairs per figure: the trainer computes them for the trained model, after the last epoch."""
    everything = tuple(sorted(modalities))

    def joint_errors(variants: Mapping[str, BatchLoader]) -> dict[str, float]:
        errors = {}
        for name, variant_loader in variants.items():
            joint, variant_labels = collect_logits(model, variant_loader, [everything])
            errors[name] = (joint[everything].argmax(1) != variant_labels).float().mean().item()
        return errors

    result = {"corrupted_error": joint_errors(corrupted)}
    if getattr(model, "gated", False):  # the same joint figures without the gates, for comparison
        model.gated = False
        try:
            result["ungated_error"] = joint_errors({"clean": loader, **corrupted})
        finally:
            model.gated = True
    return result


class ModalityDropout:
    """A training loader wrapper: with probability ``p`` a batch keeps one random modality only.

    Joint training otherwise lets the easier modality carry the class decision, so the other's
    slice is trained less for use on its own; showing single modalities now and then trains each
    slice for the missing-modality case too. Deterministic in (seed, epoch).
    """

    def __init__(self, loader: BatchLoader, p: float, seed: int) -> None:
        self.loader, self.p, self.seed = loader, p, seed

    def __len__(self) -> int:
        return len(self.loader)

    def epoch(self, epoch: int = 0):
        generator = stream(self.seed, Purpose.MODALITY_DROPOUT, epoch)
        for inputs, labels in self.loader.epoch(epoch):
            if torch.rand((), generator=generator).item() < self.p:
                names = sorted(inputs)
                keep = names[int(torch.randint(len(names), (), generator=generator))]
                inputs = {keep: inputs[keep]}
            yield inputs, labels

    def __iter__(self):
        return self.epoch(0)


def multimodal_loaders(train: Mapping[str, ModalSplit], test: Mapping[str, ModalSplit], *, batch_size: int, eval_batch_size: int,
                       device: torch.device, seed: int, anchor: str, pairing: str = "class",
                       modality_dropout: float = 0.0, shard: tuple[int, int] = (0, 1)) -> tuple[Any, BatchLoader]:
    """Paired training (re-paired every epoch) and test (fixed pairs) loaders; ``shard`` = (rank, ranks)
    of a data-parallel run (every rank draws the same pairs and reads its share of each batch)."""
    row = pairing == "row"
    train_loader: Any = BatchLoader(train, batch_size, device=device, shuffle=True, seed=seed, anchor=anchor, repair=not row,
                                    row_pairing=row, shard=shard)
    test_loader = BatchLoader(test, eval_batch_size, device=device, seed=seed, anchor=anchor, row_pairing=row, shard=shard)
    if modality_dropout > 0:
        train_loader = ModalityDropout(train_loader, modality_dropout, seed)
    return train_loader, test_loader


def fit_multimodal(model: nn.Module, train: Mapping[str, ModalSplit], test: Mapping[str, ModalSplit], train_config: Any,
                   out_dir: Path, *, run_config: dict[str, Any], summary: dict[str, Any], anchor: str, pairing: str = "class",
                   modality_dropout: float = 0.0, device: torch.device | None = None, resume: bool = False, force: bool = False,
                   extra_results: Callable[[nn.Module], dict[str, Any]] | None = None,
                   log: Callable[[str], None] = print, dist: DistContext = DistContext(), gate: bool = True,
                   balance: BalanceSettings = BalanceSettings()) -> dict[str, Any]:
    """Train a multimodal model on paired splits and record per-modality errors and retrieval.

    ``train``/``test`` map modality -> :class:`~capsmm.data.ModalSplit`; the test pairs are fixed.
    Each epoch's metrics gain ``test_error_by_modality`` and ``retrieval``; the last epoch's also
    ``corrupted_error`` (and ``ungated_error``); so do the results. With ``gate`` a joint CAP model predicts with the gated joint score
    (:mod:`capsmm.gate`), its thresholds calibrated on the clean training pairs after every epoch.
    ``balance`` turns on slice losses or gradient modulation (:mod:`capsmm.balance`); each epoch's
    metrics then gain ``modality_balance``.
    Under torchrun (``dist``) the strategy of ``train.parallel`` shares the work; rank 0 writes.
    """
    device = device or torch.device("cpu")
    strategy = build_strategy(model, train_config, device, dist)
    balancer = attach_balance(strategy, balance, train_config.seed)
    modalities = sorted(test)
    options = dict(batch_size=train_config.batch_size, eval_batch_size=train_config.eval_batch_size, device=device,
                   seed=train_config.seed, anchor=anchor, pairing=pairing)
    train_loader, test_loader = multimodal_loaders(train, test, modality_dropout=modality_dropout, shard=strategy.batch_shard, **options)
    pairs = lambda parts: multimodal_loaders(parts, parts, **options)[1]  # noqa: E731 - fixed pairs, unsharded
    whole_test = pairs(test)  # the evaluators read every test pair on rank 0
    evaluators = [lambda m: evaluate_modalities(m, whole_test, modalities)]
    final_evaluators = []
    if len(modalities) > 1:
        corrupted = {name: pairs(parts) for name, parts in corrupted_splits(test, train_config.seed).items()}
        final_evaluators.append(lambda m: evaluate_under_shift(m, whole_test, modalities, corrupted))
    if balancer is not None:
        evaluators.append(lambda m: balancer.epoch_figures())
    before_evaluation = []
    if isinstance(model, CAPModel) and model.gate is not None and gate:
        model.gated = True
        clean_train = pairs({name: ModalSplit(split.inputs, split.labels, split.prepare) for name, split in train.items()})
        before_evaluation.append(lambda m: calibrate_gate(m, clean_train))
    diagnostics = None
    if isinstance(model, CAPModel):
        samples = lambda split: split.sample(train_config.diagnostics_samples, stream(train_config.seed, Purpose.DIAGNOSTICS))  # noqa: E731
        diagnostic_loader = BatchLoader({n: samples(s) for n, s in test.items()},  # the same draw for every modality: row pairs stay pairs
                                        train_config.diagnostics_samples, device=device, seed=train_config.seed,
                                        anchor=anchor, row_pairing=pairing == "row")
        diagnostics = next(iter(diagnostic_loader))
    trainer = Trainer(strategy, train_loader, test_loader, out_dir, run_config=run_config, summary=summary,
                      evaluators=evaluators, final_evaluators=final_evaluators, before_epoch=[balancer.start_epoch] if balancer is not None else [],
                      before_evaluation=before_evaluation, diagnostics_batch=diagnostics, log=log)
    results = trainer.fit(resume=resume, force=force)
    if extra_results is not None and "frozen_predictions_unchanged" not in results:
        results.update(extra_results(trainer.model))
        if dist.is_main:
            atomic_write_json(Path(out_dir) / RESULTS, results)
    return results


def load_trained_model(run_dir: Path, build: Callable[[dict[str, Any]], CAPModel]) -> tuple[CAPModel, dict[str, Any]]:
    """A finished run's model (built by ``build`` from the run's saved config) with its trained weights."""
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        raise CheckpointError(f"{run_dir} holds no {CHECKPOINT}; extend_from needs the folder of a finished run")
    state = load_checkpoint(path)
    model = build(state["config"])
    model.load_state_dict(state["model"])
    return model, state["config"]
