"""What every training strategy shares: the interface, the optimiser, and the run description that
decides, before any data is loaded, whether a strategy can honour a config.

A *strategy* is how a step turns a batch into parameter updates: plain autograd, memory-lean
recomputation, data-parallel gradient averaging, block-parallel ranks. The trainer calls only the
interface below (:meth:`Strategy.step`, :meth:`Strategy.predict`, :meth:`Strategy.state_dict`,
:meth:`Strategy.load_state_dict`) and knows none of them by name (the shape of Lightning Fabric's
``Strategy``; what capsmm adds is *where the gradient is cut* and *how the backward is scheduled*).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple, Protocol

import torch
from torch import Tensor, nn

from ..distributed import DistContext
from ..encoder import without_graph
from ..errors import ConfigError
from ..model import resolve_amp
from ..profiling import PhaseTimer, phase_of

ADAM_IMPLS = ("auto", "foreach", "fused", "for-loop")
OPTIMIZERS = ("adam", "sgd")
#: devices whose fused Adam kernel ``auto`` picks
FUSED_ADAM_DEVICES = ("cpu", "cuda")

Inputs = Tensor | dict[str, Tensor]
AfterBackward = Callable[[Any, Tensor], None]
"""A hook run between a step's backward and its optimiser step, given the model's output and the labels."""


class TrainSettings(Protocol):
    """What a strategy reads of a run's ``train`` section (:class:`capsmm.config.TrainConfig`). A
    protocol, so that the strategies do not import the config package that validates against them."""

    mode: str
    memory: str
    parallel: str
    optimizer: str
    lr: float
    weight_decay: float
    momentum: float
    adam_impl: str
    amp: str
    compile: bool
    channels_last: bool
    sync_batchnorm: bool
    micro_batches: int
    batch_size: int
    lean_keep: int
    lean_segments: int | str
    device: str


def single_process_only() -> str:
    """Why a mode whose input carries the label (``ff``) is refused by the parallel strategies."""
    return ("mode ff trains in one process (its negative labels and peer-normalisation statistics are drawn per process); "
            "run it without torchrun")


ParamGroups = Iterable[nn.Parameter] | list[dict[str, Any]]


def make_adam(params: ParamGroups, *, lr: float, weight_decay: float = 0.0, impl: str = "auto") -> torch.optim.Adam:
    """Adam with the chosen kernel: ``foreach`` (batched tensor ops), ``fused`` (one fused kernel per
    device/dtype), ``for-loop`` (one op per parameter), or ``auto``. ``params``: parameters, or
    parameter groups (dicts, as torch's optimisers take them).

    ``auto`` is ``fused`` when every parameter is a floating tensor on CPU or CUDA, else PyTorch's
    own choice. Why: on a 2-core CPU ``scripts/bench.py`` measured the fused step at 20 ms against
    144 ms for foreach on the 3x3000 MLP (whole bp step 0.74x) and 12 against 31 ms on VGG11
    (docs/performance.md). On CUDA fused is PyTorch's fastest kernel by its own documentation.
    """
    if impl not in ADAM_IMPLS:
        raise ConfigError(f"unknown train.adam_impl '{impl}'; valid: {', '.join(ADAM_IMPLS)}")
    params = list(params)
    tensors = [p for group in params for p in group["params"]] if params and isinstance(params[0], dict) else params
    fusable = bool(tensors) and all(p.device.type in FUSED_ADAM_DEVICES and p.is_floating_point() for p in tensors)
    flags: dict[str, Any] = {
        "auto": {"fused": True} if fusable else {}, "foreach": {"foreach": True}, "fused": {"fused": True},
        "for-loop": {"foreach": False},
    }[impl]
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, **flags)


def make_optimizer(params: ParamGroups, train: TrainSettings) -> torch.optim.Optimizer:
    """The optimiser ``train.optimizer`` names over ``params``: Adam (:func:`make_adam`), or SGD with
    ``train.momentum`` (the Forward-Forward reference's)."""
    if train.optimizer == "sgd":
        return torch.optim.SGD(list(params), lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay)
    return make_adam(params, lr=train.lr, weight_decay=train.weight_decay, impl=train.adam_impl)


def prepare_inputs(inputs: Inputs, channels_last: bool) -> Inputs:
    """Image batches in channels-last layout when asked (other inputs, and dicts of them, pass through)."""
    if isinstance(inputs, dict):
        return {name: prepare_inputs(x, channels_last) for name, x in inputs.items()}
    return inputs.contiguous(memory_format=torch.channels_last) if channels_last and inputs.ndim == 4 else inputs


@dataclass(frozen=True)
class Setup:
    """What a run asks of its strategy, known as soon as the config is read (before any data).

    Each strategy class answers :meth:`Strategy.refusal` for a setup; the config is refused with
    that one line when the strategy can't honour it.
    """

    modes: tuple[str, ...]
    """every mode of the run's schedule"""
    memory: str = "standard"
    parallel: str = "data"
    world: int = 1
    """ranks (WORLD_SIZE under torchrun; 1 otherwise)"""
    amp: str = "none"
    compile: bool = False
    channels_last: bool = False
    sync_batchnorm: bool = False
    micro_batches: int = 1
    batch_size: int = 128
    encoders: int = 1
    """encoders in one model (a joint multimodal model has several)"""
    frozen: bool = False
    """the model extends a trained one whose modalities stay frozen"""
    fusion: str = "single"
    """single (one encoder), joint, late or concat-bp"""
    cuda: bool = False
    """the run's device is CUDA"""

    @classmethod
    def of(cls, train: TrainSettings, **model: Any) -> "Setup":
        from ..modes import ModeSchedule
        from ..distributed import world_size

        return cls(modes=ModeSchedule.parse(train.mode).modes, memory=train.memory, parallel=train.parallel, world=world_size(),
                   amp=train.amp, compile=train.compile, channels_last=train.channels_last, sync_batchnorm=train.sync_batchnorm,
                   micro_batches=train.micro_batches, batch_size=train.batch_size,
                   cuda=train.device.startswith("cuda") or (train.device == "auto" and torch.cuda.is_available()), **model)


class StepOutput(NamedTuple):
    """What one training step reports (None on a rank that does not compute the loss)."""

    loss: Tensor | None
    """the batch's training loss, detached"""
    logits: Tensor | None
    """(B, C) class scores of the batch, detached"""

    @classmethod
    def reported(cls, loss: Tensor, logits: Tensor) -> "StepOutput":
        """The values a step reports, cut from its graph so that holding them keeps no activation alive
        (:func:`capsmm.encoder.without_graph`; the method's stop-gradient is :func:`capsmm.encoder.stop_gradient`)."""
        return cls(without_graph(loss), without_graph(logits))


class Strategy(ABC):
    """How a step turns a batch into parameter updates; see the module docstring.

    Subclasses implement :meth:`step` and may refuse setups they can't honour (:meth:`refusal`).
    The strategy owns the optimiser (over the parameters this rank trains).
    """

    #: whether this rank holds the whole model (diagnostics and per-modality evaluation need it)
    holds_model: ClassVar[bool] = True

    def __init__(self, model: nn.Module, train: TrainSettings, device: torch.device, dist: DistContext = DistContext(),
                 optimizer: torch.optim.Optimizer | None = None) -> None:
        self.model = model
        self.train_config = train
        self.device = device
        self.dist = dist
        #: the precision the steps run in (``train.amp`` with ``auto`` resolved on this device)
        self.amp = resolve_amp(train.amp, device)
        model.set_precision(self.amp)
        if train.channels_last:
            model.to(memory_format=torch.channels_last)
        self.optimizer = optimizer or make_optimizer(self.parameter_groups(), train)

    @classmethod
    def refusal(cls, setup: Setup) -> str | None:
        """Why this strategy can't run ``setup`` (one line), or None when it can."""
        return None

    @classmethod
    def wrap(cls, local: "LocalStrategy", dist: DistContext) -> "Strategy":
        """A parallel strategy around this process' local strategy (``train.parallel`` strategies)."""
        return cls(local, dist)  # type: ignore[call-arg]

    @property
    def batch_shard(self) -> tuple[int, int]:
        """(rank, ranks) of each global batch this rank reads: all of it, unless the work is split by samples."""
        return (0, 1)

    def describe(self) -> str:
        """A few words for the run's first line of output."""
        return str(self.device)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters this rank's optimiser updates (frozen ones excluded)."""
        return [p for p in self.model.parameters() if p.requires_grad]

    def parameter_groups(self) -> list[dict[str, Any]]:
        """The optimiser's groups over :meth:`trainable_parameters`: as the model splits them (Forward-Forward's
        classifier has its own learning rate), else one."""
        params = self.trainable_parameters()
        split = getattr(self.model, "parameter_groups", None)
        return split(params) if split is not None else [{"params": params}]

    def prepare(self, inputs: Inputs) -> Inputs:
        return prepare_inputs(inputs, self.train_config.channels_last)

    def add_after_backward(self, hook: AfterBackward) -> None:
        """Run ``hook(output, labels)`` in every step between the backward and the optimiser step, after
        the hooks added before it (a data-parallel run's gradient averaging: the hook sees the averaged
        gradients). Strategies that split the model over ranks have no such moment and refuse."""
        raise ConfigError(f"{type(self).__name__} runs no hook between the backward and the optimiser step")

    @abstractmethod
    def step(self, inputs: Inputs, labels: Tensor, timer: PhaseTimer | None = None) -> StepOutput:
        """Forward, loss, backward and optimiser step on one batch (phases timed by ``timer``)."""

    @torch.no_grad()
    def predict(self, inputs: Inputs) -> Tensor | None:
        """Class scores (B, C) in the model's current train/eval state; None on ranks without them."""
        return self.model(self.prepare(inputs)).logits

    def state_dict(self) -> dict[str, Any]:
        """Model and optimiser state to checkpoint (a collective where ranks hold parts: every rank calls it)."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        optimizer = state["optimizer"]
        self.optimizer.load_state_dict(optimizer[self.dist.rank] if isinstance(optimizer, list) else optimizer)


class LocalStrategy(Strategy):
    """A strategy whose step runs in this process alone: forward and loss, backward, optimiser step.

    Subclasses say how the loss and its backward are computed; ``after_backward`` hooks run between
    the backward and the optimiser step, in the order they were added (data-parallel training
    averages gradients there; gradient modulation, :mod:`capsmm.balance`, scales them).
    """

    def __init__(self, model: nn.Module, train: TrainSettings, device: torch.device, dist: DistContext = DistContext()) -> None:
        super().__init__(model, train, device, dist)
        self.after_backward: list[AfterBackward] = []

    def add_after_backward(self, hook: AfterBackward) -> None:
        self.after_backward.append(hook)

    @abstractmethod
    def forward_loss(self, inputs: Inputs, labels: Tensor) -> tuple[Any, Tensor, Any]:
        """(model output, loss, what :meth:`backward` needs besides the loss)."""

    @abstractmethod
    def backward(self, loss: Tensor, pending: Any) -> None:
        """Fill the gradients of the trainable parameters."""

    def step(self, inputs: Inputs, labels: Tensor, timer: PhaseTimer | None = None) -> StepOutput:
        phase = phase_of(timer)
        self.optimizer.zero_grad(set_to_none=True)  # before the forward: last step's gradients need not outlive it
        with phase("forward"):
            output, loss, pending = self.forward_loss(self.prepare(inputs), labels)
        with phase("backward"):
            self.backward(loss, pending)
            for hook in self.after_backward:
                hook(output, labels)
        with phase("optimizer"):
            self.optimizer.step()
        return StepOutput.reported(loss, output.logits)
