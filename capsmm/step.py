"""One optimisation step, shared by the trainer and the benchmark so both measure the same thing.

Also builds the optimiser and the speed options of ``train`` (Adam implementation, channels-last,
``torch.compile``, bf16 autocast), each of which ``scripts/bench.py`` measures on and off.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from .errors import ConfigError
from .lean import LeanState, lean_backward, lean_forward
from .metrics import PhaseTimer, phase_of
from .model import CAPModel, CAPOutput
from .objectives import training_loss

ADAM_IMPLS = ("auto", "foreach", "fused", "for-loop")
AMP_DTYPES = ("none", "bf16")


#: devices whose fused Adam kernel ``auto`` picks
FUSED_ADAM_DEVICES = ("cpu", "cuda")


def make_adam(params: Iterable[nn.Parameter], *, lr: float, weight_decay: float = 0.0, impl: str = "auto") -> torch.optim.Adam:
    """Adam with the chosen kernel: ``foreach`` (batched tensor ops), ``fused`` (one fused kernel per
    device/dtype), ``for-loop`` (one op per parameter), or ``auto``.

    ``auto`` is ``fused`` when every parameter is a floating tensor on CPU or CUDA, else PyTorch's
    own choice. Why: on this project's 2-core CPU, ``scripts/bench.py`` measured the fused step at
    20 ms against 144 ms for foreach on the 3x3000 MLP (whole bp step 0.74x) and 12 against 31 ms
    on VGG11 (README, Performance). The CUDA side follows PyTorch's documentation (fused is its
    fastest kernel); it was not measured here.
    """
    if impl not in ADAM_IMPLS:
        raise ConfigError(f"unknown train.adam_impl '{impl}'; valid: {', '.join(ADAM_IMPLS)}")
    params = list(params)
    fusable = bool(params) and all(p.device.type in FUSED_ADAM_DEVICES and p.is_floating_point() for p in params)
    flags: dict[str, Any] = {
        "auto": {"fused": True} if fusable else {}, "foreach": {"foreach": True}, "fused": {"fused": True},
        "for-loop": {"foreach": False},
    }[impl]
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, **flags)


def autocast_context(device: torch.device, amp: str) -> contextlib.AbstractContextManager[Any]:
    if amp == "none":
        return contextlib.nullcontext()
    if amp == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    raise ConfigError(f"unknown train.amp '{amp}'; valid: {', '.join(AMP_DTYPES)}")


def prepare_inputs(inputs: Tensor | dict[str, Tensor], channels_last: bool) -> Tensor | dict[str, Tensor]:
    """Image batches in channels-last layout when asked (other inputs, and dicts of them, pass through)."""
    if isinstance(inputs, dict):
        return {name: prepare_inputs(x, channels_last) for name, x in inputs.items()}
    return inputs.contiguous(memory_format=torch.channels_last) if channels_last and inputs.ndim == 4 else inputs


def train_step(
    model: CAPModel | nn.Module,
    optimizer: torch.optim.Optimizer,
    images: Tensor,
    labels: Tensor,
    *,
    lean: bool = False,
    lean_keep: int = 0,
    timer: PhaseTimer | None = None,
    autocast: contextlib.AbstractContextManager[Any] | None = None,
    after_backward: Callable[[], None] | None = None,
) -> tuple[CAPOutput, Tensor]:
    """Forward, loss, backward and optimiser step; the three phases are timed when ``timer`` is given.

    With ``lean`` the backward recomputes one block at a time (:mod:`capsmm.lean`), except the
    last ``lean_keep`` blocks of each encoder, which keep their graphs. ``after_backward``
    runs between the backward and the optimiser step (data-parallel lean training averages
    gradients there).
    """
    phase = phase_of(timer)
    state: LeanState | None = None
    optimizer.zero_grad(set_to_none=True)  # before the forward: last step's gradients need not outlive it
    with phase("forward"), (autocast or contextlib.nullcontext()):
        if lean:
            output, state = lean_forward(model, images, lean_keep)  # type: ignore[arg-type]
        else:
            output = model(images)
        loss = training_loss(output, labels)
    with phase("backward"):
        if state is not None:
            lean_backward(loss, state)
        else:
            loss.backward()
        if after_backward is not None:
            after_backward()
    with phase("step"):
        optimizer.step()
    return output, loss
