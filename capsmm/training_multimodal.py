"""One multimodal run (image + audio, or any registered modalities) from a multimodal run config."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import MODALITY_SECTIONS, MultimodalRun, config_from_saved, multimodal_schema
from .data import ModalSplit, load_dataset
from .encoder import encoder_options
from .errors import CheckpointError, DataError
from .pipeline import describe_inputs, save_input_pipeline
from .model import CAPModel
from .multimodal import EncoderSpec, build_fusion_model, collect_logits, fit_multimodal, load_trained_model, multimodal_loaders
from .training import describe_parameters, launched, seeded_model


def load_modalities(config: MultimodalRun) -> dict[str, tuple[ModalSplit, ModalSplit, tuple[int, ...], list[str]]]:
    """modality -> (train split, test split, input shape, class names) for the modalities of the run."""
    parts = {}
    for modality in config.multimodal.modalities:
        section = getattr(config, modality)
        data = load_dataset(modality, section, config.train.seed)
        parts[modality] = (*data.modal_splits(section), data.in_shape, data.classes)
    counts = {name: len(part[3]) for name, part in parts.items()}
    if len(set(counts.values())) > 1:
        raise DataError(f"pairing by class needs the same number of classes in every modality; got "
                        f"{', '.join(f'{n} {c}' for n, c in counts.items())}")
    return parts


def encoder_specs(config: MultimodalRun, in_shapes: dict[str, tuple[int, ...]], modalities: list[str]) -> dict[str, EncoderSpec]:
    specs = {}
    for name in modalities:
        section = getattr(config, f"{name}_model")
        options = section.encoder_options()
        data = getattr(config, name)
        taken = encoder_options(section.backbone)
        options.update({key: getattr(data, key) for key in MODALITY_SECTIONS.get(name).encoder_data_keys if key in taken})
        specs[name] = EncoderSpec(section.backbone, in_shapes[name], options)
    return specs


def extend_trained_model(config: MultimodalRun, specs: dict[str, EncoderSpec], num_classes: int) -> tuple[CAPModel, list[str]]:
    """Load the joint model of ``multimodal.extend_from``, freeze it, and append the modalities it lacks.

    The encoders and head of the trained modalities are rebuilt from that run's own config.
    """

    def build(saved: dict[str, Any]) -> CAPModel:
        old_modalities = saved.get("multimodal", {}).get("modalities", [])
        missing = sorted(set(old_modalities) - set(specs))
        if missing or saved.get("multimodal", {}).get("fusion") != "joint":
            raise CheckpointError(f"{config.multimodal.extend_from}: can extend a joint run whose modalities are among "
                                  f"{sorted(specs)}; it has fusion {saved.get('multimodal', {}).get('fusion')}, modalities {old_modalities}")
        old = config_from_saved(multimodal_schema(), saved, Path(config.multimodal.extend_from))
        old_specs = encoder_specs(old, {n: specs[n].in_shape for n in old_modalities}, old_modalities)
        model = build_fusion_model("joint", old_specs, num_classes=num_classes, mode=saved["train"]["mode"],
                                   head_options=old.model.head_options())
        return model

    try:
        model, saved = load_trained_model(Path(config.multimodal.extend_from), build)
    except RuntimeError as error:  # load_state_dict: shapes differ
        raise CheckpointError(f"{config.multimodal.extend_from} does not fit these inputs: {str(error).splitlines()[0]}") from None
    old_modalities = list(model.modalities)
    model.freeze()
    for name in sorted(set(specs) - set(old_modalities)):
        model.add_modality(name, specs[name].build(), specs[name].in_shape)
    return model, old_modalities


def train_multimodal(config: MultimodalRun, *, resume: bool = False, force: bool = False,
                     log: Callable[[str], None] = print) -> dict[str, Any]:
    """Validate, load and pair the data, build the fusion model (or extend a trained one), train.

    Under torchrun it trains data-parallel like :func:`capsmm.training.train`; rank 0 writes."""
    config.validate()
    mm = config.multimodal
    out_dir = config.out_dir()
    with launched(config.train, out_dir) as (context, device):
        parts = load_modalities(config)
        num_classes = len(next(iter(parts.values()))[3])
        specs = encoder_specs(config, {name: part[2] for name, part in parts.items()}, sorted(parts))
        train_parts = {name: part[0] for name, part in parts.items()}
        test_parts = {name: part[1] for name, part in parts.items()}
        extra_results = None
        if mm.extend_from:
            model, old_modalities = seeded_model(lambda: extend_trained_model(config, specs, num_classes), config.train.seed, context)
            extra_results = _frozen_check(model, old_modalities, test_parts, config, device)
        else:
            model = seeded_model(lambda: build_fusion_model(mm.fusion, specs, num_classes=num_classes, mode=config.train.mode,
                                                            head_options=config.model.head_options()), config.train.seed, context)
        sizes = ", ".join(f"{name} {len(part[0]):,}/{len(part[1]):,}" for name, part in parts.items())
        backbones = "+".join(specs[name].backbone for name in sorted(specs))
        if context.is_main:
            log(f"{mm.fusion} {'+'.join(sorted(parts))} ({sizes} train/test, paired by {mm.pairing} to {mm.anchor}) | {backbones} | "
                f"mode {config.train.mode} | {_describe(model)} | {device}{f' x {context.world} ranks' if context.enabled else ''} | -> {out_dir}")
        summary = {
            "dataset": "+".join(getattr(config, name).name for name in sorted(parts)),
            "backbone": backbones,
            "fusion": mm.fusion,
            "modalities": sorted(parts),
        }
        results = fit_multimodal(model, train_parts, test_parts, config.train, out_dir, run_config=config.to_dict(), summary=summary,
                              anchor=mm.anchor, pairing=mm.pairing, modality_dropout=mm.modality_dropout if mm.fusion == "joint" else 0.0,
                              device=device, resume=resume, force=force, extra_results=extra_results, log=log, dist=context,
                              gate=mm.gate, balance=mm.balance())
        if context.is_main:  # what load_run needs to apply the finished model to new inputs
            save_input_pipeline(out_dir, {name: describe_inputs(part[0], part[2], part[3], getattr(config, name)) for name, part in parts.items()})
        return results


def _describe(model: nn.Module) -> str:
    if isinstance(model, CAPModel):
        return describe_parameters(model)
    return f"params {sum(p.numel() for p in model.parameters()):,}"


def _frozen_check(model: CAPModel, old: list[str], test_parts: dict[str, ModalSplit], config: MultimodalRun,
                  device: torch.device) -> Callable[[nn.Module], dict[str, Any]]:
    """Records the frozen modalities' test predictions now; after training, reports whether they are bit-identical."""

    def old_logits(m: nn.Module) -> torch.Tensor:
        _, loader = multimodal_loaders(test_parts, test_parts, batch_size=2, eval_batch_size=config.train.eval_batch_size,
                                       device=device, seed=config.train.seed, anchor=config.multimodal.anchor, pairing=config.multimodal.pairing)
        logits, _ = collect_logits(m.to(device), loader, [tuple(sorted(old))])
        return logits[tuple(sorted(old))]

    before = old_logits(model)
    return lambda trained: {"extended_from": config.multimodal.extend_from, "frozen_modalities": sorted(old),
                            "frozen_predictions_unchanged": bool(torch.equal(before, old_logits(trained)))}
