"""White-box L-inf attacks: FGSM (Goodfellow et al. 2015) and PGD with a random start (Madry et al. 2018).

An attack differentiates the whole eval-time function input -> logits. capsmm's forward cuts the
gradient at every block's input in ``caps`` and the layer-local modes (block 0's too, so the
training graph gives the input no gradient at all); :func:`capsmm.encoder.gradient_kept` lifts
every cut (the values are unchanged), so the attack sees every block (without it: gradient masking: Athalye et al. 2018; Carlini et al. 2019's sanity check is in the tests:
at a large eps every mode's error reaches 99%).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..encoder import gradient_kept

ATTACKS = ("fgsm", "pgd")
#: PGD's defaults: steps, and the step as a multiple of eps / steps (Madry et al. use 2.5 eps / steps)
PGD_STEPS = 20
PGD_STEP_FACTOR = 2.5

Logits = Callable[[Tensor], Tensor]


def _input_gradient(logits_of: Logits, x: Tensor, labels: Tensor) -> Tensor:
    """The gradient of the summed cross-entropy with respect to ``x``, through every block."""
    x = x.clone().requires_grad_(True)  # a leaf of its own: the attack's inputs carry no graph (every step builds them under no_grad)
    with torch.enable_grad(), gradient_kept():
        loss = F.cross_entropy(logits_of(x).float(), labels, reduction="sum")
        (gradient,) = torch.autograd.grad(loss, x)
    return gradient


def fgsm(logits_of: Logits, x: Tensor, labels: Tensor, eps: float, bounds: tuple[float, float]) -> Tensor:
    """One step of size ``eps`` along the sign of the loss gradient, clipped to ``bounds``."""
    gradient = _input_gradient(logits_of, x, labels)
    with torch.no_grad():
        return (x + eps * gradient.sign()).clamp(*bounds)


def pgd(logits_of: Logits, x: Tensor, labels: Tensor, eps: float, bounds: tuple[float, float], *, steps: int = PGD_STEPS,
        step_size: float | None = None, random_start: bool = True, generator: torch.Generator | None = None) -> Tensor:
    """Projected gradient ascent on the cross-entropy within the L-inf ball of radius ``eps`` around
    ``x`` (and within ``bounds``): ``steps`` signed steps of ``step_size`` (default 2.5 eps / steps),
    from a uniform random point of the ball when ``random_start``."""
    step_size = PGD_STEP_FACTOR * eps / steps if step_size is None else step_size
    x = x.float()
    adversarial = x
    if random_start:
        noise = torch.rand(x.shape, generator=generator).to(x.device) * 2 - 1
        adversarial = (x + eps * noise).clamp(*bounds)
    for _ in range(steps):
        gradient = _input_gradient(logits_of, adversarial, labels)
        with torch.no_grad():  # the step and the projection build no graph
            adversarial = torch.minimum(torch.maximum(adversarial + step_size * gradient.sign(), x - eps), x + eps).clamp(*bounds)
    return adversarial


def attack(name: str, logits_of: Logits, x: Tensor, labels: Tensor, eps: float, bounds: tuple[float, float], *,
           steps: int = PGD_STEPS, generator: torch.Generator | None = None) -> Tensor:
    """``fgsm`` or ``pgd`` by name."""
    if name == "fgsm":
        return fgsm(logits_of, x, labels, eps, bounds)
    return pgd(logits_of, x, labels, eps, bounds, steps=steps, generator=generator)
