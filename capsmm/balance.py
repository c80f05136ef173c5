"""Keeping every modality of a joint model learning: per-modality slice losses and on-the-fly
gradient modulation, as settings of multimodal training.

Why: every encoder of a joint CAP model learns from the derivative of one softmax over the joint
pattern. Once the stronger modality's slices make that softmax confident, the derivative at the
weaker modality's patterns vanishes and its encoder stops learning (docs/multimodal.md measured an
audio branch far behind the same encoder trained alone). Two remedies:

- **Slice losses** (``multimodal.slice_loss_weight``): each present modality's own slices are scored
  alone (its part of the pattern against its part of the prototypes, which is what the model predicts
  from that modality alone) and the weighted sum of their cross-entropies joins the joint loss
  (:func:`capsmm.objectives.training_loss`). No parameter is added. A modality's slice loss reads only
  its own patterns, so under the stop-gradient each block still learns from the derivative of the
  whole objective at its own pattern.
- **Gradient modulation** (``multimodal.modulation``: ``ogm``, ``ogm-ge``) after Peng et al. 2022,
  "Balanced multimodal learning via on-the-fly gradient modulation" (CVPR), written from the paper
  and its official code (GeWu-Lab/OGM-GE_CVPR2022). Per batch, a modality's score ``s_m`` is the sum
  over the batch of the probability its own slices give the true class; between the backward and the
  optimiser step the leading modality's branch gradients are scaled by
  ``k_m = 1 - tanh(alpha * relu(rho_m - 1))``; ``ogm-ge`` also adds Gaussian noise with each
  gradient's own standard deviation to every modality's branch. Only within
  ``multimodal.modulation_epochs``.

Decisions where the paper leaves room (docs/multimodal.md repeats them):

- **More than two modalities**: ``rho_m = s_m / mean of the other modalities' s``. With two it is the
  paper's ratio; with more, a modality is slowed by how far it leads the average of the others.
- **The coefficient is continuous at balance** (``relu(rho - 1)``, the official code's first
  release). The paper's Eq. 10 and the later code use ``1 - tanh(alpha * rho)`` for ``rho > 1``, which
  jumps to ``1 - tanh(alpha)`` as soon as a modality leads by any margin: the same ``alpha`` is milder here.
- **A modality's branch** is its blocks and readouts; what is scaled (and gets noise) is every
  weight matrix or kernel (two or more dimensions) of it, as the official code scales its conv
  encoders' 4-D kernels; biases, normalisation parameters and the shared prototypes (the fusion) are
  left alone.
- **Noise** has the standard deviation of the gradient before scaling, and is drawn from the stream
  ``(seed, GRADIENT_NOISE, epoch)`` on every rank alike.
- **Data-parallel**: the scores are summed over the ranks and the hook runs after the gradients are
  averaged, so every rank scales and perturbs the same global gradients the same way: the step is
  one process' step on the global batch.
- A batch that shows one modality (``multimodal.modality_dropout``) is neither scored nor modulated.

capsmm trains with Adam by default (``train.optimizer``), which divides each step by a running RMS of the gradient, so a constant
factor is undone within about 1/(1 - beta2) steps; the modulation acts through how the factor moves
from batch to batch, and through the noise. The official code trains with SGD.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .distributed import DistContext, all_reduce_sum
from .errors import ConfigError
from .model import CAPModel, CAPOutput
from .modes import CAP_FAMILIES, mode_spec
from .streams import Purpose, stream_seed
from .strategies import Strategy

#: ``multimodal.modulation`` values: none, OGM (scaled gradients), OGM-GE (scaled, plus Gaussian noise)
MODULATIONS = ("none", "ogm", "ogm-ge")
#: the slice-loss weight ``multimodal.slice_loss_weight=auto`` (the default) gives where slice losses apply:
#: the best of docs/multimodal.md's balance study (methods x fusions, 3 seeds, audio options off and on)
AUTO_SLICE_LOSS_WEIGHT = 1.0


@dataclass(frozen=True)
class BalanceSettings:
    """The balancing settings of a run (``multimodal.slice_loss_weight``, ``modulation``...)."""

    slice_loss_weight: float = 0.0
    modulation: str = "none"
    alpha: float = 0.8
    epochs: tuple[int, int] = (1, 50)
    """first and last epoch of the modulation (1-based, inclusive)"""

    @property
    def enabled(self) -> bool:
        return self.slice_loss_weight > 0 or self.modulation != "none"


def refusal(settings: BalanceSettings, *, fusion: str, modalities: Sequence[str], modes: Sequence[str]) -> str | None:
    """Why ``settings`` can't balance a run of this fusion, these modalities and modes (one line), or None."""
    if not settings.enabled:
        return None
    what = f"multimodal.slice_loss_weight={settings.slice_loss_weight:g}" if settings.slice_loss_weight > 0 else \
        f"multimodal.modulation={settings.modulation}"
    if len(modalities) < 2:
        return f"{what} balances several modalities; this run trains {', '.join(modalities)} alone"
    if fusion == "late":
        return f"{what} balances the modalities of one model; late fusion trains each modality alone (use fusion joint or concat-bp)"
    for mode in modes:
        if mode_spec(mode).family not in CAP_FAMILIES or mode == "local":
            return f"{what} scores each modality's slices with the global head, which train.mode {mode} does not train (use caps, caps-full or bp)"
    return None


