"""Linear probes of a trained run's encoders: how much of the class a frozen encoder's features hold.

Why: a modality's own-slice error inside a joint model mixes what its encoder learned with how well
its slice of the prototypes reads it. A linear classifier fitted on the frozen encoder's features of
the training set measures the first alone, so a jointly trained encoder can be compared with the
same encoder trained alone (Peng et al. 2022 showed jointly trained encoders under-optimised this
way). The features are the modality's CAP patterns concatenated (``patterns``: what its prototype
slices read) or its last block's activation averaged over space or time (``last``).

The probe is multinomial logistic regression on standardised features with a small L2 penalty,
fitted to convergence by L-BFGS from zero weights: a convex problem, so the figure does not depend
on a seed or a learning rate.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data import BatchLoader, ModalSplit
from .errors import ConfigError
from .evaluation import predictions
from .inference import TrainedModel
from .model import CAPModel
from .streams import Purpose, stream

#: what a probe reads: the modality's CAP patterns concatenated, or its last block's activation
FEATURES = ("patterns", "last")


def modality_model(model: nn.Module, modality: str) -> CAPModel:
    """The CAP model that holds ``modality``'s encoder: the model itself, or a late fusion's own model of it."""
    models: Mapping[str, CAPModel] | None = getattr(model, "models", None)
    found = models[modality] if models is not None and modality in models else model
    if not isinstance(found, CAPModel) or modality not in found.encoders:
        raise ConfigError(f"this model has no {modality} encoder to probe")
    return found


def encoder_features(model: nn.Module, modality: str, split: ModalSplit, *, features: str = "patterns", batch_size: int = 500,
                     device: torch.device | None = None) -> tuple[Tensor, Tensor]:
    """(N, D) features of every sample of ``split`` (no augmentation) through the frozen encoder of
    ``modality``, in eval mode, and the (N,) labels; on the CPU, in float32."""
    if features not in FEATURES:
        raise ConfigError(f"unknown probe features '{features}'; valid: {', '.join(FEATURES)}")
    holder = modality_model(model, modality)
    encoder = holder.encoders[modality]
    loader = BatchLoader(ModalSplit(split.inputs, split.labels, split.prepare), batch_size, device=device or torch.device("cpu"))

    def extract(x: Tensor) -> Tensor:
        passes = list(holder.iter_blocks({modality: x}))
        if features == "patterns":
            return torch.cat([p.pattern.float() for p in passes if p.pattern is not None], dim=1)
        last = encoder.to_channels_first(passes[-1].activation).float()
        return last.flatten(2).mean(2) if last.ndim > 2 else last

    batches = list(predictions(extract, holder, loader))
    return torch.cat([f.cpu() for f, _ in batches]), torch.cat([y.cpu() for _, y in batches])


def fit_probe(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, *, num_classes: int, l2: float = 1e-4,
              max_iter: int = 500) -> dict[str, Any]:
    """Fit the linear probe on (train_x, train_y) and report its training and test errors (fractions)."""
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    standard = lambda x: (x - mean) / std  # noqa: E731
    train, test = standard(train_x).double(), standard(test_x).double()
    weight = torch.zeros(num_classes, train.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=max_iter, tolerance_grad=1e-9, tolerance_change=1e-12,
                                  line_search_fn="strong_wolfe")

    def objective() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(train @ weight.T + bias, train_y) + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(objective)
    with torch.no_grad():
        error = lambda x, y: (x @ weight.T + bias).argmax(1).ne(y).double().mean().item()  # noqa: E731
        return {"train_error": error(train, train_y), "test_error": error(test, test_y), "dim": train.shape[1],
                "train_samples": len(train_y), "test_samples": len(test_y), "l2": l2}


def probe_run(trained: TrainedModel, *, features: str = "patterns", max_train: int | None = 10_000, batch_size: int = 500,
              l2: float = 1e-4) -> dict[str, Any]:
    """Probe every encoder of a finished multimodal run on the data sets its config names: fitted on at
    most ``max_train`` training samples of each modality (stratified by class, unaugmented), tested on
    the modality's whole test split (not the test pairs: each modality's own test set)."""
    from .training_multimodal import load_modalities

    if trained.kind != "multimodal":
        raise ConfigError(f"{trained.run_dir} is a {trained.kind} run; the probe compares the encoders of multimodal runs")
    config = trained.config
    result: dict[str, Any] = {"features": features, "max_train": max_train}
    for modality, (train, test, _, classes) in sorted(load_modalities(config).items()):
        train = train.sample(max_train, stream(config.train.seed, Purpose.PROBE))
        extracted = [encoder_features(trained.model, modality, split, features=features, batch_size=batch_size, device=trained.device)
                     for split in (train, test)]
        result[modality] = fit_probe(*extracted[0], *extracted[1], num_classes=len(classes), l2=l2)
    return result
