"""The paper's analyses (section 4) as functions: orthogonality, sparsity, gradient consistency,
scale, per-block accuracy. Pure functions on tensors, plus :func:`model_diagnostics`, which
computes them all for a model on one fixed batch.

Which pattern each figure reads:

- orthogonality and sparsity read every block's *activation pattern*: the block's activation
  average-pooled to the readout geometry, before any learned normalisation. Every mode has it
  (``bp`` too, whose inner blocks have no readout), so runs of different modes compare.
- scale, per-block accuracy and gradient consistency read what the head sees: the normalised CAP
  vectors m_i and their prototype slices.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import batchnorm_stats_frozen
from .model import CAPModel
from .objectives import training_loss
from .prototypes import PrototypeHead
from .readout import CAPReadout
from .streams import Purpose, stream_seed


def class_means(patterns: Tensor, labels: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """(C, D) mean pattern of each class, and a (C,) mask of the classes present."""
    one_hot = F.one_hot(labels, num_classes).to(patterns.dtype)  # (N, C)
    counts = one_hot.sum(0)
    means = (one_hot.T @ patterns) / counts.clamp_min(1)[:, None]
    return means, counts > 0


def orthogonality(patterns: Tensor, labels: Tensor, num_classes: int) -> dict[str, float]:
    """Inter-class pattern orthogonality (paper section 4.7, Fig. 3A); lower = more orthogonal.

    With mu_c the mean pattern of class c and cos the cosine similarity:

    - ``inter``: O = mean over samples i and classes c != y_i of cos(m_i, mu_c), the average
      cosine between a sample's pattern and the class-mean patterns of the *other* classes. This
      is the paper's "average cosine similarity between sample modalities and their corresponding
      class-mean modalities" read as an inter-class measure, the only reading under which lower
      values mean stronger orthogonality, as its figure says.
    - ``intra``: mean over i of cos(m_i, mu_{y_i}), how tightly a class clusters (higher = tighter).
    - ``between_means``: mean over pairs c != c' of cos(mu_c, mu_c').
    """
    means, present = class_means(patterns, labels, num_classes)
    means, index = means[present], torch.cumsum(present.long(), 0)[labels] - 1  # labels -> rows of means
    cos = F.normalize(patterns, dim=1) @ F.normalize(means, dim=1).T  # (N, C_present)
    own = F.one_hot(index, means.shape[0]).bool()
    k = means.shape[0]
    between = F.normalize(means, dim=1) @ F.normalize(means, dim=1).T
    off_diagonal = ~torch.eye(k, dtype=torch.bool, device=patterns.device)
    return {
        "inter": cos[~own].mean().item() if k > 1 else float("nan"),
        "intra": cos[own].mean().item(),
        "between_means": between[off_diagonal].mean().item() if k > 1 else float("nan"),
    }


def sparsity(patterns: Tensor) -> float:
    """Mean L1 norm of the L2-normalised pattern, divided by sqrt(D) (paper Fig. 3B); lower = sparser.

    For a unit vector ||m/||m||_2||_1 lies in [1, sqrt(D)]: 1 for a single active unit, sqrt(D) when
    all units are equally active. Dividing by sqrt(D) puts blocks of any width on one (0, 1] scale.
    """
    unit = F.normalize(patterns, dim=1)
    return (unit.abs().sum(1) / patterns.shape[1] ** 0.5).mean().item()


def scale(patterns: Sequence[Tensor], model: nn.Module | None = None) -> dict[str, Any]:
    """Norms behind the paper's scale argument (eq. 12: the step size goes as 1/||m||).

    ``m_norm``: mean over samples of ||m||; ``block_norms``: mean ||m_i|| per block; with a model,
    ``norm_scales``: mean |gamma| of each readout's normalisation layer (None where it has none).
    """
    m = torch.cat(list(patterns), dim=1)
    result: dict[str, Any] = {
        "m_norm": m.norm(dim=1).mean().item(),
        "block_norms": [p.norm(dim=1).mean().item() for p in patterns],
    }
    if model is not None:
        result["norm_scales"] = [
            readout.norm.weight.abs().mean().item() if getattr(readout.norm, "weight", None) is not None else None
            for readouts in model.readouts.values() for readout in readouts
        ]
    return result


def block_accuracy(head: PrototypeHead, patterns: Sequence[Tensor], labels: Tensor, slices: Sequence[int]) -> list[float]:
    """Accuracy of each block's pattern scored against its own prototype slice alone."""
    return [(head([p], [s]).argmax(1) == labels).float().mean().item() for p, s in zip(patterns, slices)]