def auto_slice_loss_weight(*, fusion: str, modalities: Sequence[str], modes: Sequence[str], extending: bool,
                           other_method: bool) -> float:
    """What ``multimodal.slice_loss_weight=auto`` means for a run: :data:`AUTO_SLICE_LOSS_WEIGHT` where
    slice losses apply (:func:`refusal` has nothing against them: joint or concat-bp fusion, two or more
    modalities, modes caps, caps-full or bp), else 0.

    Also 0 where the study did not measure slice losses: beside another balancing method
    (``other_method``: gradient modulation or modality dropout, each measured alone; set the weight to
    stack them), and in a run that extends a trained model (``multimodal.extend_from``)."""
    if extending or other_method:
        return 0.0
    applies = refusal(BalanceSettings(AUTO_SLICE_LOSS_WEIGHT), fusion=fusion, modalities=modalities, modes=modes) is None
    return AUTO_SLICE_LOSS_WEIGHT if applies else 0.0


def discrepancy_coefficients(scores: Tensor, alpha: float) -> Tensor:
    """(M,) per-modality scores -> (M,) gradient coefficients ``1 - tanh(alpha * relu(rho - 1))``,
    ``rho_m = s_m / mean of the others' s`` (module docstring)."""
    others = (scores.sum() - scores) / (len(scores) - 1)
    ratio = scores / others.clamp_min(torch.finfo(scores.dtype).tiny)
    return 1 - torch.tanh(alpha * torch.relu(ratio - 1))


def branch_weights(model: CAPModel, modality: str) -> list[nn.Parameter]:
    """What modulation scales for ``modality``: the trainable weights with two or more dimensions of its
    blocks and readouts (module docstring)."""
    modules = (model.encoders[modality], model.readouts[modality])
    return [p for module in modules for p in module.parameters() if p.requires_grad and p.ndim >= 2]


class ModalityBalance:
    """The per-step part of balancing: an ``after_backward`` hook that scores each modality on the
    training batch and, within the modulation's epochs, modulates the branches' gradients; and the
    epoch's figures (``modality_balance`` in metrics.jsonl: each modality's mean true-class probability
    from its own slices, and its mean coefficient while modulating)."""

    def __init__(self, model: CAPModel, settings: BalanceSettings, seed: int, dist: DistContext = DistContext()) -> None:
        self.settings, self.seed, self.dist = settings, seed, dist
        self.weights = {name: branch_weights(model, name) for name in model.modalities}
        self.start_epoch(0)

    def start_epoch(self, epoch: int) -> None:
        """Begin epoch ``epoch`` (0-based): whether it modulates, its noise stream, fresh figures."""
        first, last = self.settings.epochs
        self.epoch = epoch
        self.modulating = self.settings.modulation != "none" and first <= epoch + 1 <= last
        self.noise: torch.Generator | None = None  # made at the first draw, on the gradients' device
        self.totals: dict[str, dict[str, Tensor]] = {"score": {}, "coefficient": {}}
        self.counts: dict[str, Tensor | float] = {"score": 0.0, "coefficient": 0.0}  # samples scored, steps modulated

    def _generator(self, device: torch.device) -> torch.Generator:
        if self.noise is None:
            self.noise = torch.Generator(device=device).manual_seed(stream_seed(self.seed, Purpose.GRADIENT_NOISE, self.epoch))
        return self.noise

    def _add(self, figure: str, names: Sequence[str], values: Tensor) -> None:
        for name, value in zip(names, values):
            total = self.totals[figure]
            total[name] = total[name] + value if name in total else value.clone()

    @torch.no_grad()
    def __call__(self, output: CAPOutput, labels: Tensor) -> None:
        if not output.modality_logits:
            return
        names = list(output.modality_logits)
        true_class = [logits.float().softmax(1).gather(1, labels[:, None]).sum() for logits in output.modality_logits.values()]
        summed = torch.stack([*true_class, torch.tensor(float(len(labels)), device=labels.device)])
        all_reduce_sum(self.dist, summed)  # the global batch's scores
        scores = summed[:-1]
        self._add("score", names, scores)
        self.counts["score"] = self.counts["score"] + summed[-1]  # a tensor: no wait for the device every step
        if not self.modulating:
            return
        coefficients = discrepancy_coefficients(scores, self.settings.alpha)
        self._add("coefficient", names, coefficients)
        self.counts["coefficient"] += 1
        for name, coefficient in zip(names, coefficients):
            for weight in self.weights[name]:
                grad = weight.grad
                if grad is None:
                    continue
                spread = grad.std() if self.settings.modulation == "ogm-ge" else None
                grad.mul_(coefficient.to(grad.dtype))
                if spread is not None:
                    grad.add_(torch.randn(grad.shape, generator=self._generator(grad.device), device=grad.device, dtype=grad.dtype) * spread)

    def epoch_figures(self) -> dict[str, Any]:
        """The epoch's figures so far: ``{"modality_balance": {"score": {...}, "coefficient": {...}}}``."""
        figures = {figure: {name: float(total / self.counts[figure]) for name, total in by_name.items()}
                   for figure, by_name in self.totals.items() if by_name}
        return {"modality_balance": figures} if figures else {}


def attach_balance(strategy: Strategy, settings: BalanceSettings, seed: int) -> ModalityBalance | None:
    """Set ``strategy``'s model to score each modality alone (and to add the slice losses), and add the
    per-step hook; None when ``settings`` balance nothing. The caller starts each epoch
    (:meth:`ModalityBalance.start_epoch`) and records its figures (:meth:`ModalityBalance.epoch_figures`)."""
    if not settings.enabled:
        return None
    model = strategy.model
    if not isinstance(model, CAPModel) or model.head is None or len(model.modalities) < 2:
        raise ConfigError("balancing the modalities needs one model of several modalities with prototypes (fusion joint or concat-bp)")
    model.score_modalities = True
    model.slice_loss_weight = settings.slice_loss_weight
    balance = ModalityBalance(model, settings, seed, strategy.dist)
    strategy.add_after_backward(balance)
    return balance
