"""A trained model under shift: its test set (or another set of the same classes), calibration,
common corruptions, white-box attacks and out-of-distribution detection, as one dict of figures
(``scripts/evaluate.py`` writes it to ``RUN_DIR/evaluation/<name>.json``).

Every pass over the data goes through the one evaluation loop (:func:`capsmm.evaluation.predictions`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..data import BatchLoader, ModalSplit, load_dataset
from ..errors import DataError
from ..inference import TrainedModel
from .attacks import PGD_STEPS, attack
from .calibration import calibration
from .corruptions import corrupt, corruption_summary
from .loop import error_counts, predictions
from .ood import detection, ood_scores

BATCH = 256


@dataclass
class EvalSet:
    """Samples in stored form, one tensor per modality (row i of each is one paired sample), and labels
    as class indices of the model (-1 where the set has no labels the model knows: an OOD set)."""

    name: str
    inputs: dict[str, Tensor]
    labels: Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def replaced(self, modality: str, inputs: Tensor) -> EvalSet:
        return dataclasses.replace(self, inputs={**self.inputs, modality: inputs})

    def batches(self, size: int, device: torch.device) -> Iterator[tuple[dict[str, Tensor], Tensor]]:
        for start in range(0, len(self), size):
            yield {m: x[start:start + size] for m, x in self.inputs.items()}, self.labels[start:start + size].to(device)


def class_map(model_classes: Sequence[str], set_classes: Sequence[str], where: str) -> Tensor:
    """Index of every class of a data set among the model's classes, matched by name."""
    index = {name: i for i, name in enumerate(model_classes)}
    missing = [name for name in set_classes if name not in index]
    if missing:
        raise DataError(f"class '{missing[0]}' of {where} is not a class of the model ({', '.join(model_classes)}); evaluate on a set "
                        "of the same classes, or give it as --ood-dataset")
    return torch.tensor([index[name] for name in set_classes], dtype=torch.long)


def load_eval_set(trained: TrainedModel, datasets: Mapping[str, str] | None = None, roots: Mapping[str, str] | None = None,
                  test_subset: int | None = None, ood: bool = False) -> EvalSet:
    """The test split of the run's own data sets, or of ``datasets`` (modality -> data-set name, any
    set its training script accepts) under ``roots``, brought to the run's input pipeline; its
    classes matched to the model's by name (``ood``: not matched). Several modalities are paired
    by class (fixed pairs, as the run's test pairs), or row by row for an OOD set."""
    datasets, roots = dict(datasets or {}), dict(roots or {})
    splits, names = {}, []
    for modality in trained.modalities:
        section = trained.config.data if trained.kind != "multimodal" else getattr(trained.config, modality)
        changes: dict[str, Any] = {"test_subset": test_subset, "train_subset": 1}
        if modality in datasets:
            changes |= {"name": datasets[modality], "path": None}
        if modality in roots:
            changes["root"] = roots[modality]
        if hasattr(section, "image_size"):
            changes["image_size"] = trained.pipelines[modality]["in_shape"][-1]
        section = dataclasses.replace(section, **changes)
        data = load_dataset(modality, section, seed=0)  # one test subset for every run, so that runs pair
        test = data.modal_splits(section)[1]
        inputs = trained.input_kind(modality).conform(test.inputs, trained.pipelines[modality])
        labels = torch.full_like(test.labels, -1) if ood else class_map(trained.classes, data.classes, f"{modality} set '{section.name}'")[test.labels]
        splits[modality] = ModalSplit(inputs, labels, prepare=lambda x: x)
        names.append(section.name)
    anchor = getattr(getattr(trained.config, "multimodal", None), "anchor", None)
    anchor = anchor if anchor in splits else None
    if ood and len(splits) > 1:
        n = min(len(s) for s in splits.values())
        splits = {m: ModalSplit(s.inputs[:n], s.labels[:n], s.prepare) for m, s in splits.items()}
    loader = BatchLoader(splits, max(len(s) for s in splits.values()), anchor=anchor, row_pairing=ood and len(splits) > 1,
                         seed=getattr(trained.config.train, "seed", 0))
    inputs, labels = next(iter(loader))
    inputs = inputs if isinstance(inputs, dict) else {trained.modalities[0]: inputs}
    return EvalSet("+".join(names), inputs, labels)


