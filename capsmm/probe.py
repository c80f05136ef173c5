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

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data import BatchLoader, ModalSplit
from .errors import ConfigError
from .evaluation import predictions
from .inference import TrainedModel
from .model import CAPModel
from .prototypes import PrototypeHead
from .readout import CAPReadout
from .streams import Purpose, stream, stream_seed

#: what a probe reads: the modality's CAP patterns concatenated, its last block's activation, or each block's
FEATURES = ("patterns", "last", "blocks")


def modality_model(model: nn.Module, modality: str) -> CAPModel:
    """The CAP model that holds ``modality``'s encoder: the model itself, or a late fusion's own model of it."""
    models: Mapping[str, CAPModel] | None = getattr(model, "models", None)
    found = models[modality] if models is not None and modality in models else model
    if not isinstance(found, CAPModel) or modality not in found.encoders:
        raise ConfigError(f"this model has no {modality} encoder to probe")
    return found


def pooled(encoder: nn.Module, activation: Tensor) -> Tensor:
    """A block's activation as (B, C): feature maps and sequences averaged over space or time."""
    channels_first = encoder.to_channels_first(activation).float()
    return channels_first.flatten(2).mean(2) if channels_first.ndim > 2 else channels_first


def encoder_features(model: nn.Module, modality: str, split: ModalSplit, *, features: str = "patterns", batch_size: int = 500,
                     device: torch.device | None = None) -> tuple[list[Tensor], Tensor]:
    """Features of every sample of ``split`` (no augmentation) through the frozen encoder of
    ``modality``, in eval mode, and the (N,) labels, on the CPU in float32: one (N, D) tensor (the
    patterns concatenated, or the last block) or, for ``blocks``, one per block (each pooled over
    space). A Forward-Forward model reads its neutral input (no label written in), as its classifier does."""
    if features not in FEATURES:
        raise ConfigError(f"unknown probe features '{features}'; valid: {', '.join(FEATURES)}")
    holder = modality_model(model, modality)
    encoder = holder.encoders[modality]
    loader = BatchLoader(ModalSplit(split.inputs, split.labels, split.prepare), batch_size, device=device or torch.device("cpu"))

    def extract(x: Tensor) -> list[Tensor]:
        passes = list(holder.iter_blocks({modality: holder.ff.neutral(x) if holder.ff is not None else x}))
        if features == "patterns":
            return [torch.cat([p.pattern.float() for p in passes if p.pattern is not None], dim=1)]
        return [pooled(encoder, p.activation) for p in (passes if features == "blocks" else passes[-1:])]

    batches = list(predictions(extract, holder, loader))
    return [torch.cat([f[i].cpu() for f, _ in batches]) for i in range(len(batches[0][0]))], torch.cat([y.cpu() for _, y in batches])


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


def fit_cap_readout(train_x: Sequence[Tensor], train_y: Tensor, test_x: Sequence[Tensor], test_y: Tensor, *, num_classes: int,
                    seed: int, pattern_width: int = 1024, epochs: int = 10, lr: float = 5e-4, batch_size: int = 128) -> dict[str, Any]:
    """A CAP readout fitted on frozen blocks: each block's activation pooled to ``pattern_width`` and
    batch-normalised (:class:`~capsmm.readout.CAPReadout`), the patterns concatenated and scored by
    cosine prototypes over temperature 0.1, trained with Adam on the cross-entropy; reports its
    training and test errors. What CAPs would read from blocks another method trained."""
    torch.manual_seed(stream_seed(seed, Purpose.PROBE, 1))
    readouts = nn.ModuleList(CAPReadout(x.shape[1:], pattern_width) for x in train_x)
    head = PrototypeHead(num_classes, [r.width for r in readouts])
    modules = nn.ModuleList([readouts, head])
    optimizer = torch.optim.Adam(modules.parameters(), lr=lr)
    order = stream(seed, Purpose.PROBE, 2)

    def logits(xs: Sequence[Tensor]) -> Tensor:
        return head([r(x) for r, x in zip(readouts, xs)], list(range(len(xs))))

    modules.train()
    for _ in range(epochs):
        for index in torch.randperm(len(train_y), generator=order).split(batch_size):
            if len(index) < 2:  # batch norm needs two samples
                continue
            optimizer.zero_grad()
            F.cross_entropy(logits([x[index] for x in train_x]), train_y[index]).backward()
            optimizer.step()
    modules.eval()
    with torch.no_grad():
        error = lambda xs, y: logits(xs).argmax(1).ne(y).double().mean().item()  # noqa: E731
        return {"train_error": error(train_x, train_y), "test_error": error(test_x, test_y), "epochs": epochs, "lr": lr,
                "pattern_width": pattern_width, "train_samples": len(train_y), "test_samples": len(test_y)}