def flat_block_gradients(model: CAPModel) -> list[Tensor | None]:
    """Each block's parameter gradients as one vector (None for a block without any: frozen)."""
    grads = [[p.grad.flatten() for p in block.parameters() if p.grad is not None] for block in model.blocks]
    return [torch.cat(g) if g else None for g in grads]


def gradient_consistency(model: CAPModel, inputs: Tensor | dict[str, Tensor], labels: Tensor) -> list[float | None] | None:
    """Per block: cos(caps update direction, full gradient) of the same global objective.

    Both gradients are taken on the same batch, parameters, dropout masks and batch statistics
    (``caps`` = partial derivatives with the stop-gradient; ``caps-full`` = the true gradient, eq.
    10). The model's mode, gradients, running statistics and the RNG are left as they were. None
    for ``bp`` models, which have no global objective over every block.
    """
    if model.family != "cap":
        return None
    mode, was_training = model.mode, model.training
    saved_grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    gradients = {}
    model.train()
    try:
        with torch.random.fork_rng(devices=[labels.device] if labels.device.type == "cuda" else []), batchnorm_stats_frozen(model):
            for variant in ("caps", "caps-full"):
                torch.manual_seed(stream_seed(0, Purpose.GRADIENT_CHECK))
                model.set_mode(variant)
                model.zero_grad(set_to_none=True)
                training_loss(model(inputs), labels).backward()
                gradients[variant] = flat_block_gradients(model)
    finally:
        model.set_mode(mode)
        model.train(was_training)
        for p, g in zip(model.parameters(), saved_grads):
            p.grad = g
    return [None if a is None else F.cosine_similarity(a, b, dim=0).clamp(-1.0, 1.0).item()
            for a, b in zip(gradients["caps"], gradients["caps-full"])]


@torch.no_grad()
def activation_patterns(model: CAPModel, inputs: Tensor | dict[str, Tensor], pattern_width: int) -> list[Tensor]:
    """Every block's activation pooled to the readout geometry, without normalisation (any mode)."""
    patterns = []
    for block in model.iter_blocks(inputs):
        activation = model.encoders[block.modality].to_channels_first(block.activation).float()
        patterns.append(CAPReadout(activation.shape[1:], pattern_width, norm="none").pool(activation))
    return patterns


def model_diagnostics(model: CAPModel, inputs: Tensor | dict[str, Tensor], labels: Tensor) -> dict[str, Any]:
    """Every diagnostic for ``model`` on one batch (eval mode for the forward figures).

    A layer-local peer's model has no prototypes: its per-block accuracy is that of each block's own
    classifier (where it has one), and it has no CAP scale or gradient consistency figures."""
    was_training = model.training
    model.eval()
    if getattr(model, "ff", None) is not None:  # a Forward-Forward model's blocks read its input with the neutral label written in
        inputs = model.ff.neutral(inputs)
    with torch.no_grad():
        output = model(inputs)
        activations = activation_patterns(model, inputs, model.pattern_width)
    model.train(was_training)
    whole = torch.cat(activations, dim=1)
    figures: dict[str, Any] = {
        "orthogonality": orthogonality(whole, labels, model.num_classes),
        "orthogonality_by_block": [orthogonality(a, labels, model.num_classes)["inter"] for a in activations],
        "sparsity": sparsity(whole),
        "sparsity_by_block": [sparsity(a) for a in activations],
        "read_blocks": [b for name in model.as_inputs(inputs) for b in model.read_blocks[name]],
    }
    if model.head is None:
        figures["block_accuracy"] = [(logits.argmax(1) == labels).float().mean().item() for logits in output.block_logits or []]
        return figures
    slices = [s for name in model.as_inputs(inputs) for s in model.slices[name]]
    return figures | {
        "scale": scale(output.patterns, model),
        "block_accuracy": block_accuracy(model.head, output.patterns, labels, slices),
        "gradient_cosine": gradient_consistency(model, inputs, labels),
    }