def _outputs(trained: TrainedModel, data: EvalSet, batch: int, adversary: Any = None, scores: bool = True) -> dict[str, Tensor]:
    """Logits and labels over ``data``, with ``scores`` also the CAP similarity and typicality
    (``adversary``: stored batch, labels -> attacked stored batch, applied first)."""

    def summary(item: tuple[dict[str, Tensor], Tensor]) -> dict[str, Tensor]:
        stored, labels = item
        if adversary is not None:
            stored = adversary(stored, labels)
        output = trained.output(stored)
        found = {"logits": output.logits.float()}
        if not scores:  # an error rate (corruptions, attacks) needs the logits alone
            return found
        similarity = trained.similarity(output, sorted(stored))
        if similarity is not None:
            found["similarity"] = similarity
        if output.typicality is not None:
            found |= {f"typicality.{m}": t for m, t in zip(output.modalities, output.typicality.float())}
        return found

    pairs = list(predictions(summary, trained.model, ((item, item[1]) for item in data.batches(batch, trained.device))))
    if not pairs:
        raise DataError(f"the evaluation set '{data.name}' is empty")
    merged = {key: torch.cat([found[key] for found, _ in pairs]) for key in pairs[0][0]}
    merged["labels"] = torch.cat([labels for _, labels in pairs])
    return merged


def _error_rate(outputs: Mapping[str, Tensor]) -> float:
    wrong, seen = error_counts([(outputs["logits"], outputs["labels"])]).tolist()
    return wrong / seen


def _error(trained: TrainedModel, data: EvalSet, batch: int, adversary: Any = None) -> float:
    return _error_rate(_outputs(trained, data, batch, adversary, scores=False))


def adversarial_errors(trained: TrainedModel, data: EvalSet, name: str, eps: Sequence[float], *, modality: str | None = None,
                       steps: int = PGD_STEPS, batch: int = BATCH) -> dict[str, float]:
    """The error under attack ``name`` at every ``eps`` (in the input's natural units: [0, 1] pixels),
    perturbing ``modality`` (default: the image if the model reads one) with the others clean."""
    modality = modality or ("image" if "image" in trained.modalities else trained.modalities[0])
    kind = trained.input_kind(modality)
    generator = torch.Generator().manual_seed(0)
    errors = {}
    for radius in eps:
        def adversary(stored: dict[str, Tensor], labels: Tensor, radius: float = radius) -> dict[str, Tensor]:
            logits_of = lambda x: trained.output({**stored, modality: x}).logits
            x = stored[modality].to(trained.device).float()
            return {**stored, modality: attack(name, logits_of, x, labels, radius * kind.scale, kind.bounds, steps=steps, generator=generator)}

        errors[f"{radius:g}"] = _error(trained, data, batch, adversary)
    return errors


def corruption_errors(trained: TrainedModel, data: EvalSet, names: Mapping[str, Sequence[str]], batch: int = BATCH
                      ) -> dict[str, list[float]]:
    """Error at severities 1..5 of every corruption in ``names`` (modality -> corruption names), one
    modality corrupted at a time; keys ``name`` (one modality) or ``modality:name``."""
    errors = {}
    for modality, corruptions in names.items():
        for name in corruptions:
            key = name if len(trained.modalities) == 1 else f"{modality}:{name}"
            errors[key] = [_error(trained, data.replaced(modality, corrupt(modality, name, data.inputs[modality], severity,
                                                                           trained.pipelines[modality])), batch)
                           for severity in range(1, 6)]
    return errors


def evaluate(trained: TrainedModel, data: EvalSet, *, corruptions: Mapping[str, Sequence[str]] | None = None,
             attack_name: str | None = None, eps: Sequence[float] = (), steps: int = PGD_STEPS, ood: EvalSet | None = None,
             baseline: Mapping[str, Any] | None = None, batch: int = BATCH) -> dict[str, Any]:
    """Every figure asked for: ``clean_error`` and ``calibration`` always; ``corruptions`` (errors per
    severity) with their summary (``mce``; against ``baseline``'s evaluation, the normalised and
    relative mCE); ``adversarial`` errors; ``ood`` detection (AUROC, FPR at 95% TPR per score)."""
    clean = _outputs(trained, data, batch)
    result: dict[str, Any] = {"test_set": data.name, "samples": len(clean["labels"]), "clean_error": _error_rate(clean),
                              "calibration": calibration(clean["logits"], clean["labels"])}
    if corruptions:
        errors = corruption_errors(trained, data, corruptions, batch)
        result |= {"corruptions": errors, **corruption_summary(errors, result["clean_error"], baseline)}
    if attack_name:
        result["adversarial"] = {attack_name: adversarial_errors(trained, data, attack_name, eps, steps=steps, batch=batch)}
        if attack_name == "pgd":
            result["adversarial"]["steps"] = steps
    if ood is not None:
        outside = _outputs(trained, ood, batch)
        scores = lambda o: ood_scores(o["logits"], o.get("similarity")) | {k: v for k, v in o.items() if k.startswith("typicality.")}
        result["ood"] = {"ood_set": ood.name, "ood_samples": len(ood), **detection(scores(clean), scores(outside))}
    return result