def run_splits(trained: TrainedModel) -> dict[str, tuple[ModalSplit, ModalSplit, Sequence[str]]]:
    """Per modality of a finished run: its (train, test) splits as model inputs and its class names,
    loaded as its config says (a vision run's one modality is ``image``)."""
    config = trained.config
    if trained.kind == "multimodal":
        from .training_multimodal import load_modalities

        return {name: (train, test, classes) for name, (train, test, _, classes) in sorted(load_modalities(config).items())}
    if trained.kind == "vision":
        from .data import load_image_dataset

        data = load_image_dataset(config.data, config.train.seed)
        return {"image": (*data.modal_splits(config.data), data.classes)}
    raise ConfigError(f"{trained.run_dir} is a {trained.kind} run; probes read vision and multimodal runs")


def probe_run(trained: TrainedModel, *, features: str = "patterns", max_train: int | None = 10_000, batch_size: int = 500,
              l2: float = 1e-4, cap_readout: Sequence[int] = ()) -> dict[str, Any]:
    """Probe every encoder of a finished vision or multimodal run on the data sets its config names:
    fitted on at most ``max_train`` training samples of each modality (stratified by class,
    unaugmented), tested on the modality's whole test split (not the test pairs: each modality's own
    test set). ``blocks``: one probe per block (``block_1``...). ``cap_readout``: the 0-based blocks a
    CAP readout (:func:`fit_cap_readout`) is also fitted on."""
    seed = trained.config.train.seed
    result: dict[str, Any] = {"features": features, "max_train": max_train}
    for modality, (train, test, classes) in run_splits(trained).items():
        train = train.sample(max_train, stream(seed, Purpose.PROBE))

        def extracted(kind: str) -> tuple[list[Tensor], Tensor, list[Tensor], Tensor]:
            (train_x, train_y), (test_x, test_y) = [encoder_features(trained.model, modality, split, features=kind, batch_size=batch_size,
                                                                     device=trained.device) for split in (train, test)]
            return train_x, train_y, test_x, test_y

        train_x, train_y, test_x, test_y = extracted(features)
        if features == "blocks":
            figures = {f"block_{i + 1}": fit_probe(a, train_y, b, test_y, num_classes=len(classes), l2=l2)
                       for i, (a, b) in enumerate(zip(train_x, test_x))}
        else:
            figures = fit_probe(train_x[0], train_y, test_x[0], test_y, num_classes=len(classes), l2=l2)
        if cap_readout:
            if features != "blocks":
                train_x, _, test_x, _ = extracted("blocks")
            if not set(cap_readout) <= set(range(len(train_x))):
                raise ConfigError(f"--cap-readout names blocks {sorted(b + 1 for b in cap_readout)}; the {modality} encoder has blocks "
                                  f"1..{len(train_x)}")
            blocks = sorted(cap_readout)
            figures["cap_readout"] = {"blocks": [b + 1 for b in blocks]} | fit_cap_readout(
                [train_x[b] for b in blocks], train_y, [test_x[b] for b in blocks], test_y, num_classes=len(classes), seed=seed)
        result[modality] = figures
    return result
