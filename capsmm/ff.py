"""Forward-Forward (Hinton 2022, "The Forward-Forward algorithm", section 3.3: supervised FF) on
capsmm's blocks: the mode ``ff``.

Each block is one FF layer. The label is written into the input (one-hot over its first C values)
for *positive* samples, a wrong label (uniform over the other classes) for *negative* ones; each
layer's *goodness* (the sum, or mean, of its squared activities) is pushed above a threshold for
positive samples and below it for negative ones by a logistic loss; each layer reads the previous
layer's activity through capsmm's one stop-gradient and after *length normalisation* (divided by
its root mean square), so that a layer cannot read the previous layer's goodness, only its pattern.

What follows the reference, Sindy Löwe's loeweX/Forward-Forward (``src/ff_model.py``), detail by
detail, and why a user may care:

- the threshold is the layer width for the summed goodness (``sum(a**2) - width`` is the logit),
  1 for the mean (the same criterion divided by the width);
- *peer normalisation* (weight ``peer_norm``, reference 0.03): a running mean (momentum 0.9, start
  0.5) of every unit's activity over the positive samples, and the squared deviation of each unit's
  running mean from their average as a loss, so that no unit stays silent or always on;
- the linear layers start from N(0, 1/out) weights and zero biases (``_init_weights``);
- two predictors, both reported: ``goodness`` (Hinton's: the goodness accumulated over layers
  2..L for each of the C labels written into the input, C forward passes) and ``linear`` (the
  reference's "downstream" classifier: a zero-initialised linear layer without bias on the
  length-normalised activities of layers 2..L of the *neutral* sample, whose first C values are
  1/C each; its input is computed without gradient, so its cross-entropy trains only itself, with
  its own learning rate and weight decay);
- the activation the reference uses, a ReLU whose backward passes the gradient everywhere, is the
  MLP's ``activation=relu-full-grad`` (:class:`capsmm.layers.ReLUFullGrad`).

capsmm's inputs are standardised per channel before the label is written (the reference writes it
into [0, 1] pixels); the first layer's length normalisation removes the scale of either.

FF needs the label to build its input, so :meth:`capsmm.model.CAPModel.forward` takes the batch's
labels in training; it trains MLP backbones (the label is written over pixels a convolution would
read as image) in one process with ``train.memory=standard`` (its negative labels and peer
statistics are per process; memory-lean recomputation would redraw them).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from .encoder import without_graph
from .errors import ConfigError

#: one pass of the model's blocks: ``x`` -> every block's :class:`capsmm.model.BlockPass` (activation, and
#: pattern unless ``read=False``)
Run = Callable[[Tensor], list[Any]]
GOODNESS = ("sum", "mean")
PREDICTORS = ("linear", "goodness")
#: the options of the ``ff`` mode (config ``model.ff_*``) and their defaults: the reference's
FF_DEFAULTS: dict[str, Any] = {"goodness": "sum", "peer_norm": 0.03, "peer_momentum": 0.9, "predictor": "linear",
                               "classifier_lr": 1e-2, "classifier_weight_decay": 3e-3}


def length_normalise(x: Tensor, eps: float = 1e-8) -> Tensor:
    """``x`` divided by its root mean square over every dimension but the batch (the reference's ``_layer_norm``)."""
    flat = rearrange(x, "b ... -> b (...)")
    return (flat / (flat.pow(2).mean(dim=1, keepdim=True).sqrt() + eps)).view_as(x)


class LengthNorm(nn.Module):
    """:func:`length_normalise` as the first step of every FF layer."""

    def forward(self, x: Tensor) -> Tensor:
        return length_normalise(x)


def embed_labels(x: Tensor, labels: Tensor) -> Tensor:
    """A copy of ``x`` whose first C values (flattened, per sample) are ``labels`` (B, C): a one-hot
    label, or 1/C each for the neutral sample."""
    flat = rearrange(x, "b ... -> b (...)").clone()
    flat[:, : labels.shape[1]] = labels.to(flat.dtype)
    return flat.view_as(x)


def wrong_labels(labels: Tensor, num_classes: int) -> Tensor:
    """For each label, another class drawn uniformly (from the global RNG, as dropout draws its masks,
    so that a resumed run draws the same)."""
    return (labels + torch.randint(1, num_classes, labels.shape, device=labels.device)) % num_classes


class ForwardForward(nn.Module):
    """The parts of an FF model besides its layers: the peer-normalisation statistics and the linear
    classifier, and the passes of training and of the two predictors (module docstring).

    Args:
        widths: the activity width of every layer.
        num_classes: C; the first C input values carry the label.
    """

    def __init__(self, widths: Sequence[int], num_classes: int, *, goodness: str = "sum", peer_norm: float = 0.03,
                 peer_momentum: float = 0.9, predictor: str = "linear", classifier_lr: float = 1e-2,
                 classifier_weight_decay: float = 3e-3) -> None:
        super().__init__()
        if len(widths) < 2:
            raise ConfigError(f"mode ff predicts from layers 2..L, so it needs at least 2 blocks (got {len(widths)}); set model.depth >= 2")
        if goodness not in GOODNESS or predictor not in PREDICTORS:
            raise ConfigError(f"ff: goodness must be one of {', '.join(GOODNESS)} and predictor one of {', '.join(PREDICTORS)}")
        self.num_classes = num_classes
        self.widths = list(widths)
        self.goodness_kind, self.predictor = goodness, predictor
        self.peer_norm, self.peer_momentum = peer_norm, peer_momentum
        self.classifier_lr, self.classifier_weight_decay = classifier_lr, classifier_weight_decay
        for index, width in enumerate(widths):
            self.register_buffer(f"running_mean_{index}", torch.full((width,), 0.5))
        self.classifier = nn.Linear(sum(widths[1:]), num_classes, bias=False)
        nn.init.zeros_(self.classifier.weight)

    def goodness(self, activation: Tensor) -> Tensor:
        """(B,) goodness of a layer's activity, minus the threshold: the logit of "positive"."""
        squares = rearrange(activation.float(), "b ... -> b (...)").pow(2)
        return squares.sum(1) - squares.shape[1] if self.goodness_kind == "sum" else squares.mean(1) - 1.0

    def _peer_loss(self, index: int, activation: Tensor) -> Tensor:
        """The peer-normalisation loss of layer ``index`` from the positive samples' ``activation``;
        updates its running mean (the reference's ``_calc_peer_normalization_loss``)."""
        name = f"running_mean_{index}"
        mean = self.peer_momentum * getattr(self, name) + (1 - self.peer_momentum) * activation.float().mean(0)
        setattr(self, name, without_graph(mean))
        return (mean.mean() - mean).pow(2).mean()

    def train_outputs(self, run: Run, x: Tensor, labels: Tensor) -> tuple[Tensor, list[dict[str, Tensor]]]:
        """One training pass: positive and negative samples with gradient (each layer cut from the
        previous one by the blocks' stop-gradient), the neutral sample without. Returns the linear
        classifier's logits on the neutral sample and, per layer, its ``goodness`` logits (2B: the
        positive samples first) and its ``peer`` loss."""
        C = self.num_classes
        positive = embed_labels(x, F.one_hot(labels, C))
        negative = embed_labels(x, F.one_hot(wrong_labels(labels, C), C))
        parts = []
        for index, block in enumerate(run(torch.cat([positive, negative]), read=False)):  # goodness reads activations
            part = {"goodness": self.goodness(block.activation)}
            if self.peer_norm > 0:
                part["peer"] = self._peer_loss(index, block.activation[: len(labels)])
            parts.append(part)
        with torch.no_grad():
            patterns = [block.pattern for block in run(self.neutral(x))]
        return self.classify(patterns), parts

    def neutral(self, x: Tensor) -> Tensor:
        """``x`` with 1/C in each of its first C values: the input that names no label."""
        return embed_labels(x, torch.full((len(x), self.num_classes), 1.0 / self.num_classes, device=x.device))

    def classify(self, patterns: Sequence[Tensor]) -> Tensor:
        """The linear classifier's (B, C) logits on the patterns (length-normalised activities) of layers 2..L."""
        return self.classifier(torch.cat([p.float() for p in patterns[1:]], dim=1))

    def goodness_logits(self, run: Run, x: Tensor) -> Tensor:
        """(B, C): for each label, the goodness accumulated over layers 2..L with that label written in (C passes, one batch)."""
        C, B = self.num_classes, len(x)
        eye = torch.eye(C, device=x.device)
        labelled = torch.cat([embed_labels(x, eye[c].expand(B, C)) for c in range(C)])
        total = sum(self.goodness(block.activation) for block in run(labelled, read=False)[1:])
        return rearrange(total, "(c b) -> b c", c=C)

    def scores(self, run: Run, x: Tensor, predictor: str | None = None) -> tuple[Tensor, list[Tensor]]:
        """The (B, C) scores of ``predictor`` (default: the model's) and the patterns it read: the neutral
        sample's for ``linear`` (one pass), none for ``goodness`` (its C passes). With the gradient on
        (an attack under :func:`capsmm.encoder.gradient_kept`), the scores are a function of ``x``."""
        if (predictor or self.predictor) == "goodness":
            return self.goodness_logits(run, x), []
        patterns = [block.pattern for block in run(self.neutral(x))]
        return self.classify(patterns), patterns


def ff_loss(parts: Sequence[dict[str, Tensor]], classifier_logits: Tensor, targets: Tensor, peer_norm: float) -> Tensor:
    """The FF objective of a batch: per layer, the logistic loss of its goodness logits (the first
    half positive, the second negative) plus ``peer_norm`` times its peer loss; plus the linear
    classifier's cross-entropy, which reaches only the classifier."""
    loss = F.cross_entropy(classifier_logits.float(), targets)
    for part in parts:
        logits = part["goodness"]
        positive = torch.zeros_like(logits)
        positive[: len(logits) // 2] = 1
        loss = loss + F.binary_cross_entropy_with_logits(logits, positive)
        if "peer" in part:
            loss = loss + peer_norm * part["peer"]
    return loss


def init_ff_layers(blocks: nn.Module) -> None:
    """The reference's initialisation of every linear layer: weights N(0, 1/out_features), zero biases."""
    for module in blocks.modules():
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=module.weight.shape[0] ** -0.5)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
